"""Stage 1a: merge the seed data (Vision-Flan precise answers, ALLaVA captions and informative
answers) into the synthesizer's training records.

    adamllm merge-seed --caption_path ALLaVA-Caption-VFLAN-4V.json --precise_qa_path metadata.json \
        --informative_qa_path ALLaVA-Instruct-VFLAN-4V.json --blank_image_path exp/blank.png \
        --split train --output exp/seed_train.json

The three files are joined on the image's base name (their paths differ by prefix). An image is kept
when it has a caption, a precise pair and an informative pair; it becomes one record whose first
round asks for the caption and whose later rounds are its precise and informative pairs, shuffled
together. Images split 90/10 into train/dev within each task; in 10% of the written records the
image is swapped for a blank one, so the synthesizer learns to lean on the caption.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adamllm.core import run_folder
from adamllm.core.files import clean_stale_tmp, hold_lock, tmp_pattern
from adamllm.core.images import check_image, ensure_blank_image, resolve_image_path
from adamllm.core.jsonfiles import iter_input_records, write_json, write_json_list
from adamllm.core.prompts import (
    CAPTION_HINT,
    IMAGE_TAG,
    informative_question,
    precise_question,
    remove_image_tag,
    strip_special_tokens,
)
from adamllm.core.records import RecordError, Rejects, check_json_values

log = logging.getLogger(__name__)

TRAIN_SHARE = 0.9  # of each task's images; the rest is dev
SOURCES = ("caption", "precise", "informative")


@dataclass
class MergeSeedArgs:
    caption_path: str = field(metadata={"help": "ALLaVA-Caption-VFLAN-4V.json: the caption of each image."})
    precise_qa_path: str = field(
        metadata={"help": "Vision-Flan metadata.json: short human-written answers, with task_name."}
    )
    informative_qa_path: str = field(
        metadata={"help": "ALLaVA-Instruct-VFLAN-4V.json: long GPT-4V answers to the same instructions."}
    )
    output: str = field(metadata={"help": "The JSON list of training records to write."})
    blank_image_path: str = field(
        default="exp/blank.png",
        metadata={"help": "The blank image; made (white, 336x336) when the file does not exist."},
    )
    replace_with_blank_image_percent: float = field(
        default=10.0, metadata={"help": "Share of written records whose image becomes the blank image."}
    )
    split: str = field(
        default="train",
        metadata={
            "help": "Which split to write: 90% of each task's images go to train, 10% to dev.",
            "choices": ["train", "dev"],
        },
    )
    image_folder: str = field(
        default="", metadata={"help": "When given, every joined image is checked to exist and decode in this folder."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the pair shuffle, the split and the blank-image choice."})

    def __post_init__(self):
        errors = [
            f"--{name} {getattr(self, name)}: no such file"
            for name in ("caption_path", "precise_qa_path", "informative_qa_path")
            if not Path(getattr(self, name)).is_file()
        ]
        if not 0 <= self.replace_with_blank_image_percent <= 100:
            errors.append(
                f"--replace_with_blank_image_percent {self.replace_with_blank_image_percent}: give a share in [0, 100]"
            )
        if self.split not in ("train", "dev"):
            errors.append(f"--split {self.split}: choose train or dev")
        if self.image_folder and not Path(self.image_folder).is_dir():
            errors.append(f"--image_folder {self.image_folder}: no such folder")
        if problem := blank_image_problem(self.blank_image_path):
            errors.append(problem)
        if errors:
            raise ValueError("; ".join(errors))


def blank_image_problem(path: str) -> str:
    """ "" when `path` is a usable blank image (or nothing yet: one is made), else what is wrong: a
    folder or a file that is no image would otherwise fail training, after the whole merge."""
    blank = Path(path)
    if not blank.exists():
        return ""
    if not blank.is_file():
        return (
            f"--blank_image_path {path}: is a folder, not an image; give an image file, or a path where none "
            f"exists to have a blank one made"
        )
    try:
        check_image(blank)
    except RecordError as e:
        return (
            f"--blank_image_path {path}: {e.detail}; give an image file, or a path where none exists to have a "
            f"blank one made"
        )
    return ""


@dataclass
class SeedImage:
    """What the three files say about one image, gathered by base name."""

    caption: str | None = None
    task_name: str | None = None
    # The path each file names it by: one file naming two different paths with this base name means
    # two different images that the join on base names would merge.
    paths: dict[str, str] = field(default_factory=dict)
    ambiguous: str = ""
    precise: list[tuple[str, str]] = field(default_factory=list)
    informative: list[tuple[str, str]] = field(default_factory=list)


def _seed_fields(record: object) -> tuple[str, str, str]:
    """(base name, human text, gpt text) of a seed record; RecordError when malformed."""
    check_json_values(record)
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
        raise RecordError("bad_schema", 'a seed record must be an object with an "image" path')
    if os.path.basename(record["image"]) in ("", ".", ".."):
        # The join and the output go by base name: "x/1.png/" has none (and no file opens as written).
        raise RecordError(
            "unsafe_image_path", f"image path {record['image']!r} names no file (it ends in '/', '.' or '..')"
        )
    conv = record.get("conversations")
    if (
        not isinstance(conv, list)
        or len(conv) < 2
        or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv[:2])
    ):
        raise RecordError("bad_schema", '"conversations" must hold a human turn and a gpt turn, each {"from", "value"}')
    return os.path.basename(record["image"]), conv[0]["value"], conv[1]["value"]


def _clean(text: str, counter: Counter) -> str:
    cleaned, removed = strip_special_tokens(text)
    counter["special_tokens_stripped"] += removed
    return cleaned.strip()


def _names_another_image(seed_image: SeedImage, source: str, image: str, name: str) -> bool:
    """Whether this usable record names its base name by another path than the file did before:
    then two images share the name, and joining on it would mix their tasks."""
    path = os.path.normpath(image)
    first = seed_image.paths.setdefault(source, path)
    if first == path:
        return False
    seed_image.ambiguous = seed_image.ambiguous or (
        f"the {source} file names two images {first!r} and {path!r} with the base name {name!r}"
    )
    return True


def read_seed(args: MergeSeedArgs, rejects: Rejects, counts: Counter) -> dict[str, SeedImage]:
    """Gather the three files by image base name; malformed records go to the rejects file."""
    images: dict[str, SeedImage] = {}
    paths = {"caption": args.caption_path, "precise": args.precise_qa_path, "informative": args.informative_qa_path}
    for source, path in paths.items():
        for index, record in enumerate(iter_input_records(path)):
            counts[f"{source}_records"] += 1
            try:
                name, human, gpt = _seed_fields(record)
                seed_image = images.get(name) or SeedImage()
                if source == "caption":
                    # Published copies differ: some carry the caption under "caption", some only as the gpt turn.
                    caption = record.get("caption") if isinstance(record.get("caption"), str) else gpt
                    caption = _clean(caption, counts)
                    if not caption:
                        raise RecordError("no_caption", "the caption is empty")
                    # A caption of another image with the same name is no duplicate: both images are dropped.
                    if not _names_another_image(seed_image, source, record["image"], name):
                        if seed_image.caption is not None:
                            raise RecordError(
                                "duplicate_caption", f"a second caption for image {name}; the first is kept"
                            )
                        seed_image.caption = caption
                else:
                    question, answer = _clean(remove_image_tag(human), counts), _clean(gpt, counts)
                    if not question or not answer:
                        raise RecordError("empty_pair", "the question or the answer is empty")
                    if source == "precise":
                        task = record.get("task_name")
                        if not isinstance(task, str) or not task:
                            raise RecordError("bad_schema", 'a precise (Vision-Flan) record must carry "task_name"')
                        seed_image.task_name = seed_image.task_name or task
                        seed_image.precise.append((question, answer))
                    else:
                        seed_image.informative.append((question, answer))
                    _names_another_image(seed_image, source, record["image"], name)
                images[name] = seed_image
            except RecordError as e:
                rejects.add(e.reason, e.detail, record, source=source, file=str(path), index=index)
    return images


def drop_reason(seed_image: SeedImage) -> str:
    if seed_image.ambiguous:
        return "ambiguous_image_name"
    if seed_image.caption is None:
        return "no_caption"
    if not seed_image.precise:
        return "no_precise_pairs"
    if not seed_image.informative:
        return "no_informative_pairs"
    return ""


def image_problems(image_folder: str, names: list[str]) -> dict[str, RecordError]:
    """The images among `names` that cannot be used, decoded whole on every core.

    Vision-Flan holds ~190K images: decoded one after another that is half an hour, while PIL's
    decoders release the GIL, so threads divide the time by the cores.
    """

    def problem(name: str) -> RecordError | None:
        try:
            check_image(resolve_image_path(image_folder, name))
        except RecordError as e:
            return e
        return None

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        return {name: e for name, e in zip(names, pool.map(problem, names)) if e is not None}


def split_by_task(names_by_task: dict[str, list[str]], seed: int) -> dict[str, str]:
    """Each image's split: within each task, a seeded floor(0.9 n) to train, the rest to dev.

    The floor is the release's (`int(0.9 * n)`): a task of 41 images puts 36 in train, 5 in dev.
    """
    split = {}
    for task in sorted(names_by_task):
        names = sorted(names_by_task[task])
        random.Random(f"adamllm-split:{seed}:{task}").shuffle(names)
        n_train = int(TRAIN_SHARE * len(names))
        split.update({n: "train" for n in names[:n_train]})
        split.update({n: "dev" for n in names[n_train:]})
    return split


def training_record(name: str, seed_image: SeedImage, image: str, seed: int) -> dict:
    """One training record: the caption round, then every pair with its hint, shuffled (seeded)."""
    pairs = [(precise_question(q), a) for q, a in seed_image.precise]
    pairs += [(informative_question(q), a) for q, a in seed_image.informative]
    random.Random(f"adamllm-pairs:{seed}:{name}").shuffle(pairs)
    conversations = [
        {"from": "human", "value": f"{IMAGE_TAG}\n{CAPTION_HINT}"},
        {"from": "gpt", "value": seed_image.caption},
    ]
    for question, answer in pairs:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"image": image, "task_name": seed_image.task_name, "conversations": conversations}


def run_merge_seed(args: MergeSeedArgs) -> dict:
    """Write the merged split, its rejects and its summary; return the summary. One run at a time
    per output (a second is refused, naming the first)."""
    with hold_lock(run_folder.output_lock_path(args.output), args.output):
        return _merge_seed(args)


def _merge_seed(args: MergeSeedArgs) -> dict:
    output = Path(args.output)
    clean_stale_tmp(
        output.parent, (tmp_pattern(output), tmp_pattern(run_folder.summary_path(output)))
    )  # a killed run's
    rejects = Rejects(run_folder.rejects_path(output))
    counts: Counter = Counter()
    images = read_seed(args, rejects, counts)
    record_rejects = dict(rejects.counts)

    joined: dict[str, list[str]] = defaultdict(list)
    dropped: Counter = Counter()
    names = sorted(images)
    reasons = {name: drop_reason(images[name]) for name in names}
    unreadable = image_problems(args.image_folder, [n for n in names if not reasons[n]]) if args.image_folder else {}
    for name in names:
        seed_image = images[name]
        problem = unreadable.get(name)
        reason = reasons[name] or (problem.reason if problem else "")
        if reason:
            dropped[reason] += 1
            detail = seed_image.ambiguous or (problem.detail if problem else f"image {name} is not used")
            rejects.add(reason, detail, None, source="merge", image=name, task_name=seed_image.task_name)
        else:
            joined[seed_image.task_name].append(name)

    split = split_by_task(joined, args.seed)
    chosen = sorted(n for n, s in split.items() if s == args.split)
    n_blank = round(len(chosen) * args.replace_with_blank_image_percent / 100)
    blank = set(random.Random(f"adamllm-blank:{args.seed}:{args.split}").sample(chosen, n_blank))
    # Absolute, so training finds it from any working directory.
    blank_path = (
        str(ensure_blank_image(args.blank_image_path).resolve())
        if blank
        else str(Path(args.blank_image_path).resolve())
    )

    records = (training_record(n, images[n], blank_path if n in blank else n, args.seed) for n in chosen)
    written = write_json_list(output, records)
    rejects.close()

    per_task = {
        task: {
            "joined": len(names),
            "train": sum(split[n] == "train" for n in names),
            "dev": sum(split[n] == "dev" for n in names),
            "blank": sum(n in blank for n in names),
        }
        for task, names in sorted(joined.items())
    }
    summary = {
        "output": str(output),
        "split": args.split,
        "records_read": {s: counts[f"{s}_records"] for s in SOURCES},
        "records_rejected": record_rejects,
        "images_seen": len(images),
        "images_joined": sum(len(v) for v in joined.values()),
        "images_dropped": dict(dropped),
        "records_written": written,
        "images_in_other_split": len(split) - written,
        "blank_images": len(blank),
        "blank_image_path": blank_path,
        "special_tokens_stripped": counts["special_tokens_stripped"],
        "rejects_file": str(rejects.path) if rejects.total else "",
        "per_task": per_task,
        "args": asdict(args),
    }
    write_json(run_folder.summary_path(output), summary)
    log.info(
        "merge-seed: %d images seen, %d joined, %d dropped %s; wrote %d %s records (%d blank) to %s",
        summary["images_seen"],
        summary["images_joined"],
        sum(dropped.values()),
        dict(dropped),
        written,
        args.split,
        len(blank),
        output,
    )
    return summary
