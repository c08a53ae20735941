"""The adamllm command: help is instant (no heavy imports), errors exit 2 naming the flag, and the
data commands run end to end through the real entry point."""

import subprocess
import sys

from conftest import read_json


def adamllm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "adamllm", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys; from adamllm.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', "
        "'transformers', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    result = adamllm("--help")
    assert result.returncode == 0
    for command in ("merge-seed", "format", "make-tiny-models", "make-seed-fixtures"):
        assert command in result.stdout


def test_unknown_command_and_bad_flags_exit_2():
    assert adamllm("nope").returncode == 2
    result = adamllm("format", "--data_path", "missing.jsonl", "--image_folder", "/nonexistent", "--output", "o.json")
    assert result.returncode == 2
    assert "--data_path missing.jsonl: no such file" in result.stderr and "--image_folder /nonexistent" in result.stderr


def test_fixtures_then_merge_seed_with_dash_flags(tmp_path):
    assert adamllm("make-seed-fixtures", str(tmp_path / "s"), "--num-images", "20").returncode == 0
    s = tmp_path / "s"
    result = adamllm(
        "merge-seed",
        "--caption-path",
        str(s / "ALLaVA-Caption-VFLAN-4V.json"),
        "--precise_qa_path",
        str(s / "vflan_metadata.json"),
        "--informative_qa_path",
        str(s / "ALLaVA-Instruct-VFLAN-4V.json"),
        "--blank_image_path",
        str(tmp_path / "blank.png"),
        "--replace_with_blank_image_percent",
        "10",
        "--split",
        "train",
        "--output",
        str(tmp_path / "train.json"),
    )
    assert result.returncode == 0, result.stderr
    assert "train records" in result.stdout
    assert len(read_json(tmp_path / "train.json")) == read_json(tmp_path / "train.summary.json")["records_written"] > 0


def test_dataclass_flags_parse_with_dash_aliases_and_no_switches(tmp_path):
    import argparse

    from adamllm.cli.args import add_dataclass_arguments, dataclass_from_namespace
    from adamllm.stage2.filter import FilterArgs

    model = tmp_path / "checker"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, FilterArgs)
    args = dataclass_from_namespace(
        FilterArgs,
        parser.parse_args(
            [
                "--model",
                str(model),
                "--data_path",
                __file__,
                "--output_dir",
                "o",
                "--no-prefix_caching",
                "--num-shards",
                "3",
            ]
        ),
        parser,
    )
    assert args.prefix_caching is False and args.num_shards == 3 and args.enforce_eager == "auto"


def test_seed_is_an_alias_of_engine_seed_in_the_model_stages_and_formats_seed_in_run():
    from adamllm.cli import build_parser

    parser = build_parser()
    synth = ["synthesize", "--model", "m", "--data_path", "d", "--image_folder", "i", "--output_dir", "o"]
    assert (
        parser.parse_args([*synth, "--seed", "5"]).engine_seed
        == parser.parse_args([*synth, "--engine_seed", "5"]).engine_seed
        == 5
    )
    filt = ["filter", "--model", "m", "--data_path", "d", "--output_dir", "o"]
    assert parser.parse_args([*filt, "--seed", "6"]).engine_seed == 6
    run = [
        "run",
        "--synthesizer",
        "s",
        "--checker",
        "c",
        "--data_path",
        "d",
        "--image_folder",
        "i",
        "--output_dir",
        "o",
    ]
    ns = parser.parse_args([*run, "--seed", "7", "--engine_seed", "3"])
    assert (ns.seed, ns.engine_seed) == (7, 3)
    assert (parser.parse_args(run).seed, parser.parse_args(run).engine_seed) == (42, 0)
