"""Records as the stages hand them on: the field names of the stage-2 intermediate files, a record
that cannot be used (`RecordError`) and the rejects file that keeps it, and the checks every record
passes where it enters (its syn_id, its JSON values, a stage-2 input's schema).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adamllm.core.jsonfiles import json_line
from adamllm.core.prompts import remove_image_tag, strip_special_tokens

# Field names the stage-2 intermediate files carry (fixed: later stages and users' tools read them).
SYN_ID = "syn_id"
PRED = "pred"
COLLECTED_QA = "collected_QA"
CONSISTENCY = "consistency"
LOGPROBS = "consistency_logprobs"  # {"yes", "no", "open": log-probability} that `adamllm filter --mode logprob` writes
ERROR = "error"  # {"reason", "detail"} of a record a stage could not use
# The largest syn_id: the export's int64 column (and most readers outside Python) hold no more.
MAX_SYN_ID = 2**63 - 1
IMAGE_STAT = "image_stat"  # {"size", "mtime_ns"} of the image file a synthesized record was made from


class RecordError(ValueError):
    """A record that cannot be used: `reason` is a short code counted in summaries."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def syn_id_problem(value: Any) -> str:
    """ "" when `value` is a usable syn_id (an integer in 0..2**63 - 1), else what is wrong with it.
    JSON gives bools, floats (`3.0`) and integers of any size; none of those may pass as a number."""
    if isinstance(value, bool) or not isinstance(value, int):
        return (
            f"syn_id {value!r} is {'a ' + type(value).__name__ if value is not None else 'missing'}, not an "
            f"integer record number"
        )
    if value < 0:
        return f"syn_id {value} is negative; record numbers count from 0"
    if value > MAX_SYN_ID:
        return f"syn_id {value} is over 2**63 - 1, the largest record number an int64 column (the export's) holds"
    return ""


@dataclass(frozen=True)
class CaptionPair:
    """A usable stage-2 input record: one image, the caption instruction, the caption."""

    image: str  # path relative to the image folder, as written in the record
    instruction: str  # the user turn without its image tag
    caption: str
    stripped_special_tokens: int = 0  # pieces of special-token text removed from the caption
    extra_turns: int = 0  # message turns after the caption, which no stage uses


def parse_caption_pair(record: Any) -> CaptionPair:
    """Check a stage-2 input record's schema and read it; raise RecordError saying what is wrong."""
    check_json_values(record)
    if not isinstance(record, dict):
        raise RecordError("bad_schema", f"a record must be a JSON object, got {type(record).__name__}")
    images = record.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(x, str) and x for x in images):
        raise RecordError("bad_schema", '"images" must be a list holding one image path')
    if len(images) != 1:
        raise RecordError("multiple_images", f"the synthesizer takes one image per record, this one has {len(images)}")
    messages = record.get("messages")
    if (
        not isinstance(messages, list)
        or len(messages) < 2
        or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages[:2])
        or messages[0].get("role") != "user"
        or messages[1].get("role") != "assistant"
    ):
        raise RecordError(
            "bad_schema",
            '"messages" must start with a user turn and an assistant turn holding the caption, '
            'each {"role": ..., "content": "..."}',
        )
    caption, stripped = strip_special_tokens(messages[1]["content"])
    caption = caption.strip()
    if not caption:
        raise RecordError("no_caption", "the assistant turn (the caption) is empty")
    instruction, stripped_instruction = strip_special_tokens(messages[0]["content"], image_tokens=())
    return CaptionPair(
        image=images[0],
        instruction=remove_image_tag(instruction),
        caption=caption,
        stripped_special_tokens=stripped + stripped_instruction,
        extra_turns=len(messages) - 2,
    )


def check_json_values(record: Any) -> None:
    """Raise RecordError when a record holds a value that strict JSON, a tokenizer or a UTF-8 file
    cannot take, naming the field.

    JSON lets an input spell a lone surrogate (`"\\ud800"`), and Python's reader takes `NaN` and
    `Infinity`, which no strict JSON parser reads back: copied into our outputs, either would break
    the next reader, so such a record is rejected.
    """
    try:
        json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(
            "invalid_unicode",
            f"{_bad_field(record, 'the record', _lone_surrogate)} holds a lone surrogate (invalid Unicode); fix its "
            f"escapes in the input file",
        ) from None
    except ValueError:
        where = _bad_field(record, "the record", _not_finite)
        raise RecordError(
            "non_finite_number", f"{where} holds NaN or Infinity, which strict JSON cannot hold; write a number or null"
        ) from None


def _lone_surrogate(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _bad_field(value: Any, where: str, bad) -> str:
    """Where in `value` the first item that `bad` finds lies ("" when none)."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _bad_field(key, f"{where}: a key", bad) or _bad_field(item, f"{where}.{key}", bad)
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_field(item, f"{where}[{i}]", bad)
            if found:
                return found
    elif bad(value):
        return where
    return ""


def error_reason(record: Any) -> str:
    """The `error.reason` a stage recorded, or "" (hand-edited files may hold null or a string)."""
    error = record.get(ERROR) if isinstance(record, dict) else None
    if isinstance(error, dict) and isinstance(error.get("reason"), str):
        return error["reason"]
    return ""


@dataclass
class Rejects:
    """The rejects file of a stage: each unusable record with its reason, counted by reason.

    Opened lazily, so a stage that rejects nothing leaves no empty file behind.
    """

    path: Path
    counts: Counter = field(default_factory=Counter)
    _fh: Any = None

    def add(self, reason: str, detail: str, record: Any = None, **where: Any) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")
        row = {**where, "reason": reason, "detail": detail, "record": record}
        self._fh.write(json_line(row) + "\n")
        self.counts[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
