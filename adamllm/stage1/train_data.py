"""Stage-1 training data: merged seed records rendered, tokenized and labelled for the synthesizer.

A record renders as its backbone family's conversation (`Backbone.training_text`: for LLaVA-NeXT the
Llama-3 LLaVA one, the data's `<image>` becoming the processor's image token), then the family's
end-of-text. The loss skips the first round and the header that opens the second user turn, exactly
the tokens of the stage-2 inference prompt, and trains every later token: the hints and questions the
synthesizer must learn to write, the answers, the turn marks between them and the final end-of-text.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from adamllm.core.images import check_image, image_size, open_image, resolve_image_path
from adamllm.core.jsonfiles import iter_json_records
from adamllm.core.prompts import ASSISTANT, CAPTION_HINT, IMAGE_TAG, USER, Turn
from adamllm.core.records import RecordError, Rejects, check_json_values
from adamllm.core.tokens import count_tokens, text_char_cap
from adamllm.models.backbones import BACKBONES, DEFAULT_FAMILY, Backbone
from adamllm.models.model_io import image_token_count

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CAPTION_REQUEST = f"{IMAGE_TAG}\n{CAPTION_HINT}"
ROLES = {"human": USER, "gpt": ASSISTANT}


@dataclass(frozen=True)
class Example:
    """What the dataset keeps per record: text and where the image is; pixels are read per draw."""

    text: str
    prompt: str  # the stage-2 inference prompt of the same record
    head: int  # its tokens, image expanded: the masked head of the sequence
    image: Path
    blank: bool
    length: int  # tokens once the image token is expanded


def conversation_turns(record: dict) -> list[Turn]:
    """The turns of a merge-seed training record (caption round first); RecordError when malformed."""
    conv = record.get("conversations")
    if (
        not isinstance(conv, list)
        or len(conv) < 4
        or not all(isinstance(t, dict) and t.get("from") in ROLES and isinstance(t.get("value"), str) for t in conv)
    ):
        raise RecordError(
            "bad_schema",
            'a training record needs "conversations": a caption round and at least one pair, each {"from": '
            '"human"|"gpt", "value"}',
        )
    turns = [Turn(ROLES[t["from"]], t["value"]) for t in conv]
    if [t.role for t in turns] != [USER, ASSISTANT] * (len(turns) // 2) or len(turns) % 2:
        raise RecordError("bad_schema", "turns must alternate human, gpt, starting with human")
    if turns[0].text != CAPTION_REQUEST:
        # The masked head is the stage-2 prompt, which asks for the caption in exactly these words.
        raise RecordError("bad_schema", f"the first human turn must be {CAPTION_REQUEST!r} (as merge-seed writes it)")
    return turns


class SeedDataset(torch.utils.data.Dataset):
    """Training records of `adamllm merge-seed`, tokenized lazily: each image is opened when drawn.

    The constructor reads every record's text and image to know each sequence's length: for grouping
    by length, and to count, before training starts, the records that will be truncated or cannot be
    used (written to `rejects_path` with the reason). Each image is decoded whole, so a truncated file
    is a reject now rather than a crash mid-training; `images_checked` (the merge of this very run
    decoded them all) reads only their headers.
    """

    def __init__(
        self,
        data_path: str,
        processor,
        image_folder: str,
        blank_image_path: str,
        model_max_length: int,
        rejects_path: Path,
        images_checked: bool = False,
        backbone: Backbone = BACKBONES[DEFAULT_FAMILY],
    ):
        self.processor = processor
        self.backbone = backbone
        self.tokenizer = processor.tokenizer
        self.max_length = model_max_length
        blank = os.path.abspath(blank_image_path) if blank_image_path else ""
        rejects = Rejects(Path(rejects_path))
        self.examples: list[Example] = []
        self.counts: Counter = Counter()
        for index, record in enumerate(iter_json_records(data_path)):
            self.counts["records_in"] += 1
            try:
                check_json_values(record)
                if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                    raise RecordError("bad_schema", 'a training record needs an "image" path')
                turns = conversation_turns(record)
                is_blank = os.path.isabs(record["image"]) or os.sep in record["image"]
                if is_blank and os.path.abspath(record["image"]) != blank:
                    raise RecordError(
                        "unsafe_image_path",
                        f"{record['image']} is neither a base name in the image folder nor --blank_image_path",
                    )
                path = Path(blank) if is_blank else resolve_image_path(image_folder, record["image"])
                width, height = image_size(path) if images_checked else check_image(path)
                image_tokens = image_token_count(processor, width, height)
                prompt = backbone.prompt(processor, turns[1].text)
                # Counted with bounded work (adamllm.core.tokens): a huge caption is refused from a prefix.
                head = count_tokens(self.tokenizer, prompt, model_max_length).n - 1 + image_tokens
                if head >= model_max_length:
                    raise RecordError(
                        "prompt_too_long",
                        f"the image and caption ({len(turns[1].text):,} characters) alone exceed --model_max_length "
                        f"{model_max_length}",
                    )
                text = backbone.training_text(processor, turns)
                count = count_tokens(self.tokenizer, text, model_max_length)
                length = count.n - 1 + image_tokens
                if not count.whole:
                    # Trained on its first model_max_length tokens only, which lie in this prefix: each draw
                    # then tokenizes the prefix, not megabytes.
                    text = text[: text_char_cap(self.tokenizer, model_max_length)]
            except RecordError as e:
                rejects.add(e.reason, e.detail, record, index=index)
                continue
            self.counts["truncated"] += length > model_max_length
            self.counts["blank_images"] += is_blank
            self.examples.append(Example(text, prompt, head, path, is_blank, min(length, model_max_length)))
        rejects.close()
        self.counts["records_used"] = len(self.examples)
        self.counts.update({f"rejected_{k}": v for k, v in rejects.counts.items()})
        self.rejects_path = rejects.path if rejects.total else None
        if self.counts["truncated"]:
            log.warning(
                "%d of %d sequences exceed --model_max_length %d and will be truncated",
                self.counts["truncated"],
                len(self.examples),
                model_max_length,
            )

    @property
    def lengths(self) -> list[int]:
        return [e.length for e in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        example = self.examples[i]
        image = open_image(example.image)
        enc = self.processor(images=image, text=example.text, return_tensors="pt")
        input_ids = enc["input_ids"][0]
        labels = input_ids.clone()
        labels[: example.head] = IGNORE_INDEX
        return {
            "input_ids": input_ids[: self.max_length],
            "labels": labels[: self.max_length],
            **{key: enc[key][0][: self.max_length] for key in self.backbone.token_keys},
            **self.backbone.image_inputs(enc),
        }


@dataclass
class Collator:
    """Pads text to the longest sequence; the images go as the backbone family batches them
    (LLaVA-NeXT: padded to the most tiles of the batch; Qwen-VL: all patches in one tensor).

    `padding_free`: the samples' tokens in one row instead, with position ids restarting at each
    sample and no attention mask, from which transformers' attention keeps the samples apart
    (speed.PACKING_ATTENTION). Images stay one per sample, in order: LLaVA-NeXT scatters their
    features into the image tokens in reading order, which packing keeps.
    """

    pad_token_id: int
    padding_free: bool = False
    backbone: Backbone = BACKBONES[DEFAULT_FAMILY]

    def __call__(self, items: list[dict]) -> dict:
        images = self.backbone.collate_images(items)
        return {**(self._packed(items) if self.padding_free else self._padded(items)), **images}

    def _padded(self, items: list[dict]) -> dict:
        n = max(len(x["input_ids"]) for x in items)
        input_ids = torch.full((len(items), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), n), dtype=torch.long)
        tokens = {key: torch.zeros((len(items), n), dtype=torch.long) for key in self.backbone.token_keys}
        for row, x in enumerate(items):
            k = len(x["input_ids"])
            input_ids[row, :k] = x["input_ids"]
            labels[row, :k] = x["labels"]
            attention_mask[row, :k] = 1
            for key, tensor in tokens.items():
                tensor[row, :k] = x[key]
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, **tokens}

    @staticmethod
    def _packed(items: list[dict]) -> dict:
        labels = [x["labels"].clone() for x in items]
        for sample in labels:
            # Never learn a sample's first token from the previous sample's last (it is masked anyway:
            # the BOS opens the untrained prompt).
            sample[0] = IGNORE_INDEX
        return {
            "input_ids": torch.cat([x["input_ids"] for x in items])[None],
            "labels": torch.cat(labels)[None],
            "position_ids": torch.cat([torch.arange(len(x["input_ids"])) for x in items])[None],
        }
