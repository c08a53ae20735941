"""File formats: what each stage reads and writes, and the rejects file every stage keeps.

Files on disk are the hand-over between stages:
- stage-2 input: image-caption pairs, a JSON list (or JSONL) of LLaMA-Factory ShareGPT records
  `{"images": ["x.jpg"], "messages": [{"role": "user", ...}, {"role": "assistant", "content": caption}]}`;
- stage-2 intermediate files (JSONL): the input record plus `syn_id`, `pred`, `collected_QA`,
  `consistency` (the field names below);
- post-training output: LLaMA-Factory ShareGPT JSON with `images`, or LLaVA JSON, plus a
  `dataset_info.json` entry so LLaMA-Factory trains on it as it is;
- `*.rejects.jsonl`: every record a stage could not use, with its reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from adamllm.files import atomic_write
from adamllm.prompts import IMAGE_TAG, remove_image_tag, strip_special_tokens

# Field names the stage-2 intermediate files carry (fixed: later stages and users' tools read them).
SYN_ID = "syn_id"
PRED = "pred"
COLLECTED_QA = "collected_QA"
CONSISTENCY = "consistency"
ERROR = "error"  # {"reason", "detail"} of a record a stage could not use
IMAGE_STAT = "image_stat"  # {"size", "mtime_ns"} of the image file a synthesized record was made from

log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A record that cannot be used: `reason` is a short code counted in summaries."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- reading ---------------------------------------------------------------------------------------
def iter_json_records(path: str | os.PathLike) -> Iterator[Any]:
    """Stream the items of a JSON list file, or the lines of a JSONL file, one at a time.

    A JSON list is decoded item by item from a buffered read, so memory holds one record, not the
    file: inputs of a million pairs are the normal case. Raises ValueError naming the file and the
    offset when the file is not valid JSON, text included that follows the list.
    """
    with open(path, encoding="utf-8") as fh:
        head = _skip_space(fh)
        if head == "":
            return
        if head == "[":
            yield from _iter_json_array(fh, path)
        else:
            yield from _iter_jsonl(head + fh.readline(), fh, path)


def read_run_records(path: str | os.PathLike) -> Iterator[Any]:
    """`iter_json_records` for a run folder's own files (report, export): any damage, even a file
    that is not UTF-8, nested too deep or unreadable, is one ValueError naming the file."""
    try:
        yield from iter_json_records(path)
    except (ValueError, RecursionError, OSError) as e:
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def read_json_file(path: str | os.PathLike) -> Any:
    """A whole small JSON file (stats.json, a fingerprint); any damage is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, RecursionError, OSError) as e:
        raise ValueError(f"{path} is not readable JSON ({e})") from None


def _skip_space(fh) -> str:
    while True:
        ch = fh.read(1)
        if ch == "" or not ch.isspace():
            return ch


def _iter_jsonl(first_line: str, fh, path) -> Iterator[Any]:
    lines = [first_line]
    number = 0
    while lines:
        for line in lines:
            number += 1
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {number} is not valid JSON ({e.msg})") from None
        line = fh.readline()
        lines = [line] if line else []


def _iter_json_array(fh, path, chunk_size: int = 1 << 20) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    buf, offset, eof = "", 1, False
    while True:
        # Skip separators between items.
        i = 0
        while True:
            while i < len(buf) and (buf[i].isspace() or buf[i] == ","):
                i += 1
            if i < len(buf) or eof:
                break
            more = fh.read(chunk_size)
            eof = more == ""
            buf, offset, i = buf[i:] + more, offset + i, 0
        buf, offset = buf[i:], offset + i
        if buf.startswith("]"):
            _check_nothing_after(fh, buf[1:], offset + 1, path)
            return
        if not buf and eof:
            raise ValueError(f"{path}: the JSON list is not closed with ']'")
        try:
            item, end = decoder.raw_decode(buf)
        except json.JSONDecodeError as e:
            if eof:
                raise ValueError(f"{path}: invalid JSON near character {offset + e.pos} ({e.msg})") from None
            more = fh.read(chunk_size)
            eof = more == ""
            buf += more
            continue
        yield item
        buf, offset = buf[end:], offset + end


def _check_nothing_after(fh, rest: str, offset: int, path, chunk_size: int = 1 << 20) -> None:
    """Text after the closing ']' would be silently ignored (a second list pasted on, garbage)."""
    while True:
        stripped = rest.lstrip()
        if stripped:
            at = offset + len(rest) - len(stripped)
            raise ValueError(
                f"{path}: unexpected text after the JSON list at character {at} ({stripped[:20]!r}); "
                "a file holds one JSON list (or one JSON record per line)"
            )
        offset += len(rest)
        rest = fh.read(chunk_size)
        if not rest:
            return


def iter_input_records(path: str | os.PathLike) -> Iterator[Any]:
    """A stage's input records (`iter_json_records`), with a warning when the file holds none."""
    count = 0
    for record in iter_json_records(path):
        count += 1
        yield record
    if not count:
        log.warning("%s holds no records: nothing to do", path)


def read_jsonl(path: str | os.PathLike, digest: Any = None) -> Iterator[dict]:
    """The records of a JSONL file (stage-2 intermediate files, rejects files). With a hashlib
    `digest`, the file's bytes are fed to it as they are read: a stage hashes its output in the
    pass that counts it."""
    if digest is None:
        yield from iter_json_records(path)
        return
    with open(path, "rb") as fh:
        for line in fh:
            digest.update(line)
            if line.strip():
                yield json.loads(line)


@dataclass(frozen=True)
class CaptionPair:
    """A usable stage-2 input record: one image, the caption instruction, the caption."""

    image: str  # path relative to the image folder, as written in the record
    instruction: str  # the user turn without its image tag
    caption: str
    stripped_special_tokens: int = 0  # pieces of special-token text removed from the caption


def parse_caption_pair(record: Any) -> CaptionPair:
    """Check a stage-2 input record's schema and read it; raise RecordError saying what is wrong."""
    check_unicode(record)
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
    )


def check_unicode(record: Any) -> None:
    """Raise RecordError when a record holds text that is not valid Unicode.

    JSON lets an input spell a lone surrogate (`"\\ud800"`): Python reads it, but a tokenizer, a
    file path or a UTF-8 file cannot take it, so such a record is rejected, naming the field.
    """
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError("invalid_unicode", f"{_bad_text_field(record, 'the record')} holds a lone surrogate (invalid Unicode); fix its escapes in the input file") from None


def _bad_text_field(value: Any, where: str) -> str:
    if isinstance(value, dict):
        for key, item in value.items():
            found = _bad_text_field(key, f"{where}: a key") or _bad_text_field(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _bad_text_field(item, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
    return ""


def error_reason(record: Any) -> str:
    """The `error.reason` a stage recorded, or "" (hand-edited files may hold null or a string)."""
    error = record.get(ERROR) if isinstance(record, dict) else None
    if isinstance(error, dict) and isinstance(error.get("reason"), str):
        return error["reason"]
    return ""


# --- writing ---------------------------------------------------------------------------------------
def json_line(obj: Any, **kwargs: Any) -> str:
    """JSON text that a UTF-8 file can hold: readable Unicode, or ASCII escapes when the object holds
    a lone surrogate (a rejected record is still written whole, never lost to an encoding error)."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **kwargs)
    return text


def write_json_list(path: str | os.PathLike, records: Iterable[Any], digest: Any = None) -> int:
    """Write records as a JSON list, one per line, streaming; atomic (a temp file, then rename).
    With a hashlib `digest`, the file's bytes are fed to it as they are written.

    Returns the number of records written.
    """
    count = 0
    with atomic_write(path) as fh:

        def write(text: str) -> None:
            fh.write(text)
            if digest is not None:
                digest.update(text.encode("utf-8"))

        write("[")
        for record in records:
            write(",\n" if count else "\n")
            write(json_line(record))
            count += 1
        write("\n]\n")
    return count


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """A small JSON document (summaries, arguments), indented for people, written atomically."""
    with atomic_write(path) as fh:
        fh.write(json_line(obj, indent=2) + "\n")


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


# --- post-training output ----------------------------------------------------------------------------
STYLES = ("llamafactory", "llava")


def sharegpt_record(messages: list[dict[str, str]], image: str) -> dict:
    """LLaMA-Factory ShareGPT form, with the image (the public release forgot `images` here)."""
    return {"messages": messages, "images": [image]}


def llava_record(record_id: str, messages: list[dict[str, str]], image: str) -> dict:
    """LLaVA's own training form."""
    roles = {"user": "human", "assistant": "gpt"}
    return {
        "id": record_id,
        "image": image,
        "conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in messages],
    }


# Where LLaMA-Factory finds the messages and images of each style, and how turns are tagged.
_DATASET_COLUMNS = {
    "llamafactory": ({"messages": "messages", "images": "images"}, ("role", "content", "user", "assistant")),
    "llava": ({"messages": "conversations", "images": "image"}, ("from", "value", "human", "gpt")),
}


def dataset_info_entry(file_name: str, style: str) -> dict:
    """The LLaMA-Factory `dataset_info.json` entry that describes a file we wrote."""
    if style not in _DATASET_COLUMNS:
        raise ValueError(f"unknown output style {style!r}; choose one of {', '.join(STYLES)}")
    columns, (role, content, user, assistant) = _DATASET_COLUMNS[style]
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": columns,
        "tags": {"role_tag": role, "content_tag": content, "user_tag": user, "assistant_tag": assistant},
    }


def update_dataset_info(folder: str | os.PathLike, name: str, entry: dict) -> Path:
    """Add or replace one entry of `folder/dataset_info.json`, keeping the others."""
    path = Path(folder) / "dataset_info.json"
    info = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    info[name] = entry
    write_json(path, info)
    return path


def user_message(text: str, with_image: bool) -> dict[str, str]:
    content = f"{IMAGE_TAG}\n{text}" if with_image else text
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}
