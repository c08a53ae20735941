"""Stage 2c: the post-training record."""

import json
import random

import pytest
from conftest import read_json, read_jsonl
from PIL import Image

from adamllm.core import prompts
from adamllm.core.parse import Triplet
from adamllm.stage2.format import (
    CHAIN_OF_THOUGHT,
    INFORMATIVE_ONLY,
    INFORMATIVE_THEN_PRECISE,
    FormatArgs,
    answer_kind,
    run_format,
    synthetic_task,
)

QA_ASSISTANTS = {t.assistant for t in prompts.QA_TEMPLATES}


def test_branch_informative_only():
    t = Triplet("How many?", "3", "I see three cups. So the answer is 3")
    assert answer_kind(t) == INFORMATIVE_ONLY
    user, assistant, kind = synthetic_task(t, random.Random(0))
    assert assistant == "I see three cups. So the answer is 3"
    assert "How many?" in user


def test_indicator_must_be_in_the_last_sentence():
    # "so " stands in an earlier sentence only; the precise answer has no indicator either.
    t = Triplet("Q", "Red", "It is so bright. The car is red.")
    assert answer_kind(t) == CHAIN_OF_THOUGHT


def test_branch_informative_then_precise():
    t = Triplet("What is it?", "The final result is ramen", "A bowl of noodles in broth")
    assert answer_kind(t) == INFORMATIVE_THEN_PRECISE
    _, assistant, _ = synthetic_task(t, random.Random(0))
    assert assistant == "A bowl of noodles in broth The final result is ramen"


def test_branch_chain_of_thought():
    t = Triplet("What is it?", "Ramen", "A bowl of noodles in broth with a soft egg.")
    assert answer_kind(t) == CHAIN_OF_THOUGHT
    user, assistant, kind = synthetic_task(t, random.Random(3))
    assert kind == CHAIN_OF_THOUGHT
    template = next(
        x for x in prompts.COT_TEMPLATES if prompts.fill_task(x, t.Q, t.precise_A, t.informative_A) == (user, assistant)
    )
    assert assistant.index(t.informative_A) < assistant.rindex("Ramen")
    assert template in prompts.COT_TEMPLATES


def test_indicators_are_lower_case_with_trailing_space():
    assert answer_kind(Triplet("Q", "Answer", "Also. The Answer")) == CHAIN_OF_THOUGHT  # no trailing space
    assert answer_kind(Triplet("Q", "x", "Also. THEREFORE it is x")) == INFORMATIVE_ONLY  # lower-cased first


def make_records(folder, n=40):
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    verdicts = ["yes", "no", "open", "invalid", None]
    for i in range(n):
        name = f"img_{i}.png"
        Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / name)
        verdict = verdicts[i % 5]
        qa = {"Q": f"What is {i}?", "precise_A": str(i), "informative_A": f"It shows {i}, so it is {i}."}
        records.append(
            {
                "images": [name],
                "messages": [
                    {"role": "user", "content": "<image>\nWhat is shown?"},
                    {"role": "assistant", "content": f"Caption {i}."},
                ],
                "syn_id": i,
                "pred": None if verdict is None else "raw",
                "collected_QA": None if verdict is None else qa,
                "consistency": verdict,
            }
        )
    return records


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def fmt(tmp_path, records, **kw):
    data = write_jsonl(tmp_path / "filtered_task_pairs.jsonl", records)
    out = tmp_path / "out" / "image_caption_and_synthetic_task.json"
    summary = run_format(FormatArgs(data_path=str(data), image_folder=str(tmp_path / "images"), output=str(out), **kw))
    return summary, read_json(out)


def test_format_keeps_caption_task_and_adds_kept_tasks(tmp_path):
    summary, out = fmt(tmp_path, make_records(tmp_path / "images"))
    assert summary.records_in == summary.records_out == len(out) == 40
    assert summary.synthetic_tasks == 8  # the "yes" records
    assert summary.no_synthetic_task == {
        "consistency_no": 8,
        "consistency_open": 8,
        "consistency_invalid": 8,
        "synthesis_failed": 8,
    }
    for i, record in enumerate(out):
        assert set(record) == {"messages", "images"}
        assert record["images"] == [f"../images/img_{i}.png"]
        msgs = record["messages"]
        assert msgs[0]["content"].startswith("<image>\n")
        assert sum("<image>" in m["content"] for m in msgs) == 1
        assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2)
        assert {"role": "assistant", "content": f"Caption {i}."} in msgs
        caption_user = [m for m in msgs if m["role"] == "user" and m["content"].endswith("What is shown?")]
        assert len(caption_user) == 1
        assert len(msgs) == (4 if i % 5 == 0 else 2)
    info = read_json(tmp_path / "out" / "dataset_info.json")
    assert info["image_caption_and_synthetic_task"]["file_name"] == "image_caption_and_synthetic_task.json"


def test_placement_and_templates_stable_across_runs_and_order(tmp_path):
    records = make_records(tmp_path / "images", 60)
    for r in records:
        r["consistency"], r["pred"] = "yes", "raw"
        r["collected_QA"] = {"Q": "Q?", "precise_A": "A", "informative_A": "Long."}
    _, first = fmt(tmp_path, records)
    _, again = fmt(tmp_path, records)
    _, reversed_ = fmt(tmp_path, records[::-1])
    assert first == again == reversed_[::-1]
    placements = {r["messages"][1]["content"].startswith("Caption") for r in first}
    assert placements == {True, False}
    templates = {
        r["messages"][-1]["content"]
        if r["messages"][1]["content"].startswith("Caption")
        else r["messages"][1]["content"]
        for r in first
    }
    assert len(templates) > 3
    _, other_seed = fmt(tmp_path, records, seed=1)
    assert other_seed != first


def test_syn_only_and_llava_style(tmp_path):
    records = make_records(tmp_path / "images")
    summary, out = fmt(tmp_path, records, train_on_syn_only=True, style="llava")
    assert len(out) == 8 and summary.records_in == summary.records_out + sum(summary.rejected.values())
    assert all(len(r["conversations"]) == 2 and r["conversations"][0]["value"].startswith("<image>\n") for r in out)
    assert {r["id"] for r in out} == {str(i) for i in range(0, 40, 5)}
    assert all(r["image"] == f"img_{r['id']}.png" for r in out)
    rejects = read_jsonl(tmp_path / "out" / "image_caption_and_synthetic_task.rejects.jsonl")
    assert len(rejects) == 32 and {r["reason"] for r in rejects} == {
        "consistency_no",
        "consistency_open",
        "consistency_invalid",
        "synthesis_failed",
    }


def test_bad_records_rejected_with_reason_and_counts_reconcile(tmp_path):
    records = make_records(tmp_path / "images", 10)
    (tmp_path / "images" / "img_1.png").unlink()
    (tmp_path / "images" / "img_2.png").write_bytes(b"nope")
    records[3]["images"] = ["../secret.png"]
    records[4]["messages"][1]["content"] = ""
    records[5] = "not an object"
    records[0]["collected_QA"] = {"Q": "<|eot_id|>", "precise_A": "x", "informative_A": "y"}
    summary, out = fmt(tmp_path, records)
    assert summary.rejected == {
        "image_missing": 1,
        "image_unreadable": 1,
        "unsafe_image_path": 1,
        "no_caption": 1,
        "bad_schema": 1,
    }
    assert summary.records_in == 10 == summary.records_out + sum(summary.rejected.values())
    assert len(out) == 5
    assert summary.no_synthetic_task.get("bad_collected_QA") == 1
    rejects = read_jsonl(tmp_path / "out" / "image_caption_and_synthetic_task.rejects.jsonl")
    assert sorted(r["index"] for r in rejects) == [1, 2, 3, 4, 5]
    saved = read_json(tmp_path / "out" / "image_caption_and_synthetic_task.summary.json")
    assert saved["records_out"] == 5


def test_format_args_checked():
    with pytest.raises(ValueError, match="--data_path nope: no such file"):
        FormatArgs(data_path="nope", image_folder=".", output="o.json")


def test_llamafactory_file_loads_with_datasets(tmp_path):
    datasets = pytest.importorskip(
        "datasets", reason="the datasets package is part of the CPU environment (make setup)"
    )
    _, out = fmt(tmp_path, make_records(tmp_path / "images", 10))
    path = tmp_path / "out" / "image_caption_and_synthetic_task.json"
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert ds.num_rows == 10 and set(ds.column_names) == {"messages", "images"}
    assert ds[0]["messages"] == out[0]["messages"]
    assert (path.parent / ds[0]["images"][0]).is_file()
