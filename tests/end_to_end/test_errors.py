"""Damaged files a user or a run folder gives: one line naming the file, the place (byte offset, line
or record) and the fix, exit 2, no traceback, through the real `adamllm` entry point."""

import json
import subprocess
import sys

import pytest
from builders import handwritten, make_run
from conftest import read_json

from adamllm.core import jsonfiles
from adamllm.testing.fixtures import make_caption_pairs


def cli(capsys, *argv):
    """`adamllm ARGV` in this process: (exit code, stdout, stderr)."""
    from adamllm.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's and the flag checks' usage errors
        code = e.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


# --- the one reader: every JSON file -------------------------------------------------------------
DAMAGED = {
    "latin1_list": (b'[{"a": 1}, {"a": "caf\xe9"}]', "byte 0xe9 at byte offset 21 (line 1) is not UTF-8"),
    "latin1_jsonl": (b'{"a": 1}\n{"a": "caf\xe9"}\n', "byte 0xe9 at byte offset 19 (line 2) is not UTF-8"),
    "utf16": (
        '[{"a": 1}]'.encode("utf-16"),
        "is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8",
    ),
    "utf32": ('[{"a": 1}]'.encode("utf-32"), "is UTF-32 text"),
    "cut_in_a_character": (b'[{"a": "caf\xc3', "the file ends inside a UTF-8 character (byte offset 12)"),
    "deep_list": (
        b"[" + b"[" * 10_000 + b"]" * 10_000 + b"]",
        "the record at character 1: lists or objects nested too deep",
    ),
    "deep_jsonl": (b'{"a": 1}\n' + b"[" * 10_000 + b"]" * 10_000 + b"\n", "line 2: lists or objects nested too deep"),
    "deep_objects": (b"[" + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"]", "nested too deep"),
}


@pytest.mark.parametrize("name", DAMAGED)
def test_a_damaged_input_is_one_value_error_naming_file_and_place(tmp_path, name):
    content, message = DAMAGED[name]
    path = tmp_path / "in.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        list(jsonfiles.iter_input_records(path))
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "save it as UTF-8" in str(error.value) or "repair or remove" in str(error.value)


def test_the_not_utf8_offset_is_found_across_read_chunks(tmp_path):
    path = tmp_path / "big.jsonl"
    good = b'{"a": "\xc3\xa9t\xc3\xa9"}\n' * 200_000  # multi-byte characters straddle the 1 MiB chunks
    path.write_bytes(good + b'{"a": "\x96"}\n')
    with pytest.raises(ValueError, match=f"byte 0x96 at byte offset {len(good) + 7} \\(line 200001\\)"):
        list(jsonfiles.iter_json_records(path))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{", "invalid JSON at line 1 column 2 (Expecting property name enclosed in double quotes)"),
        (b'{"a": 1,\n "b": }', "invalid JSON at line 2 column 7 (Expecting value)"),
        (b"[1, 2]", "holds a JSON list, not a JSON object of stages"),
        (b'"text"', "holds a JSON string, not a JSON object of stages"),
        (b"\xff\xfe{\x00}\x00", "is UTF-16 text"),
        (b"[" * 10_000 + b"]" * 10_000, "nested too deep"),
    ],
)
def test_a_small_json_file_names_its_damage_and_the_fix(tmp_path, content, message):
    from adamllm.core.stats import read_stats

    path = tmp_path / "stats.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_stats(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert "move it away and rerun each stage's command" in str(error.value)


# --- the stages ------------------------------------------------------------------------------------
def test_merge_seed_names_a_latin1_and_a_utf16_seed_file(seed_fixtures, tmp_path, capsys):
    caption = seed_fixtures["caption"]
    text = caption.read_text(encoding="utf-8")
    flags = [
        "merge-seed",
        "--caption_path",
        caption,
        "--precise_qa_path",
        seed_fixtures["precise"],
        "--informative_qa_path",
        seed_fixtures["informative"],
        "--blank_image_path",
        tmp_path / "blank.png",
        "--output",
        tmp_path / "train.json",
    ]
    caption.write_bytes(text.replace('": "', '": "\xc0', 1).encode("latin-1"))
    code, _, err = cli(capsys, *flags)
    assert code == 2 and f"{caption}: byte 0xc0 at byte offset" in err and "save it as UTF-8" in err
    caption.write_text(text, encoding="utf-16")
    code, _, err = cli(capsys, *flags)
    assert code == 2 and f"{caption} is UTF-16 text" in err
    assert not (tmp_path / "train.json").exists()


def test_synthesize_names_a_latin1_input_and_json_nested_too_deep(tiny_models, tmp_path, capsys):
    pairs = make_caption_pairs(tmp_path / "pairs", 3, seed=4)
    flags = [
        "synthesize",
        "--model",
        tiny_models["synthesizer"],
        "--data_path",
        pairs["data_path"],
        "--image_folder",
        pairs["image_folder"],
        "--output_dir",
        tmp_path / "out",
        "--dry_run",
    ]
    records = read_json(pairs["data_path"])
    records[1]["messages"][1]["content"] = "Une crème brûlée."
    pairs["data_path"].write_bytes(json.dumps(records, ensure_ascii=False).encode("latin-1"))
    code, _, err = cli(capsys, *flags)
    assert code == 2 and f"{pairs['data_path']}: byte 0xe8 at byte offset" in err and "save it as UTF-8" in err
    pairs["data_path"].write_text(json.dumps(records[:1])[:-1] + ", " + "[" * 10_000 + "]" * 10_000 + "]")
    code, _, err = cli(capsys, *flags)
    assert code == 2 and "nested too deep" in err and "adamllm synthesize: error:" in err  # bad data, not "failed"


def test_format_refuses_a_damaged_dataset_info_before_any_work(tmp_path, capsys):
    run = make_run(tmp_path, [f"Q{i}?" for i in range(3)])
    flags = ["format", "--data_path", run["data"], "--image_folder", run["images"], "--output", run["final"]]
    info = run["out"] / "dataset_info.json"
    for content, message in (
        (b"[1, 2]", "holds a JSON list, not a JSON object of LLaMA-Factory dataset entries"),
        (b'{"mine": {,}}', "invalid JSON at line 1 column 11 (Expecting property name"),
    ):
        info.write_bytes(content)
        code, _, err = cli(capsys, *flags)
        assert code == 2 and f"{info}" in err and message in err and "rerun: `adamllm format` writes a new one" in err
        assert not run["final"].exists() and info.read_bytes() == content


@pytest.mark.parametrize("content", [b"[]", b'{"synthesize": {"records_in": 3,}'])
def test_format_with_a_damaged_stats_json_writes_its_output_and_says_stats_was_not_updated(tmp_path, capsys, content):
    run = make_run(tmp_path, [f"Q{i}?" for i in range(3)])
    (run["out"] / "stats.json").write_bytes(content)
    code, out, err = cli(
        capsys, "format", "--data_path", run["data"], "--image_folder", run["images"], "--output", run["final"]
    )
    assert code == 0 and "wrote 3 records" in out
    assert f"warning: {run['out'] / 'stats.json'} not updated" in err and "move it away and rerun" in err
    assert (run["out"] / "stats.json").read_bytes() == content


def test_filter_names_a_stats_json_holding_a_list(tiny_models, tmp_path, capsys):
    data = handwritten(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stats.json").write_text("[]")
    code, _, err = cli(
        capsys, "filter", "--model", tiny_models["checker"], "--data_path", data, "--output_dir", out, "--engine", "hf"
    )
    assert code == 2 and f"{out / 'stats.json'} holds a JSON list, not a JSON object of stages" in err
    assert (out / "filtered_task_pairs.jsonl").is_file()  # the work is saved: the rerun resumes at once


def test_a_model_whose_config_json_is_damaged_is_named(tiny_models, tmp_path, capsys):
    import shutil

    model = tmp_path / "synthesizer"
    shutil.copytree(tiny_models["synthesizer"], model)
    (model / "config.json").write_text('{"model_type": "llava_next", }')
    pairs = make_caption_pairs(tmp_path / "pairs", 1, seed=4)
    code, _, err = cli(
        capsys,
        "synthesize",
        "--model",
        model,
        "--data_path",
        pairs["data_path"],
        "--image_folder",
        pairs["image_folder"],
        "--output_dir",
        tmp_path / "out",
    )
    assert (
        code == 2
        and f"{model / 'config.json'}: invalid JSON at line 1 column 30" in err
        and "save or download the model again" in err
    )


# --- training and conversion (subprocesses: they parse their own flags) ---------------------------
def adamllm(*args):
    return subprocess.run([sys.executable, "-m", "adamllm", *map(str, args)], capture_output=True, text=True)


def test_train_names_no_usable_record_and_a_damaged_merge_summary(tiny_models, seed_fixtures, tmp_path):
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"image": "/etc/passwd", "conversations": []}, {"conversations": []}]))
    flags = [
        "train",
        "--model_name_or_path",
        tiny_models["synthesizer"],
        "--data_path",
        data,
        "--image_folder",
        seed_fixtures["image_folder"],
        "--output_dir",
        tmp_path / "out",
        "--use_cpu",
        "True",
        "--report_to",
        "none",
    ]
    result = adamllm(*flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"adamllm train: error: no usable training record in {data}" in result.stderr
    summary = tmp_path / "train.summary.json"
    for content, message in (
        ('{"blank_image_path": ', "invalid JSON at line 1 column 22"),
        ('{"records_written": 2}', "names no blank_image_path"),
    ):
        summary.write_text(content)
        result = adamllm(*flags)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert (
            f"adamllm train: error: {summary}" in result.stderr
            and message in result.stderr
            and "pass --blank_image_path" in result.stderr
        )


@pytest.mark.slow
def test_convert_llava_names_a_truncated_or_garbage_weights_file(tiny_models, tmp_path):
    from builders import make_llava_repo_checkpoint

    src = make_llava_repo_checkpoint(tiny_models["synthesizer"], tmp_path)
    weights = src / "model.safetensors"
    whole = weights.read_bytes()
    for i, damaged in enumerate((whole[: len(whole) // 2], b"not a checkpoint at all" * 50, whole[:4])):
        weights.write_bytes(damaged)
        result = adamllm("convert-llava", src, tmp_path / f"out{i}")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert (
            f"{weights} is not a readable weights file" in result.stderr
            and "download or copy it again" in result.stderr
        )
        assert not (tmp_path / f"out{i}" / "config.json").exists()
