"""Hostile records that must be converted or refused where they enter, at a cost bounded per record:
paths that only look like files, syn_ids no int64 holds, NaN / Infinity, turns beyond the caption,
a blank image that is no image, and captions of megabytes (issue 16)."""

import json
import math
import random

import pytest
from builders import filtered_rows as rows
from conftest import read_json, read_jsonl, write_json
from PIL import Image

from adamllm.core import prompts
from adamllm.core.jsonfiles import json_line
from adamllm.core.records import RecordError, parse_caption_pair
from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed
from adamllm.stage2.format import FormatArgs, run_format

BIG = 3_000_000  # characters of a hostile caption: megabytes, where a real one holds hundreds


def strict(text: str):
    """json.loads as a strict parser reads: NaN and Infinity are errors."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def format_rows(tmp_path, records, **kw):
    data = tmp_path / "filtered.jsonl"
    # Python's writer spells NaN / Infinity as the hostile file would.
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out" / "final.json"
    summary = run_format(FormatArgs(data_path=str(data), image_folder=str(tmp_path / "images"), output=str(out), **kw))
    for path in (out, out.with_name("final.rejects.jsonl"), out.with_name("final.summary.json")):
        if path.exists():
            strict(path.read_text()) if path.suffix == ".json" else [
                strict(line) for line in path.read_text().splitlines()
            ]
    return summary, read_json(out), read_jsonl(out.with_name("final.rejects.jsonl"))


@pytest.fixture
def images(tmp_path):
    (tmp_path / "images").mkdir()
    return tmp_path / "images"


# --- image paths that only look like files ----------------------------------------------------------
@pytest.mark.parametrize("style", ["llamafactory", "llava"])
def test_format_rejects_an_image_path_ending_as_a_folder(tmp_path, images, style):
    records = rows(images, 3)
    records[1]["images"] = ["img1.png/"]
    summary, final, rejects = format_rows(tmp_path, records, style=style)
    assert summary.records_out == 2 and summary.rejected == {"unsafe_image_path": 1}
    assert rejects[0]["index"] == 1 and "'img1.png'" in rejects[0]["detail"]
    assert "img1.png/" not in json.dumps(final)


def seed_record(image, answer="A cat.", **extra):
    return {
        "image": image,
        "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": answer}],
        **extra,
    }


def merge(tmp_path, captions, precise, informative, **kw):
    out = tmp_path / "out" / "train.json"
    summary = run_merge_seed(
        MergeSeedArgs(
            caption_path=str(write_json(tmp_path / "c.json", captions)),
            precise_qa_path=str(write_json(tmp_path / "p.json", precise)),
            informative_qa_path=str(write_json(tmp_path / "i.json", informative)),
            output=str(out),
            **{
                "blank_image_path": str(tmp_path / "blank.png"),
                "replace_with_blank_image_percent": 0,
                "split": "train",
                **kw,
            },
        )
    )
    for path in (out, out.with_name("train.rejects.jsonl"), out.with_name("train.summary.json")):
        if path.exists():
            strict(path.read_text()) if path.suffix == ".json" else [
                strict(line) for line in path.read_text().splitlines()
            ]
    return summary, read_json(out), read_jsonl(out.with_name("train.rejects.jsonl"))


@pytest.mark.parametrize("bad", ["x/9.png/", "x/.", "x/.."])
def test_merge_seed_rejects_an_image_path_without_a_file_name(tmp_path, bad):
    """The join goes by base name: 'x/9.png/' has none, and without --image_folder nothing opens it."""
    files = [[seed_record(f"{i}.png", task_name="t") for i in range(10)] for _ in range(3)]
    for records in files:
        records.append(seed_record(bad, task_name="t"))
    summary, train, rejects = merge(tmp_path, *files)
    assert summary["records_rejected"] == {"unsafe_image_path": 3} and summary["images_seen"] == 10
    assert all(r["image"].endswith(".png") for r in train)


# --- syn_ids ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "syn_id, says",
    [
        (True, "a bool"),
        (3.0, "a float"),
        (-1, "negative"),
        (2**63, "over 2**63 - 1"),
        (2**70, "over 2**63 - 1"),
        ("7", "a str"),
        (None, "missing"),
    ],
)
def test_format_rejects_a_syn_id_no_int64_holds(tmp_path, images, syn_id, says):
    records = rows(images, 3)
    records[2]["syn_id"] = syn_id
    summary, final, rejects = format_rows(tmp_path, records, style="llava")
    assert summary.records_out == 2 and summary.rejected == {"bad_schema": 1}
    assert says in rejects[0]["detail"] and [r["id"] for r in final] == ["0", "1"]


def test_format_keeps_the_largest_int64_syn_id(tmp_path, images):
    records = rows(images, 2)
    records[1]["syn_id"] = 2**63 - 1
    summary, final, _ = format_rows(tmp_path, records, style="llava")
    assert summary.records_out == 2 and final[1]["id"] == str(2**63 - 1)


@pytest.mark.parametrize("syn_id", [True, 2**63, -3, 1.5])
def test_filter_refuses_an_input_whose_syn_id_no_int64_holds(tmp_path, tiny_models, syn_id):
    from adamllm.stage2.filter import FilterArgs, FilterStage

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"syn_id": syn_id, "pred": None}) + "\n")
    stage = FilterStage(
        FilterArgs(model=str(tiny_models["checker"]), data_path=str(data), output_dir=str(tmp_path / "o"))
    )
    with pytest.raises(ValueError, match=r"record 0 has syn_id .*0 to 2\*\*63 - 1"):
        list(stage.records())


# --- NaN and Infinity ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, where",
    [
        ("score", math.nan, "the record.score"),
        ("consistency_logprobs", {"yes": -math.inf}, "the record.consistency_logprobs.yes"),
        (
            "collected_QA",
            {"Q": "q?", "precise_A": "a", "informative_A": "b", "w": [1, math.inf]},
            "the record.collected_QA.w[1]",
        ),
    ],
)
def test_format_rejects_nan_and_infinity_naming_the_field(tmp_path, images, field, value, where):
    records = rows(images, 3)
    records[0][field] = value
    summary, final, rejects = format_rows(tmp_path, records)
    assert summary.records_out == 2 and summary.rejected == {"non_finite_number": 1}
    assert where in rejects[0]["detail"]
    assert "NaN" in json.dumps(rejects[0]["record"]) or "Infinity" in json.dumps(rejects[0]["record"])  # kept, as text


def test_json_line_never_writes_nan_or_infinity():
    line = json_line({"a": [math.nan, math.inf, -math.inf, 1.5], "b": {"c": math.nan}, "s": "\ud800"})
    assert strict(line) == {"a": ["NaN", "Infinity", "-Infinity", 1.5], "b": {"c": "NaN"}, "s": "\ud800"}
    assert json_line({"x": 1.5, "y": "é"}) == '{"x": 1.5, "y": "é"}'  # normal records: as before


def test_the_filter_and_merge_seed_reject_nan_too(tmp_path):
    from adamllm.stage2.filter import collect

    out = collect({"syn_id": 0, "pred": "x", "extra": {"v": math.nan}})
    assert out["error"]["reason"] == "non_finite_number" and "the record.extra.v" in out["error"]["detail"]
    files = [[seed_record(f"{i}.png", task_name="t") for i in range(10)] for _ in range(3)]
    files[1][4]["score"] = math.inf
    summary, _, rejects = merge(tmp_path, *files)
    assert summary["records_rejected"] == {"non_finite_number": 1} and summary["images_dropped"] == {
        "no_precise_pairs": 1
    }


# --- turns after the caption --------------------------------------------------------------------------
def test_format_counts_the_turns_after_the_caption_it_drops(tmp_path, images):
    records = rows(images, 3)
    records[1]["messages"] += [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "More."}]
    records[2]["messages"].append({"role": "user", "content": "Dangling"})
    summary, final, _ = format_rows(tmp_path, records)
    assert summary.records_out == 3 and summary.extra_turns_dropped == 3
    assert read_json(tmp_path / "out" / "final.summary.json")["extra_turns_dropped"] == 3
    assert parse_caption_pair(records[0]).extra_turns == 0


# --- the blank image ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["folder", "text", "truncated png"])
def test_merge_seed_refuses_a_blank_image_that_is_no_image_before_any_work(tmp_path, kind):
    blank = tmp_path / "blank.png"
    if kind == "folder":
        blank.mkdir()
    elif kind == "text":
        blank.write_text("not an image")
    else:
        Image.new("RGB", (64, 64), (255, 255, 255)).save(blank)
        blank.write_bytes(blank.read_bytes()[:-40])
    files = [write_json(tmp_path / f"{n}.json", [seed_record("0.png", task_name="t")]) for n in "cpi"]
    with pytest.raises(ValueError, match=rf"--blank_image_path {blank}: .*give an image file"):
        MergeSeedArgs(
            caption_path=str(files[0]),
            precise_qa_path=str(files[1]),
            informative_qa_path=str(files[2]),
            output=str(tmp_path / "out" / "train.json"),
            blank_image_path=str(blank),
        )
    assert not (tmp_path / "out").exists()


# --- bounded work per record --------------------------------------------------------------------------
def test_stripping_agrees_with_the_fixed_point_on_random_text(monkeypatch):
    """The one scan gives what regex passes until nothing changes give (the rule as stated)."""
    rng = random.Random(16)
    pieces = ["<", "|", ">", "a", "_", "<|", "|>", "<image>", "<ima", "ge>", "x" * 31, " ", "é"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 50))) for _ in range(3000)]
    cases = [(text, image_tokens) for text in texts for image_tokens in (("<image>",), ())]
    found = [prompts.strip_special_tokens(*case) for case in cases]
    monkeypatch.setattr(prompts, "_REGEX_PASSES", 10**9)
    assert found == [prompts.strip_special_tokens(*case) for case in cases]
    assert [prompts.strip_in_one_scan(*case) for case in cases] == found


def test_nested_special_tokens_cost_a_bounded_number_of_passes(monkeypatch):
    """Each level of '<|a<|a...|>a|>' needed one pass over the whole text: quadratic. Now a few
    passes, then one scan, whatever the depth."""
    calls = []
    real = prompts._SPECIAL_TOKEN_TEXT

    class Counting:
        def subn(self, repl, text):
            calls.append(len(text))
            return real.subn(repl, text)

    monkeypatch.setattr(prompts, "_SPECIAL_TOKEN_TEXT", Counting())
    depth = 20_000
    text, count = prompts.strip_special_tokens("keep " + "<|a" * depth + "|>" + "a|>" * depth + " this")
    assert (text, count) == ("keep a|> this", depth) and len(calls) <= 3  # one "a|>" has no partner left


class Spy:
    """The real tokenizer, recording the length of every text that reaches it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, []

    def __call__(self, text, *args, **kwargs):
        self.seen.append(len(text))
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_synthesis_refuses_a_megabyte_caption_from_a_bounded_prefix(tiny_models, tmp_path, images):
    from adamllm.core.tokens import text_char_cap
    from adamllm.models.model_io import load_processor
    from adamllm.stage2.synthesize import Prompter, SynthesizeArgs

    records = rows(images, 2)
    records[1]["messages"][1]["content"] = "a long caption word " * (BIG // 20)
    data = write_json(tmp_path / "pairs.json", records)
    args = SynthesizeArgs(
        model=str(tiny_models["synthesizer"]),
        data_path=str(data),
        image_folder=str(images),
        output_dir=str(tmp_path / "o"),
    )
    prompter = Prompter(load_processor(args.model), args)
    prompter.tokenizer = spy = Spy(prompter.tokenizer)
    request, _ = prompter.request(records[0])
    with pytest.raises(RecordError) as e:
        prompter.request(records[1])
    caption = records[1]["messages"][1]["content"].strip()
    assert e.value.reason == "prompt_too_long" and f"a caption of {len(caption):,} characters" in e.value.detail
    cap = text_char_cap(spy.tokenizer, args.max_model_len)
    assert cap < BIG // 4 and max(spy.seen) <= cap  # never the whole caption


def test_the_filter_refuses_a_megabyte_triplet_from_a_bounded_prefix(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from adamllm.core.tokens import text_char_cap
    from adamllm.stage2.filter import FilterArgs, FilterStage

    data = tmp_path / "t.jsonl"
    data.write_text("")
    stage = FilterStage(
        FilterArgs(model=str(tiny_models["checker"]), data_path=str(data), output_dir=str(tmp_path / "o"))
    )
    stage.tokenizer = spy = Spy(AutoTokenizer.from_pretrained(str(tiny_models["checker"])))
    stage.room = stage.args.max_model_len - 2
    turn = prompts.EOT + prompts.header(prompts.ASSISTANT)
    pred = (
        prompts.precise_question("What?")
        + turn
        + "x"
        + prompts.EOT
        + prompts.header(prompts.USER)
        + prompts.informative_question("What?")
        + turn
        + "word " * (BIG // 5)
        + prompts.EOT
    )
    record = {"syn_id": 0, "pred": pred}
    from adamllm.stage2.filter import collect

    assert collect(record)["collected_QA"] is not None, "the hostile record must hold a triplet"
    with pytest.raises(RecordError) as e:
        stage.prepare(0, record)
    assert e.value.reason == "prompt_too_long" and "characters: over" in e.value.detail
    assert max(spy.seen) <= text_char_cap(spy.tokenizer, stage.room)


def test_training_bounds_a_megabyte_caption_and_answer(tiny_models, tmp_path, images):
    from adamllm.core.tokens import text_char_cap
    from adamllm.models.model_io import load_processor
    from adamllm.stage1.train_data import CAPTION_REQUEST, SeedDataset

    Image.new("RGB", (16, 16)).save(images / "x.png")

    def record(caption, answer):
        turns = [(CAPTION_REQUEST, caption), ("Answer briefly.\nWhat?", answer)]
        return {
            "image": "x.png",
            "conversations": [
                t for h, g in turns for t in ({"from": "human", "value": h}, {"from": "gpt", "value": g})
            ],
        }

    data = write_json(
        tmp_path / "seed.json",
        [record("short", "yes"), record("caption " * (BIG // 8), "yes"), record("short", "so " * (BIG // 3))],
    )
    processor = load_processor(str(tiny_models["synthesizer"]))
    processor.tokenizer = spy = Spy(processor.tokenizer)
    ds = SeedDataset(str(data), processor, str(images), str(tmp_path / "blank.png"), 4096, tmp_path / "r.jsonl")
    assert (
        ds.counts["records_in"] == 3 and ds.counts["records_used"] == 2 and ds.counts["rejected_prompt_too_long"] == 1
    )
    assert ds.counts["truncated"] == 1 and ds.examples[1].length == 4096
    cap = text_char_cap(spy.tokenizer, 4096)
    assert max(spy.seen) <= cap and len(ds.examples[1].text) == cap
    assert "characters" in read_jsonl(tmp_path / "r.jsonl")[0]["detail"]


def test_export_of_a_run_with_hostile_syn_ids_and_paths_holds_only_usable_rows(tmp_path):
    """Format rejects them where they enter, so export (an int64 syn_id column) neither crashes nor
    carries an image path that does not open."""
    pytest.importorskip("datasets", reason="the datasets package is part of the CPU environment (make setup)")
    from builders import make_run, write_rows

    from adamllm.cli import main

    run = make_run(tmp_path, [f"Q{i}?" for i in range(6)])
    records = read_jsonl(run["data"])
    records[1]["syn_id"] = 2**63
    records[2]["images"] = ["im2.png/"]
    records[3]["collected_QA"]["precise_A"] = math.nan
    write_rows(run["out"], records)
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
    assert main(["export", str(run["out"]), "--to", str(tmp_path / "hf")]) == 0
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds["syn_id"] == [0, 4, 5] and ds["image_path"] == ["im0.png", "im4.png", "im5.png"]
