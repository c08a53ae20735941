"""Stage 1: labels, the prompt/training prefix property, DeepSpeed ZeRO-3 on 2 CPU processes,
tune_synthesizer.sh with resume, and the proof that a trained synthesizer feeds stage 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from builders import caption_pairs_of, trained_pairs
from conftest import read_json, read_jsonl

from adamllm.core import prompts
from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed
from adamllm.testing.fixtures import make_seed_fixtures

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return make_seed_fixtures(tmp_path_factory.mktemp("seed"), num_images=16, seed=2)


@pytest.fixture(scope="module")
def merged(seed, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "train.json"
    run_merge_seed(
        MergeSeedArgs(
            caption_path=str(seed["caption"]),
            precise_qa_path=str(seed["precise"]),
            informative_qa_path=str(seed["informative"]),
            output=str(out),
            blank_image_path=str(out.parent / "blank.png"),
            replace_with_blank_image_percent=25,
        )
    )
    return out


@pytest.fixture(scope="module")
def dataset(tiny_models, seed, merged):
    from adamllm.models.model_io import load_processor
    from adamllm.stage1.train_data import SeedDataset

    processor = load_processor(str(tiny_models["synthesizer"]))
    return SeedDataset(
        str(merged),
        processor,
        str(seed["image_folder"]),
        str(merged.parent / "blank.png"),
        6144,
        merged.parent / "r.jsonl",
    )


def test_labels_train_from_the_first_hint_to_eos(dataset):
    tok = dataset.tokenizer
    assert dataset.counts["blank_images"] == round(len(dataset) * 0.25) > 0
    for i in range(len(dataset)):
        item = dataset[i]
        ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
        first = next(k for k, label in enumerate(labels) if label != -100)
        assert all(label == -100 for label in labels[:first])
        assert labels[first:] == ids[first:], "every token after the first round is trained"
        trained = tok.decode(ids[first:])
        assert trained.startswith((prompts.PRECISE_HINT + "\n", prompts.INFORMATIVE_HINT + "\n"))
        assert trained.endswith(prompts.EOT + prompts.EOS) and ids[-1] == tok.convert_tokens_to_ids(prompts.EOS)
        assert prompts.header("user") in trained and prompts.header("assistant") in trained


def test_inference_prompt_ids_are_the_head_of_the_training_sequence(dataset):
    from adamllm.core.images import open_image

    for i in (0, 1, 2):
        example = dataset.examples[i]
        image = open_image(example.image)
        caption = example.text.split(prompts.header("assistant"))[1].split(prompts.EOT)[0]
        prompt = prompts.synthesizer_prompt(caption, dataset.processor.image_token)
        assert prompt == example.prompt
        prompt_ids = dataset.processor(images=image, text=prompt, return_tensors="pt")["input_ids"][0].tolist()
        item = dataset[i]
        assert item["input_ids"][: len(prompt_ids)].tolist() == prompt_ids
        assert prompt_ids[:2] == [dataset.tokenizer.bos_token_id] * 2
        assert (item["labels"][: len(prompt_ids)] == -100).all() and item["labels"][len(prompt_ids)] != -100


def test_collator_pads_text_and_tiles(dataset):
    from adamllm.stage1.train_data import Collator

    items = [dataset[i] for i in range(3)]
    batch = Collator(dataset.tokenizer.pad_token_id)(items)
    n = max(len(x["input_ids"]) for x in items)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, n)
    for row, x in enumerate(items):
        k = len(x["input_ids"])
        assert batch["attention_mask"][row].sum() == k and (batch["labels"][row, k:] == -100).all()
    assert batch["pixel_values"].shape[1] == max(x["pixel_values"].shape[0] for x in items)


def test_truncation_and_bad_records_counted(tiny_models, seed, merged, tmp_path):
    from adamllm.models.model_io import load_processor
    from adamllm.stage1.train_data import SeedDataset

    records = read_json(merged)
    records[0]["image"] = "../etc/passwd"
    records[1]["conversations"] = records[1]["conversations"][:1]
    records[2]["image"] = "nope.png"
    path = tmp_path / "d.json"
    path.write_text(json.dumps(records))
    processor = load_processor(str(tiny_models["synthesizer"]))
    full = SeedDataset(
        str(merged), processor, str(seed["image_folder"]), str(merged.parent / "blank.png"), 6144, tmp_path / "r0.jsonl"
    )
    # Room for every prompt (the masked head) but not for every whole sequence.
    heads = [int((full[i]["labels"] == -100).sum()) for i in range(len(full))]
    limit = max(heads) + 2
    ds = SeedDataset(
        str(path), processor, str(seed["image_folder"]), str(merged.parent / "blank.png"), limit, tmp_path / "r.jsonl"
    )
    assert ds.counts["records_in"] == len(records) == ds.counts["records_used"] + 3
    assert {r["reason"] for r in read_jsonl(tmp_path / "r.jsonl")} == {
        "unsafe_image_path",
        "bad_schema",
        "image_missing",
    }
    lengths = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    assert 0 < ds.counts["truncated"] == sum(n == limit for n in lengths) and max(lengths) == limit
    assert [min(e.length, limit) for e in ds.examples] == lengths
    short = SeedDataset(
        str(path),
        processor,
        str(seed["image_folder"]),
        str(merged.parent / "blank.png"),
        min(heads),
        tmp_path / "r2.jsonl",
    )
    assert short.counts["rejected_prompt_too_long"] > 0


def test_vision_tower_gets_its_own_learning_rate(tiny_models, dataset, tmp_path):
    import transformers
    from transformers import LlavaNextForConditionalGeneration

    from adamllm.stage1.train import SynthesizerTrainer, TrainingArguments
    from adamllm.stage1.train_data import Collator

    model = LlavaNextForConditionalGeneration.from_pretrained(str(tiny_models["synthesizer"]))
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=2e-5, weight_decay=0.1, use_cpu=True, report_to="none"
    )
    trainer = SynthesizerTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=Collator(0), vision_lr=2e-6
    )
    optimizer = trainer.create_optimizer()
    by_kind = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for kind, group in zip(trainer.group_kinds, optimizer.param_groups):
        assert all(("vision_tower" in names[id(p)]) == (kind == "vision_tower") for p in group["params"])
        by_kind.setdefault(kind, set()).add(group["lr"])
    assert by_kind == {"vision_tower": {2e-6}, "language_model_and_projector": {2e-5}}
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == sum(1 for p in model.parameters() if p.requires_grad)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, transformers.trainer_pt_utils.LengthGroupedSampler) is (
        args.train_sampling_strategy == "group_by_length"
    )


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_deepspeed_configs_fill_their_auto_values(config, tiny_models, tmp_path):
    """The JSON with "auto" values is checked without launching: transformers fills it, DeepSpeed accepts it."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import LlavaNextForConditionalGeneration
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    from adamllm.stage1.train import TrainingArguments

    raw = json.loads((ROOT / "scripts" / config).read_text())
    assert "optimizer" not in raw and "scheduler" not in raw, (
        "an optimizer block would lose the vision tower's learning rate"
    )
    model = LlavaNextForConditionalGeneration.from_pretrained(str(tiny_models["synthesizer"]))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        use_cpu=True,
        report_to="none",
    )
    hf = HfTrainerDeepSpeedConfig(raw)  # registers itself globally: undone below for the tests after this one
    try:
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, model, 100)
    finally:
        unset_hf_deepspeed_config()
    assert "auto" not in json.dumps(hf.config)
    ds = DeepSpeedConfig(hf.config)
    assert ds.zero_optimization_stage == int(config[4]) and ds.train_batch_size == 16


def tune(tiny_models, seed, save, *flags, port):
    env = dict(
        os.environ,
        BASE_MODEL=str(tiny_models["synthesizer"]),
        SAVE_PATH=str(save),
        PYTHON=sys.executable,
        BATCH_SIZE="2",
        GLOBAL_BATCH="8",
        MASTER_PORT=str(port),
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "tune_synthesizer.sh"),
            str(seed["caption"]),
            str(seed["precise"]),
            str(seed["informative"]),
            str(seed["image_folder"]),
            "--learning_rate",
            "1e-3",
            "--save_steps",
            "3",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_tune_synthesizer_zero3_two_processes_resume_and_vllm_load(tiny_models, seed, tmp_path):
    save = tmp_path / "synthesizer"
    first = tune(tiny_models, seed, save, "--max_steps", "3", port=29611)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 processes x batch 2 x accumulation 2" in first.stdout
    assert (save / "checkpoint-3").is_dir()
    second = tune(tiny_models, seed, save, "--max_steps", "8", port=29612)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = read_json(save / "training_summary.json")
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["steps"] == 8
    losses = [x["loss"] for x in summary["loss_curve"]]
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0], losses  # the curve spans both runs
    assert sorted(p.name for p in save.glob("checkpoint-*")) == ["checkpoint-8"]  # save_total_limit 1
    assert summary["group_learning_rates"]["vision_tower"] == pytest.approx(
        summary["group_learning_rates"]["language_model_and_projector"] / 10
    )
    merged = read_json(save / "seed_train.summary.json")
    assert summary["records_used"] == merged["records_written"] and summary["blank_images"] == merged[
        "blank_images"
    ] == round(merged["records_written"] / 10)
    # The ZeRO-3 save loads in vLLM (hub key layout) and stops at <|end_of_text|>.
    assert (
        read_json(save / "generation_config.json")["eos_token_id"]
        == 0 + read_json(save / "config.json")["text_config"]["eos_token_id"]
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamllm",
            "synthesize",
            "--model",
            str(save),
            "--data_path",
            str(ROOT / "data_samples" / "image_caption_pairs.json"),
            "--image_folder",
            str(ROOT / "data_samples" / "images"),
            "--output_dir",
            str(tmp_path / "out"),
            "--limit",
            "2",
            "--max_new_tokens",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(isinstance(r["pred"], str) for r in read_jsonl(tmp_path / "out" / "syn_task_triplets.jsonl"))


def test_ranks_leave_together_and_end_their_process_group(tmp_path):
    """leave_process_group holds every rank until rank 0 (the one writing files) gets there, then ends
    the gloo group: a rank left to exit with its group alive can abort in interpreter teardown."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "import torch.distributed as dist\n"
        "from adamllm.stage1.train import leave_process_group\n"
        "dist.init_process_group('gloo')\n"
        "rank = dist.get_rank()\n"
        "done = Path(sys.argv[1])\n"
        "if rank == 0:\n"
        "    time.sleep(2)\n"
        "    done.write_text('saved')\n"
        "leave_process_group()\n"
        "assert done.exists(), f'rank {rank} left before rank 0 had saved'\n"
        "assert not dist.is_initialized()\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29615",
            str(script),
            str(tmp_path / "done"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_stage1_feeds_stage2_a_trained_synthesizer_writes_parsable_triplets(tiny_models, tmp_path):
    """Train the tiny synthesizer until it has learned its records by heart, then synthesize on their
    captions: stage 2 renders the prompt stage 1 trained on, so the synthesizer writes the trained pairs."""
    from adamllm.core.parse import collect_triplet, parse_pairs
    from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize

    fixtures = make_seed_fixtures(tmp_path / "seed", num_images=12, seed=3)
    # Its own process with one thread, as tune_synthesizer.sh trains on a CPU. In this process torch
    # would sum over as many threads as the machine has cores, or over one once a vLLM engine ran here
    # (vLLM also turns torch.set_num_threads into a no-op), and the trained weights differ with the
    # thread count; pinned, they are the same bits on every run, on a loaded machine or not.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamllm",
            "train",
            "--model_name_or_path",
            str(tiny_models["synthesizer"]),
            "--caption_path",
            str(fixtures["caption"]),
            "--precise_qa_path",
            str(fixtures["precise"]),
            "--informative_qa_path",
            str(fixtures["informative"]),
            "--image_folder",
            str(fixtures["image_folder"]),
            "--replace_with_blank_image_percent",
            "0",
            "--output_dir",
            str(tmp_path / "syn"),
            "--max_steps",
            "120",
            "--learning_rate",
            "3e-3",
            "--per_device_train_batch_size",
            "4",
            "--lr_scheduler_type",
            "cosine",
            "--save_strategy",
            "no",
            "--logging_steps",
            "10",
            "--report_to",
            "none",
            "--use_cpu",
            "True",
            "--disable_tqdm",
            "True",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [x["loss"] for x in read_json(tmp_path / "syn" / "training_summary.json")["loss_curve"]]
    # The cosine schedule anneals to a loss where every trained token is near-certain: greedy decoding
    # then follows the training text, whatever the rounding of the engine.
    assert losses[-1] < 0.01, losses
    records = read_json(tmp_path / "syn" / "seed_train.json")
    caption_pairs_of(records, tmp_path / "pairs.json")
    run_synthesize(
        SynthesizeArgs(
            model=str(tmp_path / "syn"),
            data_path=str(tmp_path / "pairs.json"),
            image_folder=str(fixtures["image_folder"]),
            output_dir=str(tmp_path / "out"),
        )
    )
    preds = [r["pred"] for r in read_jsonl(tmp_path / "out" / "syn_task_triplets.jsonl")]
    written = [parse_pairs(p) for p in preds]
    trained = trained_pairs(records)
    counts = {
        "records": len(records),
        "parsable": sum(len(w) >= 2 for w in written),
        "triplets": sum(collect_triplet(w) is not None for w in written),
        "stopped": sum(p.rstrip().endswith(prompts.EOT) for p in preds),  # then EOS, the stop token
        "as_trained": sum(w == t for w, t in zip(written, trained)),
    }
    print("stage 1 -> stage 2:", counts)  # shown by pytest -rP
    assert counts["records"] >= 8 and set(counts.values()) == {len(records)}, (counts, preds)


def test_train_on_a_merged_file_finds_its_blank_image(tiny_models, seed, merged, tmp_path):
    """--data_path (a merge-seed output) instead of the seed files: the blank records stay usable."""
    from adamllm.stage1.train import main as train_main

    code = train_main(
        [
            "--model_name_or_path",
            str(tiny_models["synthesizer"]),
            "--data_path",
            str(merged),
            "--image_folder",
            str(seed["image_folder"]),
            "--output_dir",
            str(tmp_path / "syn"),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--use_cpu",
            "True",
        ]
    )
    assert code == 0
    summary = read_json(tmp_path / "syn" / "training_summary.json")
    assert (
        summary["records_used"] == len(read_json(merged))
        and summary["blank_images"] > 0
        and summary["rejects_file"] == ""
    )


def test_train_arguments_checked_together(capsys):
    from adamllm.stage1.train import main as train_main

    assert train_main(["--output_dir", "x", "--caption_path", "a.json"]) == 2
    err = capsys.readouterr().err
    assert "go together" in err and "--image_folder is required" in err and "--caption_path a.json: no such file" in err
