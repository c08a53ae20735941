"""Resumes that never keep stale work (issue 16): the resume fingerprint holds every argument that can
change an output record; a record whose image was replaced is redone at resume and rejected by format
and export; a run folder whose stages do not come from one another is refused, naming the stale files."""

import dataclasses
import hashlib
import json
import shutil

import pytest
from builders import handwritten
from conftest import read_json, read_jsonl
from PIL import Image

from adamllm.cli import main
from adamllm.executors.resume import NOT_FINGERPRINTED
from adamllm.results.report import write_report
from adamllm.stage2.filter import FilterArgs, FilterStage, run_filter
from adamllm.stage2.run import RunArgs, run_pipeline
from adamllm.stage2.synthesize import SynthesizeArgs, SynthesizeStage, run_synthesize
from adamllm.testing.fixtures import make_caption_pairs

NEW_TOKENS = 16
TRIPLETS, FILTERED, FINAL = (
    "syn_task_triplets.jsonl",
    "filtered_task_pairs.jsonl",
    "image_caption_and_synthetic_task.json",
)


# --- the fingerprint: every argument field, less a documented few ---------------------------------
def bare(cls, data_path, **values):
    """An argument dataclass at its defaults, without its checks (which need a real model)."""
    args = cls.__new__(cls)
    for f in dataclasses.fields(cls):
        setattr(args, f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
    args.data_path = str(data_path)
    for name, value in values.items():
        setattr(args, name, value)
    return args


def other(value):
    return not value if isinstance(value, bool) else value + 1 if isinstance(value, (int, float)) else f"{value}x"


STAGES = [(SynthesizeArgs, SynthesizeStage, set()), (FilterArgs, FilterStage, {"prompt_sha256"})]


@pytest.mark.parametrize("cls, stage, extra", STAGES, ids=["synthesize", "filter"])
def test_the_fingerprint_holds_every_argument_field_but_the_documented_few(tmp_path, cls, stage, extra):
    data = tmp_path / "in.jsonl"
    data.write_text('{"syn_id": 0}\n')
    fingerprint = stage(bare(cls, data)).fingerprint()
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(fingerprint) == (names - set(NOT_FINGERPRINTED)) | {"input", "size", "sha256"} | extra
    for name in names - {"data_path", "prompt_file"}:
        changed = stage(bare(cls, data, **{name: other(getattr(bare(cls, data), name))})).fingerprint()
        if name in NOT_FINGERPRINTED:  # local and Ray, 1 or K shards, any batch size: they resume each other
            assert changed == fingerprint, name
        else:
            assert changed != fingerprint, f"--{name} changes no fingerprint"


def test_an_argument_added_later_is_in_the_fingerprint_unless_it_is_listed(tmp_path):
    @dataclasses.dataclass
    class Later(FilterArgs):
        new_flag: int = 3

    data = tmp_path / "in.jsonl"
    data.write_text('{"syn_id": 0}\n')
    assert FilterStage(bare(Later, data)).fingerprint()["new_flag"] == 3
    every = {f.name for cls, _, _ in STAGES for f in dataclasses.fields(cls)}
    assert set(NOT_FINGERPRINTED) <= every, f"listed but no such field: {set(NOT_FINGERPRINTED) - every}"
    assert all(isinstance(why, str) and why for why in NOT_FINGERPRINTED.values())


def test_filter_at_another_max_model_len_or_engine_is_not_resumed(tiny_models, tmp_path):
    """The issue's case: `filter --max_model_len 64` rejected every triplet as too long; `filter` at the
    default resumed and kept those rejects, and an engine switch was accepted unseen."""
    data = handwritten(tmp_path)
    args = dict(model=str(tiny_models["checker"]), data_path=str(data), output_dir=str(tmp_path), engine="hf")
    short = run_filter(FilterArgs(**args, max_model_len=64))
    assert short["rejected"]["prompt_too_long"] == 2
    before = (tmp_path / FILTERED).read_bytes()
    with pytest.raises(ValueError, match="changed: max_model_len.*--overwrite"):
        run_filter(FilterArgs(**args))
    with pytest.raises(ValueError, match="changed: engine, max_model_len"):
        run_filter(FilterArgs(**{**args, "engine": "vllm"}))  # refused before vLLM loads anything
    assert (tmp_path / FILTERED).read_bytes() == before
    fresh = run_filter(FilterArgs(**args, overwrite=True))
    assert "prompt_too_long" not in fresh["rejected"] and sum(fresh["verdicts"].values()) == 2


def test_the_ray_executor_resumes_a_local_run(tiny_models, finished, tmp_path):
    """Executor flags are out of the fingerprint: a finished local synthesis is resumed by Ray (with
    nothing left to do, Ray never starts), not refused or started over."""
    pytest.importorskip("ray")
    pairs, _ = finished
    out = copy_run(finished, tmp_path)
    before = (out / TRIPLETS).read_bytes()
    stats = run_synthesize(
        SynthesizeArgs(
            model=str(tiny_models["synthesizer"]),
            data_path=str(pairs["data_path"]),
            image_folder=str(pairs["image_folder"]),
            output_dir=str(out),
            max_new_tokens=NEW_TOKENS,
            engine="hf",
            batch_size=2,
            decode_threads=1,
            executor="ray",
        )
    )
    assert (out / TRIPLETS).read_bytes() == before and stats["records_in"] == 6


# --- a stage-2 run on the tiny models ------------------------------------------------------------
def run_args(tiny_models, pairs, out, **kw):
    return RunArgs(
        synthesizer=str(tiny_models["synthesizer"]),
        checker=str(tiny_models["checker"]),
        data_path=str(pairs["data_path"]),
        image_folder=str(pairs["image_folder"]),
        output_dir=str(out),
        max_new_tokens=NEW_TOKENS,
        engine="hf",
        batch_size=4,
        **kw,
    )


@pytest.fixture(scope="module")
def finished(tiny_models, tmp_path_factory):
    """`adamllm run` end to end on 6 pairs: a folder whose stages chain."""
    root = tmp_path_factory.mktemp("finished")
    pairs = make_caption_pairs(root / "pairs", 6, seed=3)
    run_pipeline(run_args(tiny_models, pairs, root / "out"))
    return pairs, root / "out"


def copy_run(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished[1], out)
    return out


def export(out, to, *flags):
    return main(["export", str(out), "--to", str(to), *map(str, flags)])


def test_run_records_what_each_stage_read_and_wrote_and_they_chain(finished, tmp_path):
    pairs, out = finished
    stats = read_json(out / "stats.json")
    made = {stage: stats[stage]["provenance"] for stage in ("synthesize", "filter", "format")}
    assert made["synthesize"]["input"]["path"] == str(pairs["data_path"].resolve())
    assert (
        made["synthesize"]["output"] == made["filter"]["input"] and made["filter"]["output"] == made["format"]["input"]
    )
    for stage, name in (("synthesize", TRIPLETS), ("filter", FILTERED), ("format", FINAL)):
        data = (out / name).read_bytes()
        assert made[stage]["output"] == {
            "path": str((out / name).resolve()),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    assert write_report(out).is_file()
    datasets = pytest.importorskip("datasets")
    assert export(out, tmp_path / "hf") == 0
    assert datasets.load_from_disk(str(tmp_path / "hf")).num_rows == len(read_json(out / FINAL))


def test_synthesize_overwrite_with_new_input_makes_report_export_and_format_refuse(
    tiny_models, finished, tmp_path, capsys
):
    """The issue's case: synthesize --overwrite on a new input into a finished folder, then report and
    export showed the old filtered and final records, and the card said synthesize 5 -> 5, filter 200 -> 197."""
    out = copy_run(finished, tmp_path)
    new = make_caption_pairs(tmp_path / "new", 3, seed=9)
    run_synthesize(
        SynthesizeArgs(
            model=str(tiny_models["synthesizer"]),
            data_path=str(new["data_path"]),
            image_folder=str(new["image_folder"]),
            output_dir=str(out),
            max_new_tokens=NEW_TOKENS,
            engine="hf",
            overwrite=True,
        )
    )
    stale = f"so {out / FILTERED}, {out / FINAL} are stale"
    fix = f"Rerun `adamllm filter --overwrite`, then `adamllm format` into {out}, or `adamllm run` with --overwrite"
    with pytest.raises(
        ValueError,
        match="`adamllm filter` read another syn_task_triplets.jsonl than the one `adamllm synthesize` last wrote",
    ) as refused:
        write_report(out)
    assert stale in str(refused.value) and fix in str(refused.value)
    with pytest.raises(SystemExit):
        export(out, tmp_path / "hf")
    err = capsys.readouterr().err
    assert stale in err and "Traceback" not in err and not (tmp_path / "hf").exists()
    final = (out / FINAL).read_bytes()
    assert (
        main(
            [
                "format",
                "--data_path",
                str(out / FILTERED),
                "--image_folder",
                str(new["image_folder"]),
                "--output",
                str(out / FINAL),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"so {out / FILTERED} is stale" in err and "Rerun `adamllm filter --overwrite`, then `adamllm format`" in err
    assert (out / FINAL).read_bytes() == final
    # The fix the message names: the later stages again.
    run_filter(
        FilterArgs(
            model=str(tiny_models["checker"]),
            data_path=str(out / TRIPLETS),
            output_dir=str(out),
            engine="hf",
            overwrite=True,
        )
    )
    assert (
        main(
            [
                "format",
                "--data_path",
                str(out / FILTERED),
                "--image_folder",
                str(new["image_folder"]),
                "--output",
                str(out / FINAL),
            ]
        )
        == 0
    )
    write_report(out)
    assert export(out, tmp_path / "hf") == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| synthesize | 3 | 3 |" in card and "| filter | 3 |" in card


def test_filter_refuses_a_triplets_file_edited_since_synthesis(tiny_models, finished, tmp_path):
    out = copy_run(finished, tmp_path)
    rows = read_jsonl(out / TRIPLETS)
    rows[2]["pred"] = "an edited pred"
    (out / TRIPLETS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        ValueError,
        match=rf"syn_task_triplets.jsonl is not the file `adamllm synthesize` wrote \(it was edited or replaced "
        rf"since\), so {out / TRIPLETS} is stale "
        r".*Rerun `adamllm synthesize --overwrite`, then `adamllm filter --overwrite`",
    ):
        run_filter(
            FilterArgs(
                model=str(tiny_models["checker"]),
                data_path=str(out / TRIPLETS),
                output_dir=str(out),
                engine="hf",
                overwrite=True,
            )
        )


# --- images replaced after a run ------------------------------------------------------------------
def test_a_replaced_image_is_rejected_by_export_and_format_and_redone_at_resume(tiny_models, tmp_path, capsys):
    pairs = make_caption_pairs(tmp_path / "pairs", 5, seed=4)
    images = pairs["image_folder"]
    names = [r["images"][0] for r in read_json(pairs["data_path"])]
    kept_aside = (images / names[3]).rename(tmp_path / "aside.png")  # missing at the first run
    out = tmp_path / "out"
    run_pipeline(run_args(tiny_models, pairs, out))
    first = read_jsonl(out / TRIPLETS)
    assert first[1]["image_stat"]["size"] == (images / names[1]).stat().st_size and first[3]["image_stat"] is None
    Image.new("RGB", (200, 120), (250, 10, 10)).save(images / names[1])  # another picture, same name
    # export: the post-training record of syn_id 1 would pair the new picture with the old task
    pytest.importorskip("datasets")
    assert export(out, tmp_path / "hf") == 0
    rejects = read_jsonl(tmp_path / "hf" / "export.rejects.jsonl")
    assert [(r["syn_id"], r["reason"]) for r in rejects] == [(1, "image_changed")]
    assert "rerun synthesize" in rejects[0]["detail"]
    summary = read_json(tmp_path / "hf" / "export.summary.json")
    assert summary["records_in"] == summary["rows"] + 1
    # format: the same record is rejected; its LLaMA-Factory records gain no field
    assert (
        main(
            ["format", "--data_path", str(out / FILTERED), "--image_folder", str(images), "--output", str(out / FINAL)]
        )
        == 0
    )
    fmt = read_json(out / "image_caption_and_synthetic_task.summary.json")
    assert (
        fmt["rejected"] == {"image_changed": 1, "image_missing": 1} and fmt["records_in"] == 5 == fmt["records_out"] + 2
    )
    assert all(set(r) == {"messages", "images"} for r in read_json(out / FINAL))
    # the resume redoes the record whose image changed, and the one whose image is there now
    kept_aside.rename(images / names[3])
    capsys.readouterr()
    run_pipeline(run_args(tiny_models, pairs, out, overwrite=True))
    fresh = tmp_path / "fresh"
    run_synthesize(
        SynthesizeArgs(
            model=str(tiny_models["synthesizer"]),
            data_path=str(pairs["data_path"]),
            image_folder=str(images),
            output_dir=str(fresh),
            max_new_tokens=NEW_TOKENS,
            engine="hf",
            batch_size=4,
        )
    )
    assert (out / TRIPLETS).read_bytes() == (fresh / TRIPLETS).read_bytes()
    redone = read_jsonl(out / TRIPLETS)
    assert redone[3]["pred"] is not None and [r["syn_id"] for r in redone] == list(range(5))
    assert redone[0] == first[0] and redone[2] == first[2] and redone[4] == first[4]
    assert read_json(out / "image_caption_and_synthetic_task.summary.json")["rejected"] == {}


def test_run_hands_engine_seed_to_both_engines_and_seed_to_format(tiny_models, finished, tmp_path):
    pairs, _ = finished
    run_pipeline(run_args(tiny_models, pairs, tmp_path / "seeds", seed=7, engine_seed=3, limit=2))
    stats = read_json(tmp_path / "seeds" / "stats.json")
    assert stats["synthesize"]["args"]["engine_seed"] == stats["filter"]["args"]["engine_seed"] == 3
    assert stats["format"]["args"]["seed"] == 7 and "engine_seed" not in stats["format"]["args"]
    fingerprints = [read_json(p) for p in sorted((tmp_path / "seeds" / "shards").glob("*.input-of-*.json"))]
    assert len(fingerprints) == 2 and all(f["engine_seed"] == 3 and "seed" not in f for f in fingerprints)
