"""Stage 2 end to end: synthesize, filter, format, into one output folder.

    adamllm run --synthesizer AdaptLLM/visual-instruction-synthesizer --checker meta-llama/Meta-Llama-3-8B \
        --data_path image_caption_pairs.json --image_folder images --output_dir OUT

With several ids in CUDA_VISIBLE_DEVICES, synthesis and filtering each run one worker per GPU. A
rerun after a crash resumes each stage where it stopped.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from adamllm.core.files import describe_os_error, hold_lock
from adamllm.core.run_folder import FILTERED_FILE, FINAL_FILE, STATS_FILE, TRIPLETS_FILE, run_lock_path
from adamllm.core.stats import read_stats, update_stats
from adamllm.engines import EngineSettings, check_engine_settings
from adamllm.executors import ExecutorArgs, check_executor_args
from adamllm.models.backbones import ProcessorOptions
from adamllm.models.model_io import check_model, check_processor
from adamllm.stage2.curate import CurationArgs
from adamllm.stage2.filter import FilterArgs, check_prompt_file, run_filter
from adamllm.stage2.format import FormatArgs, run_format
from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize

log = logging.getLogger(__name__)


def same_as(cls: type, name: str):
    """A field of `adamllm run` that is a stage's own flag: its default and help are taken from that
    stage's argument class, so they are said in one place."""
    f = next(f for f in fields(cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


@dataclass
class RunArgs(EngineSettings, ExecutorArgs, CurationArgs):
    """`adamllm run`: the engine and executor flags are those of synthesize and filter (inherited, so
    their help and checks are the same); the rest names the two models and what format does."""

    synthesizer: str = field(
        default="",
        metadata={
            "help": "Synthesizer folder or hub id, e.g. AdaptLLM/visual-instruction-synthesizer.",
            "required": True,
        },
    )
    checker: str = field(
        default="",
        metadata={
            "help": "Consistency checker (a text LLM) folder or hub id, e.g. meta-llama/Meta-Llama-3-8B.",
            "required": True,
        },
    )
    data_path: str = field(
        default="",
        metadata={
            "help": "Image-caption pairs: a JSON list (or JSONL) of {images, messages} records.",
            "required": True,
        },
    )
    image_folder: str = field(
        default="", metadata={"help": "Folder the records' image paths are relative to.", "required": True}
    )
    output_dir: str = field(
        default="",
        metadata={"help": "Where every stage writes (see README: files each stage writes).", "required": True},
    )
    max_new_tokens: int = same_as(SynthesizeArgs, "max_new_tokens")
    limit: int = same_as(SynthesizeArgs, "limit")
    max_batch_pixels: int = same_as(SynthesizeArgs, "max_batch_pixels")
    min_pixels: int = same_as(SynthesizeArgs, "min_pixels")
    max_pixels: int = same_as(SynthesizeArgs, "max_pixels")
    mode: str = same_as(FilterArgs, "mode")
    prompt_file: str = same_as(FilterArgs, "prompt_file")
    train_on_syn_only: bool = same_as(FormatArgs, "train_on_syn_only")
    style: str = same_as(FormatArgs, "style")
    seed: int = same_as(FormatArgs, "seed")

    def __post_init__(self):
        errors = [
            f"--{n} is required"
            for n in ("synthesizer", "checker", "data_path", "image_folder", "output_dir")
            if not getattr(self, n)
        ]
        # Both models are checked before any work: a wrong checker must not wait for synthesis to end.
        for flag, role in (("synthesizer", "synthesizer"), ("checker", "checker")):
            if getattr(self, flag):
                errors.append(problem := check_model(getattr(self, flag), role, f"--{flag}"))
                if role == "synthesizer" and not problem:  # its processor against its model, named as run's flag
                    options = ProcessorOptions(self.min_pixels, self.max_pixels)
                    errors.append(check_processor(self.synthesizer, "--synthesizer", options))
        if self.data_path and not Path(self.data_path).is_file():
            errors.append(f"--data_path {self.data_path}: no such file")
        if self.image_folder and not Path(self.image_folder).is_dir():
            errors.append(f"--image_folder {self.image_folder}: no such folder")
        if self.prompt_file:
            errors.append(check_prompt_file(self.prompt_file))
        if self.shard_index >= 0:
            errors.append(
                "--shard_index: run one shard per job with `adamllm synthesize` and `adamllm filter`, then `adamllm "
                "format`"
            )
        errors += check_executor_args(self) + check_engine_settings(self) + self.curation_errors()
        if self.min_yes_prob > 0 and self.mode != "logprob":
            errors.append(
                f"--min_yes_prob {self.min_yes_prob} needs the checker's log-probabilities: add --mode logprob"
            )
        errors = [e for e in errors if e]
        if errors:
            raise ValueError("; ".join(errors))

    def engine_fields(self) -> dict:
        """The engine and executor flags, as both model stages take them."""
        return {f.name: getattr(self, f.name) for f in (*fields(EngineSettings), *fields(ExecutorArgs))}


@contextmanager
def stage(name: str):
    """Errors inside name their stage (`adamllm run: filter: ...`)."""
    try:
        yield
    except (ValueError, RuntimeError) as e:
        raise type(e)(f"{name}: {e}") from e
    except OSError as e:
        raise RuntimeError(f"{name}: {describe_os_error(e)}") from e


def run_pipeline(args: RunArgs) -> dict:
    """Run the three stages; returns the contents of OUTPUT_DIR/stats.json's stage entries."""
    out = Path(args.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RuntimeError(f"--output_dir: {describe_os_error(e)}") from e
    # A second run into OUTPUT_DIR is refused at once, whichever stage the first is in.
    with hold_lock(run_lock_path(out), f"{out} (adamllm run)"):
        return _run_stages(args, out)


def _run_stages(args: RunArgs, out: Path) -> dict:
    stats = {}
    with stage("synthesize"):
        synth = SynthesizeArgs(
            model=args.synthesizer,
            data_path=args.data_path,
            image_folder=args.image_folder,
            output_dir=str(out),
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            max_batch_pixels=args.max_batch_pixels,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            **args.engine_fields(),
        )
        stats["synthesize"] = run_synthesize(synth)
    with stage("filter"):
        filt = FilterArgs(
            model=args.checker,
            data_path=str(out / TRIPLETS_FILE),
            output_dir=str(out),
            mode=args.mode,
            prompt_file=args.prompt_file,
            **args.engine_fields(),
        )
        stats["filter"] = run_filter(filt)
    with stage("format"):
        fmt = FormatArgs(
            data_path=str(out / FILTERED_FILE),
            image_folder=args.image_folder,
            output=str(out / FINAL_FILE),
            train_on_syn_only=args.train_on_syn_only,
            style=args.style,
            seed=args.seed,
            **{f.name: getattr(args, f.name) for f in fields(CurationArgs)},
        )
        run_format(fmt)  # it writes its stats.json entry, as the model stages do
    stats["format"] = {k: v for k, v in read_stats(out / STATS_FILE)["format"].items() if k != "args"}
    update_stats(out, "run", {"args": asdict(args)})
    log.info("stage 2 done: %s; counts and times in %s", out / FINAL_FILE, out / STATS_FILE)
    return stats
