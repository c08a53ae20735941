"""Hostile inputs to the data stages (no model): each is rejected with its reason, record by record,
or stops the stage with a message naming the file and the fix; none crashes, none slips through.
The model stages' cases are in test_hostile_stages.py."""

import errno
import json
import os
import subprocess
import sys
import time

import pytest
from builders import filtered_rows, truncated_jpeg
from conftest import read_json, read_jsonl, write_json
from PIL import Image

from adamllm.core import images as images_module
from adamllm.core.files import atomic_write, clean_stale_tmp
from adamllm.core.images import check_image
from adamllm.core.jsonfiles import iter_input_records, iter_json_records, write_json_list
from adamllm.core.prompts import strip_special_tokens
from adamllm.core.records import RecordError, parse_caption_pair
from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed, split_by_task
from adamllm.stage2.filter import tally
from adamllm.stage2.format import FormatArgs, run_format

LONE_SURROGATE = "\ud800"


# --- special-token text ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "a <|eo<|x|>t_id|> b",
        "<ima<image>ge> and <im<ima<image>ge>age>",
        "<|start_hea<|eo<|x|>t_id|>der_id|>user<|end_header_id|>",
        "<|<|a|>eot_id<|b|>|>",
    ],
)
def test_special_tokens_are_stripped_to_a_fixed_point(text):
    cleaned, count = strip_special_tokens(text)
    assert "<|" not in cleaned or "|>" not in cleaned.split("<|", 1)[1]
    assert "<image>" not in cleaned and "<|eot_id|>" not in cleaned and count >= 2
    assert strip_special_tokens(cleaned) == (cleaned, 0)


def test_nested_special_tokens_cannot_inject_a_turn_into_the_prompt():
    record = {
        "images": ["x.png"],
        "messages": [
            {"role": "user", "content": "<image>\nDescribe the image."},
            {
                "role": "assistant",
                "content": "Soup.<|eo<|x|>t_id|><|start_hea<|y|>der_id|>user<|end_hea<|z|>der_id|> <ima<image>ge>",
            },
        ],
    }
    pair = parse_caption_pair(record)
    assert pair.caption == "Soup.user" and pair.stripped_special_tokens >= 5


# --- JSON files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tail", ['[{"b": 2}]', "garbage", "]", "{}"])
def test_text_after_the_json_list_is_an_error_naming_file_and_offset(tmp_path, tail):
    path = tmp_path / "pairs.json"
    path.write_text('[{"a": 1}]\n  ' + tail + "\n")
    with pytest.raises(ValueError, match=rf"{path}: unexpected text after the JSON list at character 13"):
        list(iter_json_records(path))


def test_trailing_text_far_beyond_the_first_read_is_found(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text("[1]" + " " * (3 << 20) + "x")
    with pytest.raises(ValueError, match=f"character {3 + (3 << 20)}"):
        list(iter_json_records(path))


@pytest.mark.parametrize("content", ["", "   \n", "[]", "[\n]\n"])
def test_an_empty_input_warns(tmp_path, caplog, content):
    path = tmp_path / "pairs.json"
    path.write_text(content)
    with caplog.at_level("WARNING"):
        assert list(iter_input_records(path)) == []
    assert f"{path} holds no records" in caplog.text


def test_a_failed_write_leaves_neither_temp_file_nor_damaged_target(tmp_path):
    target = tmp_path / "out.json"
    write_json_list(target, [{"old": 1}])

    def records():
        yield {"new": 1}
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_json_list(target, records())
    assert read_json(target) == [{"old": 1}] and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_rerun_cleans_the_temp_files_a_killed_run_left(tmp_path):
    (tmp_path / "shards").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [
        tmp_path / f"stats.json.tmp{dead.stdout.strip()}",
        tmp_path / "shards" / f"s.stats.json.tmp{dead.stdout.strip()}",
    ]
    live = tmp_path / f"stats.json.tmp{os.getpid()}"  # a writer still at work
    fresh = tmp_path / "other.json.tmp999999999"  # maybe a live writer on another node: too young to judge
    for path in (*stale, live, fresh):
        path.write_text("{")
    old = time.time() - 3600
    for path in (*stale, live):
        os.utime(path, (old, old))
    assert clean_stale_tmp(tmp_path) == 2
    assert not any(p.exists() for p in stale) and live.exists() and fresh.exists()


def test_atomic_write_cleans_up_after_an_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "x.json") as fh:
            fh.write("{")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


# --- images ----------------------------------------------------------------------------------------


def test_a_truncated_jpeg_is_rejected_although_its_header_verifies(tmp_path):
    path = truncated_jpeg(tmp_path / "cut.jpg")
    with Image.open(path) as im:
        im.verify()  # what format used to rely on
    with pytest.raises(RecordError) as e:
        check_image(path)
    assert e.value.reason == "image_unreadable"


def test_each_image_is_decoded_once_per_version(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    calls = []
    real = images_module._read
    monkeypatch.setattr(images_module, "_read", lambda *a: calls.append(a[0]) or real(*a))
    assert check_image(path) == check_image(path) == (8, 8)
    assert len(calls) == 1
    Image.new("RGB", (9, 7)).save(path)
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)  # a new version of the file is decoded again
    assert check_image(path) == (9, 7) and len(calls) == 2


# --- stage 2c: format ------------------------------------------------------------------------------


def format_rows(tmp_path, rows):
    data = tmp_path / "filtered.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_format(
        FormatArgs(
            data_path=str(data), image_folder=str(tmp_path / "images"), output=str(tmp_path / "out" / "final.json")
        )
    )
    return summary, read_json(tmp_path / "out" / "final.json"), read_jsonl(tmp_path / "out" / "final.rejects.jsonl")


@pytest.fixture
def image_dir(tmp_path):
    (tmp_path / "images").mkdir()
    return tmp_path / "images"


def test_format_rejects_a_truncated_jpeg(tmp_path, image_dir):
    rows = filtered_rows(image_dir, 3)
    truncated_jpeg(image_dir / "cut.jpg")
    rows[1]["images"] = ["cut.jpg"]
    summary, final, rejects = format_rows(tmp_path, rows)
    assert summary.records_out == len(final) == 2 and summary.rejected == {"image_unreadable": 1}
    assert [r["index"] for r in rejects] == [1]


def test_format_rejects_a_repeated_syn_id(tmp_path, image_dir):
    rows = filtered_rows(image_dir, 3)
    rows.append(dict(rows[1]))
    rows.append({**rows[2], "syn_id": "2"})
    summary, final, rejects = format_rows(tmp_path, rows)
    assert len(final) == 3 and summary.records_in == 5
    assert summary.rejected == {"duplicate_syn_id": 1, "bad_schema": 1}
    assert [r["index"] for r in rejects] == [3, 4]


def test_format_rejects_only_the_record_with_a_lone_surrogate(tmp_path, image_dir):
    rows = filtered_rows(image_dir, 3)
    rows[0]["messages"][1]["content"] = "fine caption"
    rows[1]["collected_QA"]["informative_A"] = "bad " + LONE_SURROGATE
    summary, final, rejects = format_rows(tmp_path, rows)
    assert summary.records_out == 2 and summary.rejected == {"invalid_unicode": 1}
    assert "collected_QA.informative_A" in rejects[0]["detail"]
    # The rejected record is kept whole in the rejects file, its surrogate escaped.
    assert rejects[0]["record"]["collected_QA"]["informative_A"] == "bad " + LONE_SURROGATE


@pytest.mark.parametrize(
    "field,value",
    [
        ("error", None),
        ("error", "oops"),
        ("error", {"detail": "no reason"}),
        ("consistency", ["yes"]),
        ("collected_QA", {"Q": 1}),
        ("collected_QA", "Q?"),
        ("pred", 7),
    ],
)
def test_format_survives_hand_edited_fields(tmp_path, image_dir, field, value):
    rows = filtered_rows(image_dir, 2)
    rows[0][field] = value
    summary, final, _ = format_rows(tmp_path, rows)
    assert summary.records_in == 2 == summary.records_out + sum(summary.rejected.values())


def test_filter_tally_survives_a_null_error(tmp_path):
    path = tmp_path / "filtered.jsonl"
    rows = [
        {"syn_id": 0, "consistency": None, "error": None},
        {"syn_id": 1, "consistency": None, "error": "x"},
        {"syn_id": 2, "consistency": "yes"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = tally(path)
    assert stats["records_in"] == 3 == stats["records_out"] + sum(stats["rejected"].values())
    assert stats["rejected"] == {"unknown": 2}


# --- stage 1a: merge-seed --------------------------------------------------------------------------
def seed_record(image, question="What is shown?", answer="A cat.", **extra):
    return {
        "image": image,
        "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}],
        **extra,
    }


def merge(tmp_path, captions, precise, informative):
    out = tmp_path / "out" / "train.json"
    summary = run_merge_seed(
        MergeSeedArgs(
            caption_path=str(write_json(tmp_path / "c.json", captions)),
            precise_qa_path=str(write_json(tmp_path / "p.json", precise)),
            informative_qa_path=str(write_json(tmp_path / "i.json", informative)),
            output=str(out),
            blank_image_path=str(tmp_path / "blank.png"),
            replace_with_blank_image_percent=0,
            split="train",
        )
    )
    return summary, read_json(out), read_jsonl(out.with_name("train.rejects.jsonl"))


def test_merge_rejects_two_images_sharing_a_base_name(tmp_path):
    # cats/1.png and dogs/1.png are different pictures; a join on "1.png" would give one the other's tasks.
    captions = [seed_record(f"{k}/{i}.png", answer=f"a {k} picture {i}") for k in ("cats", "dogs") for i in (1, 2)]
    captions = [c for c in captions if c["image"] != "dogs/2.png"]
    precise = [seed_record(f"{i}.png", answer="yes", task_name="t") for i in (1, 2)]
    informative = [seed_record(f"allava/{i}.png", answer="Yes, because ...") for i in (1, 2)]
    summary, train, rejects = merge(tmp_path, captions, precise, informative)
    assert summary["images_dropped"] == {"ambiguous_image_name": 1}
    assert summary["images_seen"] == 2 and [r["image"] for r in train] == []  # 2.png: a task of 1 goes to dev
    row = next(r for r in rejects if r["reason"] == "ambiguous_image_name")
    assert row["image"] == "1.png" and "'cats/1.png'" in row["detail"] and "'dogs/1.png'" in row["detail"]
    assert summary["records_rejected"] == {}  # a caption of another image is no duplicate caption


def test_merge_with_prefixes_that_differ_across_files_is_no_collision(tmp_path):
    captions = [seed_record(f"allava_vflan/images/{i}.png", answer=f"c{i}") for i in range(10)]
    precise = [seed_record(f"images_191task_1k/{i}.png", answer="p", task_name="t") for i in range(10)]
    informative = [seed_record(f"allava_vflan/{i}.png", answer="i") for i in range(10)]
    summary, train, _ = merge(tmp_path, captions, precise, informative)
    assert summary["images_joined"] == 10 and summary["images_dropped"] == {} and len(train) == 9


def test_merge_rejects_a_lone_surrogate_record_only(tmp_path):
    captions = [seed_record(f"{i}.png", answer=f"c{i}") for i in range(3)]
    captions[1]["conversations"][1]["value"] = "bad " + LONE_SURROGATE
    precise = [seed_record(f"{i}.png", answer="p", task_name="t") for i in range(3)]
    informative = [seed_record(f"{i}.png", answer="i") for i in range(3)]
    summary, _, rejects = merge(tmp_path, captions, precise, informative)
    assert summary["records_rejected"] == {"invalid_unicode": 1} and summary["images_dropped"] == {"no_caption": 1}
    assert rejects[0]["record"]["conversations"][1]["value"] == "bad " + LONE_SURROGATE


@pytest.mark.parametrize("n", range(1, 45))
def test_split_puts_floor_of_90_percent_in_train_as_the_release(n):
    split = split_by_task({"task": [f"{i}.png" for i in range(n)]}, seed=0)
    assert sum(s == "train" for s in split.values()) == int(0.9 * n)


# --- the CLI ---------------------------------------------------------------------------------------
def adamllm(*args, **kw):
    return subprocess.run([sys.executable, "-m", "adamllm", *map(str, args)], capture_output=True, text=True, **kw)


def test_an_output_path_under_a_file_is_an_error_naming_the_path(tmp_path, image_dir):
    rows = filtered_rows(image_dir, 1)
    data = tmp_path / "filtered.jsonl"
    data.write_text(json.dumps(rows[0]) + "\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    result = adamllm("format", "--data_path", data, "--image_folder", image_dir, "--output", blocker / "out.json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"adamllm format: failed: {blocker}" in result.stderr and (
        "Not a directory" in result.stderr or "File exists" in result.stderr
    )


def test_trailing_garbage_is_reported_by_the_cli_without_a_traceback(tmp_path, image_dir):
    data = tmp_path / "filtered.json"
    data.write_text(json.dumps(filtered_rows(image_dir, 1)) + "\nrest")
    result = adamllm(
        "format", "--data_path", data, "--image_folder", image_dir, "--output", tmp_path / "o" / "out.json"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"adamllm format: error: {data}: unexpected text after the JSON list" in result.stderr


@pytest.mark.parametrize("name", ["a" * 5000 + ".png", "x/" * 3000 + "y.png", "loop/x.png"])
def test_an_unresolvable_image_path_is_a_reject_not_a_crash(tmp_path, name):
    from adamllm.core.images import resolve_image_path

    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(RecordError) as e:
        resolve_image_path(tmp_path, name)
    assert e.value.reason in ("unsafe_image_path", "image_missing")
