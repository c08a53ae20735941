"""Stage 1b: multitask fine-tuning of the synthesizer (the paper's: a LLaVA-NeXT with a Llama-3 text
model; any family of adamllm.models.backbones, e.g. Qwen/Qwen2.5-VL-7B-Instruct).

    torchrun --nproc_per_node 8 -m adamllm train --deepspeed scripts/zero3.json \
        --model_name_or_path llava-hf/llama3-llava-next-8b-hf \
        --caption_path ALLaVA-Caption-VFLAN-4V.json --precise_qa_path metadata.json \
        --informative_qa_path ALLaVA-Instruct-VFLAN-4V.json --image_folder images_191task_1k \
        --output_dir exp/synthesizer --bf16 True ...

scripts/tune_synthesizer.sh runs this with the paper's hyperparameters. Every `TrainingArguments` flag
works. The seed files are merged first (`adamllm merge-seed`, into OUTPUT_DIR/seed_train.json), or
`--data_path` names a file merge-seed wrote. The vision encoder trains at its own learning rate
(`--mm_vision_tower_lr`, 2e-6) through an optimizer parameter group, which survives ZeRO-3 because
the DeepSpeed config leaves the optimizer to the Trainer. A rerun resumes from the last checkpoint.

Speed levers (adamllm/stage1/speed.py), each falling back with a warning where it cannot run:
`--use_liger_kernel True`, `--attn_implementation flash_attention_2`, `--padding_free True`;
`--step_timing True` writes the per-step times bench/bench_stage1.py reads.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers

from adamllm.core import run_folder
from adamllm.core.jsonfiles import read_json_file, write_json
from adamllm.models.backbones import BACKBONES, DEFAULT_FAMILY, Backbone, ProcessorOptions

log = logging.getLogger(__name__)
# torch's deprecation of two collectives that DeepSpeed ZeRO-3 calls on every step: noise in the log
# (reduce_scatter_tensor alone printed 36,000 lines in a 200-step make demo). Set at import, so in
# every rank torchrun starts as `python -m adamllm train`.
warnings.filterwarnings("ignore", message=".*(all_gather_into_tensor|reduce_scatter_tensor).*", category=FutureWarning)
# accelerate's "Gradient accumulation steps mismatch: GradientAccumulationPlugin has 1, DeepSpeed config
# has N. Using DeepSpeed's value.", on every DeepSpeed run with accumulation, is harmless: the
# Trainer sets the plugin to 1 on purpose because it accumulates itself (the loss of each micro-batch is
# divided by the trained tokens of the whole accumulated global batch, and DeepSpeed's backward is told
# not to divide again), and N is --gradient_accumulation_steps, which the Trainer wrote into the config.
# tests/stage1/test_train_accumulation.py shows such a step equals one SGD step on the global batch.
logging.getLogger("accelerate.accelerator").addFilter(
    lambda record: "GradientAccumulationPlugin has 1, DeepSpeed config has" not in record.getMessage()
)

DEFAULT_BASE = BACKBONES[DEFAULT_FAMILY].default_base


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=DEFAULT_BASE,
        metadata={
            "help": "Base MLLM to fine-tune: hub id or folder of a LLaVA-NeXT (the paper's), Qwen2-VL / Qwen2.5-VL "
            "or Qwen3-VL (an Instruct model: its chat template is the conversation's format)."
        },
    )
    unfreeze_mm_vision_tower: bool = field(
        default=True,
        metadata={"help": "Train the vision encoder too (the paper does), at --mm_vision_tower_lr."},
    )
    mm_vision_tower_lr: float = field(
        default=2e-6,
        metadata={
            "help": "Learning rate of the vision encoder (LLaVA's vision_tower, Qwen's visual blocks); the rest, "
            "projector included, trains at --learning_rate."
        },
    )
    min_pixels: int = field(
        default=0, metadata={"help": "Qwen-VL bases: fewest pixels an image is resized to (0: the processor's own)."}
    )
    max_pixels: int = field(
        default=0,
        metadata={
            "help": "Qwen-VL bases: most pixels an image is resized to (0: the processor's own). Saved with the "
            "synthesizer's processor, so stage 2 uses the same by default."
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "sdpa, eager, or flash_attention_2 (pip install flash-attn; needs CUDA and --bf16, else sdpa with "
            "a warning)."
        },
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default="",
        metadata={"help": "Training records written by `adamllm merge-seed` (instead of the three seed files)."},
    )
    caption_path: str = field(default="", metadata={"help": "ALLaVA-Caption-VFLAN-4V.json."})
    precise_qa_path: str = field(default="", metadata={"help": "Vision-Flan metadata.json."})
    informative_qa_path: str = field(default="", metadata={"help": "ALLaVA-Instruct-VFLAN-4V.json."})
    image_folder: str = field(
        default="", metadata={"help": "Folder of the seed images (Vision-Flan images_191task_1k)."}
    )
    blank_image_path: str = field(
        default="",
        metadata={
            "help": "The blank image (made if missing); default OUTPUT_DIR/blank.png, or with --data_path the one its "
            "merge-seed summary names."
        },
    )
    replace_with_blank_image_percent: float = field(
        default=10.0, metadata={"help": "Share of training records whose image becomes the blank image."}
    )

    def __post_init__(self):
        seed = [self.caption_path, self.precise_qa_path, self.informative_qa_path]
        errors = []
        if bool(self.data_path) == any(seed):
            errors.append(
                "give either --data_path or the three seed files (--caption_path --precise_qa_path "
                "--informative_qa_path)"
            )
        if any(seed) and not all(seed):
            errors.append("--caption_path, --precise_qa_path and --informative_qa_path go together")
        if not self.image_folder:
            errors.append("--image_folder is required")
        elif not Path(self.image_folder).is_dir():
            errors.append(f"--image_folder {self.image_folder}: no such folder")
        for name in ("data_path", "caption_path", "precise_qa_path", "informative_qa_path"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                errors.append(f"--{name} {path}: no such file")
            elif path and _first_char(path) not in ("[", "{"):
                errors.append(f"--{name} {path}: not a JSON list or JSONL file")
        if errors:
            raise ValueError("; ".join(errors))


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(
        default=6144,
        metadata={"help": "Longest training sequence, image tokens included; longer ones are truncated (and counted)."},
    )
    check_only: bool = field(
        default=False,
        metadata={
            "help": "Check the arguments, seed files and base model, then exit: tune_synthesizer.sh does this before "
            "torchrun starts its processes."
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Pack each micro-batch into one row without padding (position ids restart per sample); with sdpa, "
            "eager or flash_attention_2."
        },
    )
    step_timing: bool = field(
        default=False,
        metadata={
            "help": "Write OUTPUT_DIR/step_timing.rank<R>.json: seconds and tokens per optimizer step, peak memory "
            "(read by bench/bench_stage1.py)."
        },
    )


def _first_char(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.read(4096).lstrip()[:1]


class SynthesizerTrainer(transformers.Trainer):
    """The Trainer with two changes: the vision encoder's own learning rate, and length grouping that
    reads the lengths the dataset computed instead of drawing (and decoding) every sample."""

    def __init__(
        self, *args, vision_lr: float, step_timer=None, backbone: Backbone = BACKBONES[DEFAULT_FAMILY], **kwargs
    ):
        super().__init__(*args, callbacks=[step_timer] if step_timer else None, **kwargs)
        self.vision_lr = vision_lr
        self.step_timer = step_timer
        self.backbone = backbone

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.step_timer is not None:
            self.step_timer.count(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, param in opt_model.named_parameters():
                if param.requires_grad:
                    groups.setdefault((self.backbone.is_vision_param(name), name in decay), []).append(param)
            param_groups = []
            self.group_kinds = []
            for (vision, decayed), params in sorted(groups.items()):
                group = {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0}
                if vision:
                    group["lr"] = self.vision_lr
                param_groups.append(group)
                self.group_kinds.append("vision_tower" if vision else "language_model_and_projector")
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(param_groups, **kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                dataset=dataset,
                lengths=dataset.lengths,
            )
        return super()._get_train_sampler(train_dataset)


def _cpu_distributed_fixes() -> list[str]:
    """Settings DeepSpeed needs to run several processes without CUDA (docs/cpu-stack.md).

    Without them accelerate leaves the DeepSpeed backend unset and every rank believes it is rank 0.
    Returns extra command-line flags; none on a machine with CUDA.
    """
    if torch.cuda.is_available() or "LOCAL_RANK" not in os.environ:
        return []
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    from accelerate import PartialState

    PartialState(backend="gloo")
    return ["--use_cpu", "True", "--accelerator_config", json.dumps({"use_configured_state": True})]


def parse(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """The three argument groups; ValueError listing every problem found, the base model's included."""
    from adamllm.models.model_io import check_model, check_processor

    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    extra = _cpu_distributed_fixes() if "--deepspeed" in " ".join(argv) else []
    # The base model is checked from its config.json and its processor (which must expand each image
    # into as many tokens as the model makes features), and reported with the other problems.
    base = _flag_value(argv, "--model_name_or_path", DEFAULT_BASE)
    options = ProcessorOptions(*(_int_flag(argv, f"--{name}") for name in ("min_pixels", "max_pixels")))
    model_problem = check_model(base, "synthesizer", "--model_name_or_path") or check_processor(
        base, "--model_name_or_path", options
    )
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv + extra)
    except ValueError as e:
        raise ValueError("; ".join(filter(None, [str(e), model_problem]))) from None
    if model_problem:
        raise ValueError(model_problem)
    return parsed


def _flag_value(argv: list[str], flag: str, default: str) -> str:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return default


def _int_flag(argv: list[str], flag: str) -> int:
    """A flag's integer value, 0 when absent or no integer (the parser then says what is wrong)."""
    value = _flag_value(argv, flag, "0")
    return int(value) if value.isdigit() else 0


def prepare_data(data_args: DataArguments, training_args: TrainingArguments) -> tuple[str, bool]:
    """The training records: --data_path, or the seed files merged into OUTPUT_DIR/seed_train.json.

    Also whether every image was just decoded whole (by this run's merge), so need not be again.
    """
    if data_args.data_path:
        summary = run_folder.summary_path(data_args.data_path)
        if not data_args.blank_image_path and summary.exists():
            # merge-seed wrote the blank image's path into its records and its summary.
            data_args.blank_image_path = summary_blank_image(summary)
        return data_args.data_path, False
    from accelerate import PartialState

    from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed

    output = Path(training_args.output_dir) / "seed_train.json"
    if not data_args.blank_image_path:
        data_args.blank_image_path = str(Path(training_args.output_dir) / "blank.png")
    with PartialState().main_process_first():
        if PartialState().is_main_process:
            run_merge_seed(
                MergeSeedArgs(
                    caption_path=data_args.caption_path,
                    precise_qa_path=data_args.precise_qa_path,
                    informative_qa_path=data_args.informative_qa_path,
                    output=str(output),
                    blank_image_path=data_args.blank_image_path,
                    image_folder=data_args.image_folder,
                    replace_with_blank_image_percent=data_args.replace_with_blank_image_percent,
                    split="train",
                    seed=training_args.seed,
                )
            )
    return str(output), True


def summary_blank_image(summary: Path) -> str:
    """The blank image a merge-seed summary names; a damaged summary is a ValueError with the fix."""
    fix = "rerun `adamllm merge-seed` to write it again, or pass --blank_image_path"
    blank = read_json_file(summary, dict, "merge-seed's summary (a JSON object)", fix).get("blank_image_path")
    if not isinstance(blank, str) or not blank:
        raise ValueError(f"{summary} names no blank_image_path (it holds {blank!r}); {fix}")
    return blank


def train(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Fine-tune and save a synthesizer that vLLM loads; returns the training summary."""
    from transformers.trainer_utils import get_last_checkpoint

    from adamllm.models.model_io import backbone_for, load_processor, load_synthesizer_model, to_vllm_layout
    from adamllm.stage1.speed import StepTimer, apply_liger, choose_levers
    from adamllm.stage1.train_data import Collator, SeedDataset

    start = time.monotonic()
    out = Path(training_args.output_dir)
    data_path, images_checked = prepare_data(data_args, training_args)
    backbone = backbone_for(model_args.model_name_or_path)
    options = ProcessorOptions(model_args.min_pixels, model_args.max_pixels)
    processor = load_processor(model_args.model_name_or_path, options)
    tokenizer = processor.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = SeedDataset(
        data_path,
        processor,
        data_args.image_folder,
        data_args.blank_image_path,
        training_args.model_max_length,
        out / "train_data.rejects.jsonl",
        images_checked,
        backbone,
    )
    if not len(dataset):
        raise ValueError(f"no usable training record in {data_path}; see {out / 'train_data.rejects.jsonl'}")

    dtype = torch.bfloat16 if training_args.bf16 else torch.float32
    levers = choose_levers(
        model_args.attn_implementation, training_args.padding_free, training_args.use_liger_kernel, dtype, backbone
    )
    # The Trainer's own Liger hook knows no LLaVA-NeXT (and raises without liger-kernel): ours replaces it.
    training_args.use_liger_kernel = False
    model = load_synthesizer_model(model_args.model_name_or_path, dtype, attn_implementation=levers.attn_implementation)
    model.config.use_cache = False
    if levers.liger:
        apply_liger(model)
    if not model_args.unfreeze_mm_vision_tower:
        for name, param in model.named_parameters():
            if backbone.is_vision_param(name):
                param.requires_grad_(False)

    trainer = SynthesizerTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=Collator(tokenizer.pad_token_id, padding_free=levers.padding_free, backbone=backbone),
        vision_lr=model_args.mm_vision_tower_lr,
        backbone=backbone,
        step_timer=StepTimer(out) if training_args.step_timing else None,
    )
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))

    summary = {
        **{k: int(v) for k, v in dataset.counts.items()},
        "resumed_from": last,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        # Final learning rate of each optimizer group, vision tower first: shows the separate
        # vision-tower rate survived DeepSpeed.
        "group_learning_rates": _group_lrs(trainer),
        "speed_levers": levers.as_dict(),
        "wall_s": round(time.monotonic() - start, 1),
        "data_path": data_path,
        "rejects_file": str(dataset.rejects_path or ""),
        "args": {"model": asdict(model_args), "data": asdict(data_args)},
    }
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        # Stop at the family's end-of-text: the synthesizer closes each of its turns with another token.
        generation = (
            transformers.GenerationConfig.from_pretrained(str(out))
            if (out / "generation_config.json").exists()
            else transformers.GenerationConfig()
        )
        generation.eos_token_id = tokenizer.convert_tokens_to_ids(backbone.end_of_text)
        generation.pad_token_id = tokenizer.pad_token_id
        generation.save_pretrained(str(out))
        to_vllm_layout(out)
        write_json(out / "training_summary.json", summary)
        training_args_path = out / "training_args.json"
        training_args_path.write_text(training_args.to_json_string())
    return summary


def _group_lrs(trainer: SynthesizerTrainer) -> dict[str, float]:
    # DeepSpeed swaps the groups' tensors for its own partitions but keeps their order and settings.
    return {kind: group["lr"] for kind, group in zip(trainer.group_kinds, trainer.optimizer.param_groups)}


def leave_process_group() -> None:
    """Wait for every rank, then end the process group while the interpreter is still whole.

    Rank 0 writes the processor and the vLLM layout after the others are done, so without the barrier
    they exit first. A rank that exits with its gloo group alive can abort in interpreter teardown
    ("terminate called without an active exception", exit -6) after a good run, and torchrun then
    fails the job: seen in CI, never reproduced on a quiet machine.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        model_args, data_args, training_args = parse(argv)
    except ValueError as e:
        print(f"adamllm train: error: {e}", file=sys.stderr)
        return 2
    if training_args.check_only:
        print(f"adamllm train: arguments, seed files and base model {model_args.model_name_or_path} checked")
        return 0
    try:
        summary = train(model_args, data_args, training_args)
    except ValueError as e:  # bad data: no usable record, a damaged summary or input file
        print(f"adamllm train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line (from one rank), not a traceback per rank
        if training_args.process_index == 0:
            print(
                f"adamllm train: interrupted; the checkpoints saved so far are in {training_args.output_dir} "
                f"(checkpoint-*); "
                "the same command resumes from the last one",
                file=sys.stderr,
            )
        return 130
    leave_process_group()
    if training_args.process_index == 0:
        log.info(
            "trained on %d records (%d truncated, %d blank) in %.0f s; saved to %s",
            summary["records_used"],
            summary["truncated"],
            summary["blank_images"],
            summary["wall_s"],
            training_args.output_dir,
        )
    return 0
