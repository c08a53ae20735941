"""`adamllm export OUTPUT_DIR --to DIR` (issue #12): a run as a `datasets` dataset, read back with
`datasets.load_from_disk`. Run folders are written by hand; no model and no network."""

import json
import os
import shutil

import pytest
from builders import SAME, make_run, write_rows
from conftest import read_json, read_jsonl
from PIL import Image

from adamllm.cli import main

datasets = pytest.importorskip("datasets", reason="the datasets package is part of the CPU environment (make setup)")


def formatted_run(tmp_path, *format_flags):
    """10 records: 6 ask the same question (one unconfident), 2 more yes, 1 no, 1 without a triplet;
    formatted through the CLI (so stats.json holds the format entry)."""
    questions = [SAME[i % 4] for i in range(6)] + ["How many cups?", "Which colour?", "Is it red?", "unused"]
    verdicts = ["yes"] * 8 + ["no", None]
    p_yes = [0.95, 0.95, 0.6, 0.95, 0.95, 0.95, 0.9, 0.99, 0.1, None]
    run = make_run(tmp_path, questions, verdicts, p_yes)
    rows = read_jsonl(run["data"])
    rows[9].update(pred="garbage", collected_QA=None, consistency=None, error={"reason": "no_triplet", "detail": "-"})
    rows[8]["consistency_logprobs"] = {"yes": -3.0, "no": -0.1}
    write_rows(run["out"], rows)
    flags = ["--data_path", run["data"], "--image_folder", run["images"], "--output", run["final"], *format_flags]
    assert main(["format", *map(str, flags)]) == 0
    return run


def export(run, to, *flags):
    return main(["export", str(run["out"]), "--to", str(to), *map(str, flags)])


def forget_provenance(run):
    """stats.json as a run folder written before stages recorded what they read and wrote: the
    export's own checks of the files are then all that stands between them and the dataset."""
    stats = read_json(run["out"] / "stats.json")
    for entry in stats.values():
        entry.pop("provenance", None)
    (run["out"] / "stats.json").write_text(json.dumps(stats))


def test_export_loads_with_datasets_rows_images_and_counts(tmp_path, capsys):
    run = formatted_run(tmp_path, "--dedup", "exact", "--min_yes_prob", "0.8")
    to = tmp_path / "hf"
    assert export(run, to) == 0
    assert "wrote 10 rows (3 with a synthetic task)" in capsys.readouterr().out
    originals = {}
    for i in range(10):
        with Image.open(run["images"] / f"im{i}.png") as im:
            originals[i] = (im.size, im.convert("RGB").getpixel((0, 0)))
    run["images"].rename(tmp_path / "moved")  # the dataset holds the images' bytes, not their paths
    ds = datasets.load_from_disk(str(to))
    final = read_json(run["final"])
    filtered = read_jsonl(run["data"])
    assert ds.num_rows == len(final) == 10
    assert set(ds.column_names) == {
        "syn_id",
        "image",
        "image_path",
        "messages",
        "caption",
        "Q",
        "precise_A",
        "informative_A",
        "consistency",
        "yes_prob",
        "synthetic_task",
        "no_task_reason",
    }
    assert isinstance(ds.features["image"], datasets.Image)
    for i, row in enumerate(ds):
        assert row["syn_id"] == i and row["image_path"] == f"im{i}.png"
        assert (row["image"].size, row["image"].convert("RGB").getpixel((0, 0))) == originals[i]
        assert row["messages"] == final[i]["messages"]
        assert row["caption"] == f"Caption {i}."
        qa = filtered[i]["collected_QA"]
        assert row["Q"] == (qa["Q"] if qa else None) and row["precise_A"] == (qa["precise_A"] if qa else None)
        assert row["consistency"] == filtered[i]["consistency"]
        assert row["synthetic_task"] == (len(row["messages"]) == 4)
    reasons = ds["no_task_reason"]
    assert reasons.count("duplicate_question") == 4 and reasons.count("low_yes_prob") == 1
    assert reasons[8:] == ["consistency_no", "no_triplet"]
    assert ds[0]["yes_prob"] == pytest.approx(0.95) and ds[9]["yes_prob"] is None
    summary = read_json(to / "export.summary.json")
    assert summary["records_in"] == 10 == summary["rows"] + sum(summary["rejected"].values())
    assert summary["rows_with_synthetic_task"] == 3 and not (to / "export.rejects.jsonl").exists()
    # nothing left beside DIR: the staging folder and the generator's cache are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "moved", "out"]


def test_export_writes_a_dataset_card_with_every_stage_and_the_models(tmp_path):
    run = formatted_run(tmp_path, "--dedup", "exact", "--min_yes_prob", "0.8")
    assert export(run, tmp_path / "hf") == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "license: unknown  # FILL IN" in front and 'pretty_name: "hf"' in front and "- n<1K" in front
    assert "| synthesizer | `AdaptLLM/visual-instruction-synthesizer` |" in body
    assert "| consistency checker | `meta-llama/Meta-Llama-3-8B` (mode: logprob) |" in body
    assert "| synthesize | 10 | 10 | none |" in body and "| filter | 10 | 8 | none |" in body
    assert "| format | 10 | 10 | none |" in body and "| export | 10 | 10 | none |" in body
    assert "4 dropped as duplicates" in body and "1 dropped below it" in body
    assert "**Fill in before sharing.**" in body
    from huggingface_hub import DatasetCard

    metadata = DatasetCard(card).data  # the front matter the Hub reads (parsed offline)
    assert (
        metadata.license == "unknown"
        and metadata.pretty_name == "hf"
        and metadata.task_categories[0] == "visual-question-answering"
    )


def test_export_of_a_llava_style_run_has_role_content_messages(tmp_path):
    run = formatted_run(tmp_path, "--style", "llava")
    assert export(run, tmp_path / "hf") == 0
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    final = read_json(run["final"])
    assert ds.num_rows == 10
    roles = {"human": "user", "gpt": "assistant"}
    assert ds[3]["messages"] == [{"role": roles[t["from"]], "content": t["value"]} for t in final[3]["conversations"]]
    assert all(row["no_task_reason"] in ("", "consistency_no", "no_triplet") for row in ds)  # no curation this time


def test_export_skips_format_rejects_and_rejects_an_image_gone_since(tmp_path):
    run = make_run(tmp_path, [f"Question {i}?" for i in range(6)])
    (run["images"] / "im1.png").unlink()  # format rejects record 1
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
            ]
        )
        == 0
    )
    (run["images"] / "im4.png").write_bytes(b"not a png any more")  # broken after format
    assert export(run, tmp_path / "hf") == 0
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds["syn_id"] == [0, 2, 3, 5]
    rejects = read_jsonl(tmp_path / "hf" / "export.rejects.jsonl")
    assert [(r["index"], r["syn_id"], r["reason"]) for r in rejects] == [(4, 4, "image_unreadable")]
    summary = read_json(tmp_path / "hf" / "export.summary.json")
    assert summary["records_in"] == 5 == summary["rows"] + 1 and summary["rejected"] == {"image_unreadable": 1}


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize(
    "case",
    [
        "non-empty folder",
        "a file",
        "not a run",
        "final file of another run",
        "final file edited since format",
        "no image folder",
        "a stats folder the shards disagree with",
        "root image folder",
        "bad repo id",
        "offline push",
    ],
)
def test_export_refuses_bad_input_before_any_work(tmp_path, capsys, case):
    run = formatted_run(tmp_path)
    to = tmp_path / "hf"
    extra = []
    if case == "non-empty folder":
        to.mkdir()
        (to / "keep.txt").write_text("mine")
        message = f"--to {to} is not empty; give a new or empty folder (nothing was written)"
    elif case == "a file":
        to.write_text("x")
        message = f"--to {to} is a file"
    elif case == "not a run":
        (run["out"] / "stats.json").unlink()
        message = "holds no finished stage-2 run (no stats.json)"
    elif case == "final file of another run":
        forget_provenance(run)
        run["final"].write_text(json.dumps(read_json(run["final"])[:7]))
        message = "holds 7 records, but"
    elif case == "final file edited since format":
        final = read_json(run["final"])
        final[3]["messages"][1]["content"] = final[3]["messages"][1]["content"].upper()  # same size, same count
        run["final"].write_text(json.dumps(final))
        message = (
            f"image_caption_and_synthetic_task.json is not the file `adamllm format` wrote (it was edited or "
            f"replaced since), so {run['final']} is stale"
        )
    elif case == "no image folder":
        stats = read_json(run["out"] / "stats.json")
        stats["format"]["args"]["image_folder"] = str(tmp_path / "gone")
        (run["out"] / "stats.json").write_text(json.dumps(stats))
        message = f"image folder {tmp_path / 'gone'} (the format args in stats.json): no such folder"
    elif case == "a stats folder the shards disagree with":
        other = tmp_path / "elsewhere"
        shutil.copytree(run["images"], other)
        (run["out"] / "shards").mkdir()
        (run["out"] / "shards" / "syn_task_triplets.input-of-001.json").write_text(
            json.dumps({"image_folder": str(run["images"].resolve())})
        )
        stats = read_json(run["out"] / "stats.json")
        stats["format"]["args"]["image_folder"] = str(other)
        (run["out"] / "stats.json").write_text(json.dumps(stats))
        message = (
            f"but {run['out'] / 'shards' / 'syn_task_triplets.input-of-001.json'} records that synthesis read "
            f"them from {run['images'].resolve()}"
        )
    elif case == "root image folder":
        extra = ["--image_folder", "/"]
        message = "image folder / (--image_folder) is a filesystem root"
    elif case == "bad repo id":
        extra = ["--push_to_hub", "not a/valid/repo"]
        message = "--push_to_hub not a/valid/repo: not a Hub repo id"
    else:
        extra = ["--push_to_hub", "me/data"]  # conftest sets HF_HUB_OFFLINE=1
        message = "--push_to_hub me/data: HF_HUB_OFFLINE is set"
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exit:
        export(run, to, *extra)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "adamllm export: error: " in err and message in err, err
    assert "Traceback" not in err
    assert tree(tmp_path) == before  # nothing written


def test_export_into_an_existing_empty_folder(tmp_path):
    run = formatted_run(tmp_path)
    (tmp_path / "hf").mkdir()
    assert export(run, tmp_path / "hf") == 0
    assert datasets.load_from_disk(str(tmp_path / "hf")).num_rows == 10


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch, capsys):
    run = formatted_run(tmp_path)
    forget_provenance(run)  # else the edit below is refused before any work
    final = read_json(run["final"])
    final[5]["images"] = ["../images/im6.png"]  # a post-training record that is not its filtered record's
    run["final"].write_text(json.dumps(final))
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exit:
        export(run, tmp_path / "hf")
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "not from the same format run" in err and "Traceback" not in err
    assert tree(tmp_path) == before


def test_push_to_hub_uploads_the_card_then_pushes_the_dataset_with_a_fake_hub(tmp_path, monkeypatch):
    """The Hub cannot be reached from tests: a fake HfApi and Dataset.push_to_hub record the calls."""
    import huggingface_hub

    calls = []

    class FakeHfApi:
        def create_repo(self, repo, **kw):
            calls.append(("create_repo", repo, kw["repo_type"], kw["private"]))

        def upload_file(self, **kw):
            calls.append(("upload_file", kw["repo_id"], kw["path_in_repo"], open(kw["path_or_fileobj"]).read()[:3]))

    def fake_push(self, repo, **kw):
        calls.append(("push_to_hub", repo, self.num_rows, kw["private"]))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(datasets.Dataset, "push_to_hub", fake_push)
    run = formatted_run(tmp_path)
    assert export(run, tmp_path / "hf", "--push_to_hub", "me/biomed", "--private") == 0
    assert calls == [
        ("create_repo", "me/biomed", "dataset", True),
        ("upload_file", "me/biomed", "README.md", "---"),
        ("push_to_hub", "me/biomed", 10, True),
    ]
    assert read_json(tmp_path / "hf" / "export.summary.json")["pushed_to"] == "me/biomed"


def test_push_to_hub_without_a_token_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    run = formatted_run(tmp_path)
    with pytest.raises(SystemExit):
        export(run, tmp_path / "hf", "--push_to_hub", "me/biomed")
    assert "no Hugging Face token; log in with `hf auth login` or set HF_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_export_help_explains_the_columns_and_the_push():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "adamllm", "export", "--help"], capture_output=True, text=True, env={**os.environ}
    )
    assert out.returncode == 0
    for text in ("--to DIR", "--push_to_hub REPO", "Dataset.push_to_hub", "license field", "export.rejects.jsonl"):
        assert text in out.stdout, text
