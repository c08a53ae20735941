"""Stage 1 on the Qwen-VL families, with the same recipe as LLaVA-NeXT: exact label masks, the vision
encoder at its own learning rate under DeepSpeed ZeRO-2 and ZeRO-3 on 2 processes, the saved folder loading in
vLLM, and the stage-1 -> stage-2 round trip (a synthesizer trained on a few records writes them back)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import caption_pairs_of, trained_pairs
from conftest import read_json, read_jsonl

from adamllm.core import prompts
from adamllm.core.parse import collect_triplet
from adamllm.models.backbones import BACKBONES, split_pairs
from adamllm.testing.fixtures import make_seed_fixtures

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QWEN = ("qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return make_seed_fixtures(tmp_path_factory.mktemp("seed"), num_images=12, seed=3)


def train(base: Path, seed: dict, out: Path, *flags: str) -> subprocess.CompletedProcess:
    """`adamllm train` in its own process with one thread: the trained bits are then the same on a
    loaded machine or not (see tests/stage1/test_train.py)."""
    return subprocess.run(
        [sys.executable, "-m", "adamllm", "train", "--model_name_or_path", str(base)]
        + ["--caption_path", str(seed["caption"]), "--precise_qa_path", str(seed["precise"])]
        + ["--informative_qa_path", str(seed["informative"]), "--image_folder", str(seed["image_folder"])]
        + ["--output_dir", str(out), "--report_to", "none", "--use_cpu", "True", "--disable_tqdm", "True"]
        + list(flags),
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


@pytest.mark.parametrize("family", QWEN)
def test_labels_mask_the_inference_prompt_and_train_through_the_end_of_text(qwen_models, seed, family, tmp_path):
    from adamllm.models.model_io import load_processor, load_synthesizer_model
    from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed
    from adamllm.stage1.train_data import Collator, SeedDataset

    backbone = BACKBONES[family]
    merged = tmp_path / "train.json"
    run_merge_seed(
        MergeSeedArgs(
            caption_path=str(seed["caption"]),
            precise_qa_path=str(seed["precise"]),
            informative_qa_path=str(seed["informative"]),
            output=str(merged),
            blank_image_path=str(tmp_path / "blank.png"),
            replace_with_blank_image_percent=25,
        )
    )
    base = str(qwen_models[family]["synthesizer"])
    processor = load_processor(base)
    dataset = SeedDataset(
        str(merged),
        processor,
        str(seed["image_folder"]),
        str(tmp_path / "blank.png"),
        4096,
        tmp_path / "r.jsonl",
        backbone=backbone,
    )
    assert dataset.counts["blank_images"] > 0
    tok = processor.tokenizer
    for i in range(len(dataset)):
        item = dataset[i]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        head = dataset.examples[i].head
        assert all(label == -100 for label in labels[:head]) and labels[head:] == ids[head:]
        trained = tok.decode(ids[head:])
        assert trained.startswith((prompts.PRECISE_HINT + "\n", prompts.INFORMATIVE_HINT + "\n"))
        assert trained.endswith("<|im_end|>\n<|endoftext|>") and ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
        assert "<|im_start|>assistant\n" in trained and tok.decode(ids[:head]).endswith("<|im_start|>user\n")
    items = [dataset[i] for i in range(3)]
    batch = Collator(tok.pad_token_id, backbone=backbone)(items)
    assert batch["pixel_values"].shape[0] == sum(x["pixel_values"].shape[0] for x in items)
    assert batch["image_grid_thw"].shape == (3, 3)
    model = load_synthesizer_model(base, dtype="float32")
    loss = model(**batch).loss
    assert loss.isfinite() and loss > 0


@pytest.mark.parametrize("family,zero,port", [("qwen2_5_vl", "zero2.json", 29631), ("qwen3_vl", "zero3.json", 29632)])
def test_tune_synthesizer_deepspeed_two_processes_then_vllm_serves_it(qwen_models, seed, family, zero, port, tmp_path):
    save = tmp_path / "synthesizer"
    env = dict(
        os.environ,
        BASE_MODEL=str(qwen_models[family]["synthesizer"]),
        SAVE_PATH=str(save),
        PYTHON=sys.executable,
        BATCH_SIZE="2",
        GLOBAL_BATCH="8",
        MASTER_PORT=str(port),
        ZERO=str(ROOT / "scripts" / zero),
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tune_synthesizer.sh")]
        + [str(seed[k]) for k in ("caption", "precise", "informative", "image_folder")]
        + ["--learning_rate", "1e-3", "--max_steps", "3", "--save_strategy", "no"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes x batch 2 x accumulation 2" in result.stdout
    summary = read_json(save / "training_summary.json")
    assert summary["steps"] == 3 and summary["speed_levers"]["padding_free"] is False
    rates = summary["group_learning_rates"]
    assert rates["vision_tower"] == pytest.approx(rates["language_model_and_projector"] / 10)
    tokenizer_ids = json.loads((save / "tokenizer.json").read_text())["added_tokens"]
    end_of_text = next(t["id"] for t in tokenizer_ids if t["content"] == "<|endoftext|>")
    assert read_json(save / "generation_config.json")["eos_token_id"] == end_of_text
    out = tmp_path / "out"
    synth = subprocess.run(
        [sys.executable, "-m", "adamllm", "synthesize", "--model", str(save)]
        + ["--data_path", str(ROOT / "data_samples" / "image_caption_pairs.json")]
        + ["--image_folder", str(ROOT / "data_samples" / "images"), "--output_dir", str(out)]
        + ["--limit", "2", "--max_new_tokens", "8", "--engine", "vllm"],
        capture_output=True,
        text=True,
    )
    assert synth.returncode == 0, synth.stderr[-3000:]
    assert all(isinstance(r["pred"], str) for r in read_jsonl(out / "syn_task_triplets.jsonl"))


@pytest.mark.parametrize("family", QWEN)
def test_stage1_feeds_stage2_the_trained_synthesizer_writes_its_records_back(qwen_models, seed, family, tmp_path):
    """Train until the tiny synthesizer knows its records by heart, then synthesize on their captions
    with both engines: the prompt is the trained head, so each record's pairs come back as trained."""
    from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize

    syn = tmp_path / "syn"
    result = train(
        qwen_models[family]["synthesizer"],
        seed,
        syn,
        *("--replace_with_blank_image_percent", "0", "--max_steps", "120", "--learning_rate", "3e-3"),
        *("--per_device_train_batch_size", "4", "--lr_scheduler_type", "cosine", "--save_strategy", "no"),
        *("--logging_steps", "10"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [x["loss"] for x in read_json(syn / "training_summary.json")["loss_curve"]]
    assert losses[-1] < 0.01, losses
    records = read_json(syn / "seed_train.json")
    caption_pairs_of(records, tmp_path / "pairs.json")
    preds = {}
    for engine in ("vllm", "hf"):
        run_synthesize(
            SynthesizeArgs(
                model=str(syn),
                data_path=str(tmp_path / "pairs.json"),
                image_folder=str(seed["image_folder"]),
                output_dir=str(tmp_path / engine),
                engine=engine,
            )
        )
        preds[engine] = [r["pred"] for r in read_jsonl(tmp_path / engine / "syn_task_triplets.jsonl")]
    assert preds["vllm"] == preds["hf"]
    written = [split_pairs(p) for p in preds["vllm"]]
    trained = trained_pairs(records)
    counts = {
        "records": len(records),
        "triplets": sum(collect_triplet(w) is not None for w in written),
        "stopped": sum(p.rstrip().endswith("<|im_end|>") for p in preds["vllm"]),  # then <|endoftext|>, the stop
        "as_trained": sum(w == t for w, t in zip(written, trained)),
    }
    print(f"{family} stage 1 -> stage 2:", counts)
    assert counts["records"] >= 8 and set(counts.values()) == {len(records)}, (counts, preds["vllm"][:2])
