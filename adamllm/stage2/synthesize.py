"""Stage 2a: the synthesizer writes instruction / informative answer / precise answer triplets from
each image-caption pair.

    adamllm synthesize --model AdaptLLM/visual-instruction-synthesizer \
        --data_path image_caption_pairs.json --image_folder images --output_dir OUT

Writes OUT/syn_task_triplets.jsonl: every input record plus `syn_id` (its index in the input) and
`pred` (the raw output, special tokens kept), or `pred: null` and `error: {reason, detail}` when the
record could not be used (those also go to OUT/syn_task_triplets.rejects.jsonl), and `image_stat`
(the image file's size and modification time: later stages see when it was replaced).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from adamllm.core import run_folder
from adamllm.core.files import atomic_write
from adamllm.core.images import image_size, image_stat, open_image, resolve_image_path
from adamllm.core.jsonfiles import iter_input_records, json_line, read_jsonl
from adamllm.core.records import (
    ERROR,
    IMAGE_STAT,
    PRED,
    SYN_ID,
    CaptionPair,
    RecordError,
    Rejects,
    error_reason,
    parse_caption_pair,
)
from adamllm.core.stats import PROVENANCE, provenance, update_stats
from adamllm.core.tokens import count_tokens
from adamllm.engines import EngineArgs, Generation, GenParams, Request, build_engine, check_engine_args
from adamllm.executors import ExecutorArgs, check_executor_args, run_stage
from adamllm.executors.resume import stage_fingerprint
from adamllm.executors.stage import add
from adamllm.models.backbones import ProcessorOptions
from adamllm.models.model_io import backbone_for, check_processor, image_token_count

log = logging.getLogger(__name__)

OUTPUT_FILE = run_folder.TRIPLETS_FILE


@dataclass
class SynthesizeArgs(EngineArgs, ExecutorArgs):
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
        default="", metadata={"help": "Where syn_task_triplets.jsonl, its shards and stats.json go.", "required": True}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Most tokens the synthesizer writes per record."})
    limit: int = field(
        default=0, metadata={"help": "Only the first N records (0: all). Replaces the release's --stop."}
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Load only the processor; write OUTPUT_DIR/prompts.jsonl with exactly what the model would see."
        },
    )
    max_batch_pixels: int = field(
        default=256_000_000,
        metadata={
            "help": "Most decoded image pixels held at once: a batch whose images hold more goes to the engine in "
            "parts (the model sees the same images; memory is ~3 bytes a pixel)."
        },
    )

    min_pixels: int = field(
        default=0,
        metadata={
            "help": "Qwen-VL synthesizers: fewest pixels an image is resized to (0: the processor's own; 28x28 px "
            "make one image token)."
        },
    )
    max_pixels: int = field(
        default=0,
        metadata={
            "help": "Qwen-VL synthesizers: most pixels an image is resized to (0: the processor's own, 1,003,520 "
            "in the published ones): the knob between detail and prompt tokens. Train with the same value."
        },
    )

    def __post_init__(self):
        errors = check_engine_args(self, "synthesizer") + check_executor_args(self)
        for name in ("min_pixels", "max_pixels"):
            if getattr(self, name) < 0:
                errors.append(f"--{name} {getattr(self, name)}: must be >= 0 (0: the processor's own)")
        # Before any work: a processor that expands images into a count the model does not make
        # would fail every batch of the hf engine, and misjudge which prompts fit on both.
        if self.model and not errors and (problem := check_processor(self.model, "--model", self.processor_options())):
            errors.append(problem)
        for name in ("data_path", "image_folder", "output_dir"):
            if not getattr(self, name):
                errors.append(f"--{name} is required")
        if self.data_path and not Path(self.data_path).is_file():
            errors.append(f"--data_path {self.data_path}: no such file")
        if self.image_folder and not Path(self.image_folder).is_dir():
            errors.append(f"--image_folder {self.image_folder}: no such folder")
        if self.limit < 0:
            errors.append(f"--limit {self.limit}: must be >= 0")
        if self.max_batch_pixels < 1:
            errors.append(
                f"--max_batch_pixels {self.max_batch_pixels}: must be >= 1 (an image larger than this goes to the "
                f"engine alone)"
            )
        if errors:
            raise ValueError("; ".join(errors))
        # Recorded absolute (stats.json, workers, the report): a run's own folder then names its
        # images from any working directory.
        self.image_folder = str(Path(self.image_folder).resolve())

    def processor_options(self) -> ProcessorOptions:
        return ProcessorOptions(self.min_pixels, self.max_pixels)


def input_records(args: SynthesizeArgs):
    """(syn_id, record) for the input, up to --limit."""
    for syn_id, record in enumerate(iter_input_records(args.data_path)):
        if args.limit and syn_id >= args.limit:
            return
        yield syn_id, record


def rejected(syn_id: int, record, error: RecordError) -> dict:
    base = record if isinstance(record, dict) else {"input": record}
    return {**base, SYN_ID: syn_id, PRED: None, ERROR: {"reason": error.reason, "detail": error.detail}}


class Prompter:
    """Turns an input record into the synthesizer's request, or a RecordError saying why it can't."""

    def __init__(self, processor, args: SynthesizeArgs):
        self.backbone = backbone_for(args.model)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.args = args

    def request(self, record) -> tuple[Request, CaptionPair]:
        """The request (its image still on disk: decoded just before the engine call) and the record as
        read (what was stripped from its text, the turns it holds beyond the caption)."""
        pair = parse_caption_pair(record)
        path = resolve_image_path(self.args.image_folder, pair.image)
        width, height = image_size(path)
        prompt = self.backbone.prompt(self.processor, pair.caption)
        # The prompt's length once the image token expands into the image's patches; a caption far too
        # long for --max_model_len is refused from a bounded prefix, never tokenized whole.
        count = count_tokens(self.tokenizer, prompt, self.args.max_model_len)
        text_tokens = count.n - 1
        image_tokens = image_token_count(self.processor, width, height)
        room = self.args.max_model_len - text_tokens - image_tokens
        if room < 1:
            over, caption = (
                ("", "") if count.whole else ("over ", f", and a caption of {len(pair.caption):,} characters")
            )
            raise RecordError(
                "prompt_too_long",
                f"{over}{text_tokens + image_tokens} prompt tokens ({image_tokens} for the image{caption}) leave no "
                f"room under --max_model_len {self.args.max_model_len}; shorten the caption or raise --max_model_len",
            )
        request = Request(
            prompt=prompt, max_tokens=min(room, self.args.max_new_tokens), image_path=path, pixels=width * height
        )
        return request, pair


class SynthesizeStage:
    """Stage 2a as a model stage (adamllm.executors.stage.Stage): a record with its caption in, `pred` out."""

    name = "synthesize"
    output_file = OUTPUT_FILE

    def __init__(self, args: SynthesizeArgs):
        self.args = args
        self.prompter: Prompter | None = None
        self.stripped = 0  # special-token pieces stripped from the records prepared in this worker
        self.extra_turns = 0  # message turns after the caption, which the synthesizer does not see
        self._fingerprint: dict | None = None

    def records(self):
        return input_records(self.args)

    def fingerprint(self) -> dict:
        if self._fingerprint is None:  # the input is hashed once: stats.json records it too
            self._fingerprint = stage_fingerprint(self.args)
        return self._fingerprint

    def load(self):
        options = self.args.processor_options()
        engine = build_engine(self.args, multimodal=True, options=options)
        processor = getattr(engine, "processor", None)
        if processor is None:
            from adamllm.models.model_io import load_processor

            processor = load_processor(self.args.model, options)
        self.prompter = Prompter(processor, self.args)
        # Stop at the family's end-of-text itself, not at the tokenizer's eos_token: chat-tuned bases
        # declare their turn end as EOS (<|eot_id|> in llava-hf's LLaVA-NeXT-8B, <|im_end|> in Qwen's
        # Instruct models), which would end the output after its first question.
        eos = [engine.tokenizer.convert_tokens_to_ids(self.prompter.backbone.end_of_text)]
        return engine, GenParams(max_tokens=self.args.max_new_tokens, stop_token_ids=eos)

    def prepare(self, syn_id: int, record) -> Request:
        request, pair = self.prompter.request(record)
        self.stripped += pair.stripped_special_tokens
        self.extra_turns += pair.extra_turns
        return request

    def image_path(self, record) -> Path | None:
        try:
            return resolve_image_path(self.args.image_folder, parse_caption_pair(record).image)
        except RecordError:
            return None  # rejected with its reason when its batch runs

    def finish(self, syn_id: int, record, generation: Generation) -> dict:
        return {**record, SYN_ID: syn_id, PRED: generation.text, IMAGE_STAT: image_stat(self.image_path(record))}

    def reject(self, syn_id: int, record, error: RecordError) -> dict:
        return {**rejected(syn_id, record, error), IMAGE_STAT: image_stat(self.image_path(record))}

    def changed(self, output: dict) -> bool:
        """Whether a finished record's image is no longer the file it was made from (replaced, or
        there now when it was missing): a resume redoes it."""
        if IMAGE_STAT not in output:
            return False
        recorded = output[IMAGE_STAT]
        if recorded is None:  # no usable image then: redone once its path resolves to a file
            return image_stat(self.image_path(output)) is not None
        # Its path passed every check when it was made: a stat is enough to see the file replaced (a
        # resume of millions of records cannot resolve each path again), and a redo checks it anew.
        images = output.get("images")
        path = (
            os.path.join(self.args.image_folder, images[0])
            if isinstance(images, list) and images and isinstance(images[0], str)
            else None
        )
        return image_stat(path) != recorded

    def kept(self, output: dict) -> bool:
        return output.get(PRED) is not None

    def add_costs(self, stats: dict) -> None:
        add(stats, special_tokens_stripped=self.stripped, extra_turns_dropped=self.extra_turns)
        self.stripped = self.extra_turns = 0


def dry_run(args: SynthesizeArgs) -> dict:
    """Write OUT/prompts.jsonl: the exact prompt and image of every usable record."""
    from adamllm.models.model_io import load_processor

    prompter = Prompter(load_processor(args.model, args.processor_options()), args)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects = Rejects(run_folder.rejects_path(out_dir / run_folder.PROMPTS_FILE))
    written = stripped = extra_turns = 0
    with atomic_write(out_dir / run_folder.PROMPTS_FILE) as fh:
        for syn_id, record in input_records(args):
            try:
                request, pair = prompter.request(record)
                open_image(request.image_path)  # decoded whole, as a real run would
            except RecordError as e:
                rejects.add(e.reason, e.detail, record, syn_id=syn_id)
                continue
            fh.write(json_line({SYN_ID: syn_id, "prompt": request.prompt, "images": record["images"]}) + "\n")
            written += 1
            stripped += pair.stripped_special_tokens
            extra_turns += pair.extra_turns
    rejects.close()
    return {
        "records_in": written + rejects.total,
        "records_out": written,
        "rejected": dict(rejects.counts),
        "special_tokens_stripped": stripped,
        "extra_turns_dropped": extra_turns,
    }


def tally(output: Path, digest=None) -> dict:
    """Counts of the merged output, and its rejects file: records in = with pred + rejected."""
    rejects = Rejects(run_folder.rejects_path(output))
    n_in = n_out = 0
    for record in read_jsonl(output, digest):
        n_in += 1
        if record.get(PRED) is None:
            rejects.add(error_reason(record), record[ERROR]["detail"], record, syn_id=record[SYN_ID])
        else:
            n_out += 1
    rejects.close()
    return {"records_in": n_in, "records_out": n_out, "rejected": dict(rejects.counts)}


def run_synthesize(args: SynthesizeArgs) -> dict | None:
    """Run (or resume) synthesis; the stage's stats, or None while other shards are still running."""
    if args.dry_run:
        return dry_run(args)
    stage = SynthesizeStage(args)
    costs = run_stage(stage)
    if costs is None:
        log.info("synthesize: shard done; the last shard to finish merges")
        return None
    out_dir = Path(args.output_dir)
    digest = hashlib.sha256()
    stats = {**tally(out_dir / OUTPUT_FILE, digest), **costs}
    stats[PROVENANCE] = provenance(stage.fingerprint(), out_dir / OUTPUT_FILE, digest)
    update_stats(out_dir, "synthesize", stats, args)
    return stats
