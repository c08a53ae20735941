"""The HTML report, rendered in a real headless browser (Debian's chromium)."""

import json
import os
import re
import shutil
import subprocess
from html import escape
from urllib.parse import quote

import pytest
from conftest import read_json
from PIL import Image

from adamllm.core.stats import update_stats
from adamllm.results.report import write_report
from adamllm.stage2.format import FormatArgs, run_format

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EVIL = (
    '<script>document.title="pwned";document.body.dataset.pwned="1"</script><img src=x '
    "onerror=\"document.title='pwned'\">"
)
U = "<|start_header_id|>user<|end_header_id|>\n\n"
A = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
E = "<|eot_id|>"


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Debian's chromium is needed for the report tests: `make browser` (apt-get install chromium)")
    return path


def browse(tmp_path, url, *extra):
    result = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *extra, url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def run_dir(tmp_path):
    """A finished stage-2 output folder, written by hand: 6 records with every kind of ending."""
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    rows = []
    verdicts = ["yes", "no", "open", "yes", None, None]
    for i, verdict in enumerate(verdicts):
        Image.new("RGB", (64, 48), (40 * i, 120, 200 - 30 * i)).save(images / f"im{i}.png")
        pred = (
            f"Answer with a precise response.\nQ{i}?{A}P{i}{E}{U}Answer with an informative "
            f"response.\nQ{i}?{A}Long {i}.{E}"
        )
        row = {
            "images": [f"im{i}.png"],
            "messages": [
                {"role": "user", "content": "<image>\nDescribe the image."},
                {"role": "assistant", "content": f"Caption {i}. {EVIL}"},
            ],
            "syn_id": i,
            "pred": pred,
            "collected_QA": {"Q": f"Q{i}? {EVIL}", "precise_A": f"P{i}", "informative_A": f"Long {i}."},
            "consistency": verdict,
        }
        if i == 4:
            row.update(pred="garbage", collected_QA=None, error={"reason": "no_triplet", "detail": "-"})
        if i == 5:
            row.update(
                images=["missing.png"], pred=None, collected_QA=None, error={"reason": "image_missing", "detail": "-"}
            )
        rows.append(row)
    (out / "filtered_task_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fmt = FormatArgs(
        data_path=str(out / "filtered_task_pairs.jsonl"),
        image_folder=str(images),
        output=str(out / "image_caption_and_synthetic_task.json"),
    )
    summary = run_format(fmt)
    assert summary.records_out == 5  # the record with a missing image is rejected by format
    update_stats(
        out,
        "synthesize",
        {
            "records_in": 6,
            "records_out": 5,
            "rejected": {"image_missing": 1},
            "wall_s": 1.0,
            "engine_s": 0.5,
            "image_wait_s": 0.25,
            "prompt_tokens": 600,
            "output_tokens": 90,
            "args": {"image_folder": str(images)},
        },
    )
    update_stats(
        out,
        "filter",
        {
            "records_in": 6,
            "records_out": 2,
            "rejected": {"no_triplet": 1, "image_missing": 1, "consistency_no": 1, "consistency_open": 1},
            "pass_rate": 0.5,
            "wall_s": 0.2,
        },
    )
    update_stats(out, "format", {"records_in": 6, "records_out": 5, "rejected": {"image_missing": 1}})
    return out


def test_report_is_self_contained_and_escaped(run_dir):
    html = write_report(run_dir).read_text()
    assert html.count('<section class="card"') == 6
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html  # nothing to fetch: images are embedded
    assert html.count('src="data:image/jpeg;base64,') == 5
    assert (
        "<th>waiting for images s</th>" in html
        and "<td>synthesize</td><td>6</td><td>5</td><td>image_missing: 1</td><td>1.0</td><td>0.5</td><td>0.2</td>"
        in html
    )


def test_report_renders_in_chromium_with_filters_and_no_injected_script(run_dir, tmp_path):
    page = write_report(run_dir)
    dom = browse(tmp_path, page.as_uri(), "--dump-dom")
    assert dom.count('<section class="card') == 6
    assert "pwned" not in dom.split("<body")[0] and "data-pwned" not in dom
    assert "<title>adamllm stage-2 report" in dom
    assert '<b id="shown">6</b>' in dom  # the page's own script ran (CSP allows it by hash)
    yes = browse(tmp_path, page.as_uri() + "#verdict=yes", "--dump-dom")
    assert '<b id="shown">2</b>' in yes and yes.count('class="card hidden"') == 4
    missing = browse(tmp_path, page.as_uri() + "#reason=image_missing", "--dump-dom")
    assert '<b id="shown">1</b>' in missing


def test_report_screenshot_is_not_blank(run_dir, tmp_path):
    page = write_report(run_dir)
    shot = tmp_path / "shot.png"
    browse(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1200,1400")
    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50, "the screenshot is (nearly) one colour"


def test_report_needs_a_finished_run(tmp_path):
    with pytest.raises(ValueError, match="no finished stage-2 run"):
        write_report(tmp_path)


# --- hand-edited and damaged run folders (issue #8) ------------------------------------------------
FORM = '"><form action=x><input name=pwned></form><img src=x onerror="document.title=\'pwned\'">'


def edit_rows(out, change):
    """Rewrite the filtered file after `change(rows)` has edited its records in place."""
    path = out / "filtered_task_pairs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def edit_stats(out, change):
    stats = read_json(out / "stats.json")
    change(stats)
    (out / "stats.json").write_text(json.dumps(stats))


def write_final(out, records):
    (out / "image_caption_and_synthetic_task.json").write_text(json.dumps(records))


DELETE = object()


def set_rows(*edits):
    """A change to the filtered records: (row index, field, value); value DELETE removes the field."""

    def change(rows):
        for i, key, value in edits:
            if value is DELETE:
                del rows[i][key]
            else:
                rows[i][key] = value

    return change


def not_objects(rows):
    rows[1:4] = [5, "text", None]
    rows.append([1, 2])


DAMAGES = {
    "records that are not objects": lambda out: edit_rows(out, not_objects),
    "error null": lambda out: edit_rows(out, set_rows((4, "error", None), (5, "error", None))),
    "error a string": lambda out: edit_rows(out, set_rows((4, "error", "oops"), (5, "error", 7))),
    "collected_QA missing keys and non-strings": lambda out: edit_rows(
        out,
        set_rows(
            (0, "collected_QA", {"Q": 5}),
            (1, "collected_QA", {"precise_A": ["x"], "informative_A": None}),
            (2, "collected_QA", "Q?"),
            (3, "collected_QA", [1]),
        ),
    ),
    "syn_id a string or missing": lambda out: edit_rows(
        out, set_rows((0, "syn_id", "seven"), (1, "syn_id", DELETE), (2, "syn_id", {"a": 1}))
    ),
    "messages of the wrong shape": lambda out: edit_rows(
        out,
        set_rows(
            (0, "messages", "hi"),
            (1, "messages", [1, 2]),
            (2, "messages", [{}, {"content": 7}]),
            (3, "messages", {"1": "x"}),
            (4, "messages", DELETE),
        ),
    ),
    "images of the wrong shape": lambda out: edit_rows(
        out,
        set_rows(
            (0, "images", "im0.png"),
            (1, "images", [5]),
            (2, "images", []),
            (3, "images", ["a" * 5000]),
            (4, "images", [""]),
        ),
    ),
    "pred and consistency not text": lambda out: edit_rows(
        out, set_rows((0, "pred", {"a": 1}), (1, "pred", 7), (2, "consistency", ["yes"]), (3, "consistency", 1))
    ),
    "a lone surrogate in a caption": lambda out: edit_rows(
        out, lambda rows: rows[0]["messages"][1].update(content="bad \udc80 text")
    ),
    "final records malformed": lambda out: write_final(
        out,
        [
            5,
            "x",
            {"messages": "no"},
            {"messages": [1, {"role": 2, "content": None}]},
            {"conversations": [{"from": "human"}]},
            None,
        ],
    ),
    "final file short": lambda out: write_final(out, []),
    "final file missing": lambda out: (out / "image_caption_and_synthetic_task.json").unlink(),
    "rejects rows without index": lambda out: (out / "image_caption_and_synthetic_task.rejects.jsonl").write_text(
        '{"reason": "x"}\n5\n{"index": "3"}\n{"index": true}\n[]\n'
    ),
    "stats fields of wrong types": lambda out: edit_stats(
        out,
        lambda s: s.update(
            filter={"pass_rate": "abc", "wall_s": None, "rejected": [1], "prompt_tokens": "many", "args": "x"},
            format=[1, 2],
            synthesize={
                **s["synthesize"],
                "records_in": {"a": 1},
                "wall_s": 10**400,
                "engine_s": float("inf"),
                "rejected": {"x": "y", "z": None},
            },
        ),
    ),
    "stats args of wrong types": lambda out: edit_stats(
        out, lambda s: s["synthesize"].update(args={"image_folder": 5})
    ),
    "stats with no stages": lambda out: (out / "stats.json").write_text("{}"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_report_survives_a_hand_edited_run(run_dir, damage, capsys):
    from adamllm.cli import main

    DAMAGES[damage](run_dir)
    records = len((run_dir / "filtered_task_pairs.jsonl").read_text().splitlines())
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert html.count('<section class="card"') == records and html.rstrip().endswith("</html>")
    assert "wrote" in capsys.readouterr().out


INVALID_JSON = [
    ("filtered_task_pairs.jsonl", b"{not json\n"),
    ("filtered_task_pairs.jsonl", b"[" * 100_000 + b"]" * 100_000),  # nested past Python's recursion limit
    ("filtered_task_pairs.jsonl", b'{"pred": "\xff\xfe"}\n'),  # not UTF-8
    ("image_caption_and_synthetic_task.json", b"[{]"),
    ("image_caption_and_synthetic_task.rejects.jsonl", b'{"index": 1\n'),
    ("stats.json", b"{"),
    ("stats.json", b"[1, 2]"),
    ("shards/syn_task_triplets.input-of-001.json", b"nope"),
]


@pytest.mark.parametrize("name, content", INVALID_JSON, ids=[f"{n}-{i}" for i, (n, _) in enumerate(INVALID_JSON)])
def test_report_names_a_file_that_is_not_json(run_dir, name, content, capsys):
    from adamllm.cli import main

    (run_dir / name).parent.mkdir(exist_ok=True)
    (run_dir / name).write_bytes(content)
    with pytest.raises(SystemExit) as exit:
        main(["report", str(run_dir)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "adamllm report: error: " in err and name.split("/")[-1] in err
    assert "Traceback" not in err and len(err) < 2000


def test_report_escapes_every_hand_edited_field_in_chromium(run_dir, tmp_path):
    edit_rows(
        run_dir,
        set_rows(
            (0, "syn_id", "<form action=x><input></form>"),
            (1, "syn_id", FORM),
            (1, "consistency", FORM),
            (2, "error", {"reason": FORM}),
            (2, "images", [FORM]),
            (3, "collected_QA", {"Q": FORM, "precise_A": 5}),
            (4, "pred", FORM),
        ),
    )
    final = read_json(run_dir / "image_caption_and_synthetic_task.json")
    final[0]["messages"][0]["role"] = FORM
    write_final(run_dir, final)
    edit_stats(
        run_dir,
        lambda s: s["filter"].update(rejected={FORM: 1}, records_in=FORM, pass_rate=FORM, args={"engine": FORM}),
    )
    page = write_report(run_dir)
    html = page.read_text()
    assert "<form" not in html and "<input" not in html and "&lt;form action=x&gt;" in html
    dom = browse(tmp_path, page.as_uri(), "--dump-dom")
    assert "<form" not in dom and "<input" not in dom and "pwned" not in dom.split("<body")[0]
    assert dom.count('<section class="card') == 6 and '<b id="shown">6</b>' in dom
    assert "&lt;form action=x&gt;&lt;input&gt;&lt;/form&gt;" in dom  # shown as text
    evil = browse(tmp_path, page.as_uri() + "#verdict=" + quote(FORM), "--dump-dom")
    assert '<b id="shown">1</b>' in evil  # the hand-edited verdict is still a working filter


# --- the image folder ------------------------------------------------------------------------------
def test_report_refuses_a_filesystem_root_as_image_folder(run_dir):
    edit_stats(run_dir, lambda s: s["synthesize"]["args"].update(image_folder="/"))
    with pytest.raises(ValueError, match="filesystem root.*--image_folder"):
        write_report(run_dir)
    with pytest.raises(ValueError, match="filesystem root"):
        write_report(run_dir, image_folder="/images/..")


def test_report_refuses_a_stats_folder_the_shards_disagree_with(run_dir, tmp_path):
    images = tmp_path / "images"
    other = tmp_path / "elsewhere"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "im0.png")
    (run_dir / "shards").mkdir()
    (run_dir / "shards" / "syn_task_triplets.input-of-002.json").write_text(
        json.dumps({"input": "x", "image_folder": str(images.resolve())})
    )
    edit_stats(run_dir, lambda s: s["synthesize"]["args"].update(image_folder=str(other)))
    with pytest.raises(ValueError) as refused:
        write_report(run_dir)
    message = str(refused.value)
    assert str(other) in message and str(images.resolve()) in message and "--image_folder" in message
    html = write_report(run_dir, image_folder=str(other)).read_text()  # the user's choice is taken as it is
    assert f'Images from: <b id="image-folder">{other.resolve()} (--image_folder)</b>' in html
    assert html.count('src="data:image/jpeg;base64,') == 1


def test_report_embeds_only_images_inside_the_recorded_folder(run_dir, tmp_path):
    images = tmp_path / "images"
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    (images / "link.png").symlink_to(secret)
    edit_rows(
        run_dir, set_rows((0, "images", ["../secret.png"]), (1, "images", [str(secret)]), (2, "images", ["link.png"]))
    )
    html = write_report(run_dir).read_text()
    assert html.count('src="data:image/jpeg;base64,') == 2  # im3, im4; im5 is missing
    assert f'Images from: <b id="image-folder">{images.resolve()} (the synthesize args in stats.json)</b>' in html
    (run_dir / "shards").mkdir()
    stale = run_dir / "shards" / "syn_task_triplets.input-of-004.json"  # an earlier run with 4 shards
    stale.write_text(json.dumps({"image_folder": str(tmp_path)}))
    os.utime(stale, (1, 1))
    (run_dir / "shards" / "syn_task_triplets.input-of-001.json").write_text(json.dumps({"image_folder": str(images)}))
    assert write_report(run_dir).read_text().count('src="data:image/jpeg;base64,') == 2  # the last run agrees


def test_report_without_a_recorded_folder_shows_no_images(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "images")  # where a folder of "" would resolve
    edit_stats(run_dir, lambda s: s["synthesize"].pop("args"))
    html = write_report(run_dir).read_text()
    assert "data:image/jpeg" not in html and "records no image folder; pass --image_folder" in html


def test_report_decodes_each_image_once(run_dir, monkeypatch):
    import adamllm.results.report

    edit_rows(run_dir, lambda rows: [row.update(images=["im0.png"]) for row in rows[:4]])
    decoded = []
    real = adamllm.results.report.load_image
    monkeypatch.setattr(
        adamllm.results.report, "load_image", lambda folder, path: decoded.append(path) or real(folder, path)
    )
    html = write_report(run_dir).read_text()
    assert sorted(decoded) == ["im0.png", "im4.png", "missing.png"]
    assert html.count('src="data:image/jpeg;base64,') == 5


# --- the prefix-cache line -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "filter_stats, shown",
    [
        ({}, "none (no prompt was run: no triplet to judge)"),
        ({"prompt_tokens": 0, "prompt_tokens_computed": 0}, "none (no prompt was run: no triplet to judge)"),
        ({"prompt_tokens": 900, "args": {"engine": "vllm"}}, "not measured by this engine"),
        (
            {"prompt_tokens": 900, "cached_prompt_tokens": 0, "args": {"engine": "hf"}},
            "not measured by this engine (hf)",
        ),
        (
            {
                "prompt_tokens": 900,
                "cached_prompt_tokens": 600,
                "prompt_tokens_computed": 300,
                "args": {"engine": "vllm"},
            },
            "600",
        ),
    ],
)
def test_report_says_what_the_prefix_cache_served_or_why_not(run_dir, filter_stats, shown):
    edit_stats(run_dir, lambda s: s["filter"].update(filter_stats))
    html = write_report(run_dir).read_text()
    assert f"served from the prefix cache: {shown}." in html


# --- curation beyond the paper (issue #12) -----------------------------------------------------------
@pytest.fixture
def curated_run(tmp_path):
    """12 records, filtered with --mode logprob, formatted with --dedup exact --min_yes_prob 0.8:
    7 yes verdicts asking the same question (one of them unconfident), 2 other yes, 3 no."""
    from builders import make_run

    from adamllm.cli import main

    same = [f"What is shown? {EVIL}", f"what is SHOWN {EVIL}"]
    questions = (
        [same[i % 2] for i in range(7)] + ["How many cups?", "Which colour?"] + ["Is it red?", "Is it red?", "Why?"]
    )
    verdicts = ["yes"] * 9 + ["no"] * 3
    p_yes = [0.95] * 6 + [0.6] + [0.9, 0.99] + [None] * 3
    run = make_run(tmp_path, questions, verdicts, p_yes)
    rows = [json.loads(line) for line in run["data"].read_text().splitlines()]
    for row in rows[9:]:
        row["consistency_logprobs"] = {"yes": -2.0, "no": -0.2}
    run["data"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(
            [
                "format",
                "--data_path",
                str(run["data"]),
                "--image_folder",
                str(run["images"]),
                "--output",
                str(run["final"]),
                "--dedup",
                "exact",
                "--min_yes_prob",
                "0.8",
            ]
        )
        == 0
    )
    return run


def test_report_shows_top_questions_and_what_curation_did(curated_run):
    from adamllm.stage2.dedup import normalise_question

    html = write_report(curated_run["out"]).read_text()
    curation = read_json(curated_run["out"] / "stats.json")["format"]["curation"]
    # the unconfident record drops first; 5 of the 6 confident ones asking the same question drop next
    assert curation["dropped_low_yes_prob"] == 1 and curation["dropped_duplicate"] == 5
    assert (
        "Duplicate questions (<code>--dedup exact</code>, at most 1 per question): <b>8</b> questions seen, "
        "<b>3</b> distinct, <b>5</b> dropped as duplicates"
    ) in html
    assert "(<code>--min_yes_prob 0.8</code>): <b>9</b> tasks checked, <b>1</b> dropped below it" in html
    assert html.count('data-reason="duplicate_question"') == 5 and html.count('data-reason="low_yes_prob"') == 1
    # the P(yes) plot: 8 kept by the confidence filter, 1 below it, 3 other verdicts, and the threshold line
    assert 'aria-label="P(yes) distribution"' in html and "<title>--min_yes_prob 0.8</title>" in html
    assert (
        "yes, kept by the confidence filter: 8" in html
        and "yes, below --min_yes_prob: 1" in html
        and "verdict no / open / invalid: 3" in html
    )
    assert html.count('data-series="dropped"') == 1 and 'data-series="other"' in html
    # the questions: the synthesizer's favourite first, shown as text, kept once; the "no" verdict's own table
    assert normalise_question(f"What is shown? {EVIL}") == normalise_question(f"what is SHOWN {EVIL}")
    evil = escape(f"What is shown? {EVIL}")
    assert f"<tr><td>{evil}</td><td>7</td><td>1</td></tr>" in html
    assert (
        "<b>verdict no</b>: 3 questions, 2 distinct" in html
        and "<tr><td>Is it red?</td><td>2</td><td>0</td></tr>" in html
    )
    assert EVIL not in html


def test_report_without_curation_says_so_and_draws_no_probability_plot(run_dir):
    html = write_report(run_dir).read_text()
    assert 'id="no-curation"' in html and "P(yes) distribution" not in html
    assert "<b>verdict yes</b>: 2 questions, 2 distinct" in html  # the top questions need no flag


def test_report_curation_filters_work_in_chromium(curated_run, tmp_path):
    page = write_report(curated_run["out"])
    dom = browse(tmp_path, page.as_uri() + "#reason=duplicate_question", "--dump-dom")
    assert '<b id="shown">5</b>' in dom and "pwned" not in dom.split("<body")[0] and "data-pwned" not in dom
    assert dom.count("<rect") >= 3 and 'id="yes-prob"' in dom
    low = browse(tmp_path, page.as_uri() + "#reason=low_yes_prob", "--dump-dom")
    assert '<b id="shown">1</b>' in low


CURATION_DAMAGES = {
    "curation rows malformed": lambda out: (out / "image_caption_and_synthetic_task.curation.jsonl").write_text(
        '{"index": 0, "reason": 5}\n7\n{"index": "1", "reason": "duplicate_question"}\n{"index": 2, "reason": "'
        + FORM.replace('"', "'")
        + '"}\n'
    ),
    "stats curation of wrong types": lambda out: edit_stats(
        out,
        lambda s: s["format"].update(
            curation={
                "dedup": FORM,
                "max_per_question": "x",
                "questions_seen": None,
                "min_yes_prob": FORM,
                "yes_prob_checked": [1],
            }
        ),
    ),
    "stats curation not an object": lambda out: edit_stats(out, lambda s: s["format"].update(curation=[FORM])),
    "logprobs hand-edited": lambda out: edit_rows(
        out,
        set_rows(
            (0, "consistency_logprobs", {"yes": "x"}),
            (1, "consistency_logprobs", {"yes": 3.0}),
            (2, "consistency_logprobs", {"yes": -1e308, "no": -1e-308}),
            (3, "consistency_logprobs", [1]),
        ),
    ),
}


@pytest.mark.parametrize("damage", CURATION_DAMAGES, ids=list(CURATION_DAMAGES))
def test_report_survives_hand_edited_curation(run_dir, damage, capsys):
    from adamllm.cli import main

    CURATION_DAMAGES[damage](run_dir)
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert html.count('<section class="card"') == 6 and html.rstrip().endswith("</html>")
    assert "<form" not in html and "<input" not in html


def test_report_names_a_curation_file_that_is_not_json(run_dir, capsys):
    from adamllm.cli import main

    (run_dir / "image_caption_and_synthetic_task.curation.jsonl").write_text("{nope\n")
    with pytest.raises(SystemExit) as exit:
        main(["report", str(run_dir)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "image_caption_and_synthetic_task.curation.jsonl" in err and "Traceback" not in err


# --- big runs: the summary over every record, cards for a seeded sample (issue #16) ----------------
# (verdict, error reason) of record i of a big run, in proportions of a real run
OUTCOMES = (
    [("yes", None)] * 6
    + [("no", None)] * 7
    + [("open", None)] * 2
    + [("invalid", None), (None, "no_triplet"), (None, "no_triplet"), (None, "image_missing")]
)


def big_rows(n):
    rows = []
    for i in range(n):
        verdict, reason = OUTCOMES[i * 7 % len(OUTCOMES)]
        row = {
            "images": ["gone.png" if reason == "image_missing" else f"im{i % 4}.png"],
            "messages": [
                {"role": "user", "content": "<image>\nDescribe the image."},
                {"role": "assistant", "content": f"Caption {i}."},
            ],
            "syn_id": i,
            "pred": f"Answer with a precise response.\nQ{i % 50}?{A}P{i}{E}",
            "collected_QA": {"Q": f"Q{i % 50}?", "precise_A": f"P{i}", "informative_A": f"Long answer {i}."},
            "consistency": verdict,
        }
        if reason:
            row.update(collected_QA=None, error={"reason": reason, "detail": "-"})
        rows.append(row)
    return rows


@pytest.fixture
def big_run(run_dir):
    """run_dir's folder holding 3,000 records instead of 6, formatted by the real format."""
    edit_rows(run_dir, lambda rows: rows.__setitem__(slice(None), big_rows(3000)))
    images = run_dir.parent / "images"
    summary = run_format(
        FormatArgs(
            data_path=str(run_dir / "filtered_task_pairs.jsonl"),
            image_folder=str(images),
            output=str(run_dir / "image_caption_and_synthetic_task.json"),
        )
    )
    assert summary.records_in == 3000
    return run_dir


def group_sizes(n):
    counts = {}
    for i in range(n):
        verdict, reason = OUTCOMES[i * 7 % len(OUTCOMES)]
        key = (verdict or "none", reason or f"consistency_{verdict}" if verdict != "yes" else "")
        counts[key] = counts.get(key, 0) + 1
    return counts


def card_ids(html):
    return [int(i) for i in re.findall(r'<span class="tag">#(\d+)</span>', html)]


def test_report_of_thousands_of_records_shows_a_bounded_sample_and_counts_every_record(big_run):
    sizes = group_sizes(3000)
    html = write_report(big_run, cards_per_group=7).read_text()
    ids = card_ids(html)
    assert len(ids) == sum(min(7, n) for n in sizes.values()) == 7 * len(sizes)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in file order, each once
    assert len(html.encode()) < 150_000  # every card: about 2 MB
    assert f"<b>{len(ids)}</b> of the <b>3000</b> records, at most 7 per verdict and reason" in html
    # the summary is over every record, not the sample
    assert (
        f"<tr><td>yes</td><td>{sizes['yes', '']}</td></tr>" in html
        and f"<tr><td>no</td><td>{sizes['no', 'consistency_no']}</td></tr>" in html
    )
    assert (
        f'data-group-verdict="none" data-group-reason="no_triplet" data-records="{sizes["none", "no_triplet"]}"' in html
    )
    triplets = 3000 - sizes["none", "no_triplet"] - sizes["none", "image_missing"]
    assert f"question length</b> (n={triplets}, words)" in html
    assert f"<b>verdict yes</b>: {sizes['yes', '']} questions, 50 distinct" in html
    # the default and larger samples
    default = card_ids(write_report(big_run).read_text())
    assert len(default) == 20 * len(sizes) and set(ids) <= set(default)  # a larger sample holds the smaller one
    every = write_report(big_run, cards_per_group=3000).read_text()
    assert len(card_ids(every)) == 3000 and "A card for each of the <b>3000</b> records" in every


def test_report_sample_is_the_same_on_every_run_and_the_seed_changes_it(big_run):
    first = write_report(big_run, cards_per_group=5).read_bytes()
    assert write_report(big_run, cards_per_group=5).read_bytes() == first
    other = write_report(big_run, cards_per_group=5, seed=1).read_text()
    assert card_ids(other) != card_ids(first.decode()) and len(card_ids(other)) == len(card_ids(first.decode()))
    summary = first.decode().split("<h2>Records</h2>")[0]
    assert other.split("<h2>Records</h2>")[0] == summary


def test_report_filters_work_on_the_sample_in_chromium(big_run, tmp_path):
    sizes = group_sizes(3000)
    page = write_report(big_run, cards_per_group=4)
    dom = browse(tmp_path, page.as_uri(), "--dump-dom")
    assert f'<b id="shown">{4 * len(sizes)}</b>' in dom and '<b id="matching">3000</b>' in dom
    yes = browse(tmp_path, page.as_uri() + "#verdict=yes", "--dump-dom")
    assert '<b id="shown">4</b>' in yes and f'<b id="matching">{sizes["yes", ""]}</b>' in yes
    none = browse(tmp_path, page.as_uri() + "#verdict=none", "--dump-dom")  # two groups: no_triplet, image_missing
    assert (
        '<b id="shown">8</b>' in none
        and f'<b id="matching">{sizes["none", "no_triplet"] + sizes["none", "image_missing"]}</b>' in none
    )
    missing = browse(tmp_path, page.as_uri() + "#verdict=none&reason=image_missing", "--dump-dom")
    assert '<b id="shown">4</b>' in missing and f'<b id="matching">{sizes["none", "image_missing"]}</b>' in missing


def test_report_with_a_new_reason_on_every_record_stays_bounded(big_run):
    from adamllm.results.report_summary import MAX_GROUPS

    edit_rows(
        big_run,
        lambda rows: [row.update(consistency=None, error={"reason": f"{FORM} {i}"}) for i, row in enumerate(rows)],
    )
    edit_rows(big_run, lambda rows: [row.update(consistency=f"v{i}") for i, row in enumerate(rows[:1000])])
    html = write_report(big_run, cards_per_group=3).read_text()
    assert len(card_ids(html)) == MAX_GROUPS + 3  # a card for each of the first groups; the others share one sample
    assert (
        f"<tr><td>{3000 - MAX_GROUPS} more groups</td><td>(they share one "
        f"sample)</td><td>{3000 - MAX_GROUPS}</td><td>3</td></tr>" in html
    )
    assert html.count("<option ") <= 2 * (MAX_GROUPS + 1) and len(html.encode()) < 400_000
    assert "<form" not in html


def test_report_clips_a_huge_record_on_its_card(run_dir):
    huge = "w " * 1_000_000
    pairs = "".join(f"Answer with a precise response.\nQ{i}?{A}P{i}{E}{U}" for i in range(5000))
    edit_rows(
        run_dir,
        set_rows(
            (0, "messages", [{"role": "user", "content": "x"}, {"role": "assistant", "content": huge}]),
            (1, "pred", pairs),
            (2, "collected_QA", {"Q": huge, "precise_A": huge, "informative_A": "x"}),
            (3, "syn_id", huge),
        ),
    )
    final = read_json(run_dir / "image_caption_and_synthetic_task.json")
    final[0]["messages"] = [{"role": "user", "content": "turn"}] * 3000
    write_final(run_dir, final)
    html = write_report(run_dir).read_text()
    assert html.count('<section class="card"') == 6 and len(html.encode()) < 400_000
    assert "… (1995000 more characters)" in html and "(4979 more pairs)" in html and "(2980 more turns)" in html
    assert "Synthesizer output: 4999 pair(s)" in html and "question length</b> (n=4, words)" in html  # counted whole


@pytest.mark.parametrize("value, says", [("-1", "whole number >= 0"), ("many", "invalid int value")])
def test_report_refuses_a_bad_cards_per_group(run_dir, value, says, capsys):
    from adamllm.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["report", str(run_dir), "--cards_per_group", value])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--cards_per_group" in err and says in err and "Traceback" not in err


def test_report_with_no_cards_still_counts_every_record(run_dir, capsys):
    from adamllm.cli import main

    assert main(["report", str(run_dir), "--cards-per-group", "0"]) == 0
    html = (run_dir / "report.html").read_text()
    assert (
        '<section class="card"' not in html
        and "<b>0</b> of the <b>6</b> records" in html
        and "<tr><td>yes</td><td>2</td></tr>" in html
    )
