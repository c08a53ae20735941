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

import codecs
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from adamllm.files import atomic_write
from adamllm.run_folder import DATASET_INFO_FILE
from adamllm.prompts import IMAGE_TAG, remove_image_tag, strip_special_tokens

# Field names the stage-2 intermediate files carry (fixed: later stages and users' tools read them).
SYN_ID = "syn_id"
PRED = "pred"
COLLECTED_QA = "collected_QA"
CONSISTENCY = "consistency"
ERROR = "error"  # {"reason", "detail"} of a record a stage could not use
# The largest syn_id: the export's int64 column (and most readers outside Python) hold no more.
MAX_SYN_ID = 2**63 - 1
IMAGE_STAT = "image_stat"  # {"size", "mtime_ns"} of the image file a synthesized record was made from

log = logging.getLogger(__name__)


class RecordError(ValueError):
    """A record that cannot be used: `reason` is a short code counted in summaries."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def syn_id_problem(value: Any) -> str:
    """"" when `value` is a usable syn_id (an integer in 0..2**63 - 1), else what is wrong with it.
    JSON gives bools, floats (`3.0`) and integers of any size; none of those may pass as a number."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"syn_id {value!r} is {'a ' + type(value).__name__ if value is not None else 'missing'}, not an integer record number"
    if value < 0:
        return f"syn_id {value} is negative; record numbers count from 0"
    if value > MAX_SYN_ID:
        return f"syn_id {value} is over 2**63 - 1, the largest record number an int64 column (the export's) holds"
    return ""


# --- reading ---------------------------------------------------------------------------------------
# Every JSON file a user or a run folder gives is read here, so that any damage is one ValueError
# naming the file, the place (line, character or byte offset) and the fix, never a decoder's bare words.
def iter_json_records(path: str | os.PathLike) -> Iterator[Any]:
    """Stream the items of a JSON list file, or the lines of a JSONL file, one at a time.

    A JSON list is decoded item by item from a buffered read, so memory holds one record, not the
    file: inputs of a million pairs are the normal case. Raises ValueError naming the file and the
    place when the file is not UTF-8, not valid JSON (text after the list included), or nested too
    deep to decode.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            head = _skip_space(fh)
            if head == "":
                return
            if head == "[":
                yield from iter_json_array(fh, path)
            else:
                yield from _iter_jsonl(head + fh.readline(), fh, path)
    except UnicodeDecodeError:
        raise ValueError(not_utf8(path)) from None


def read_run_records(path: str | os.PathLike) -> Iterator[Any]:
    """`iter_json_records` for a run folder's own files (report, export): an unreadable file, too,
    is one ValueError naming it."""
    try:
        yield from iter_json_records(path)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None


def read_json_file(path: str | os.PathLike, expect: type | None = None, what: str = "", fix: str = "") -> Any:
    """A whole small JSON file (stats.json, dataset_info.json, a config.json, a summary, a
    fingerprint). Any damage is a ValueError naming the file, the place and `fix`; with `expect`, a
    document of another type is damage too (`what` says what the file holds, "a JSON object of ...")."""
    path = Path(path)
    fix = f"; {fix}" if fix else ""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(not_utf8(path) + fix) from None
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}{fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}){fix}") from None
    except RecursionError:
        raise ValueError(f"{path}: {TOO_DEEP}{fix}") from None
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{path} holds a JSON {_json_type(data)}, not {what or 'a JSON ' + _json_type(expect())}{fix}")
    return data


TOO_DEEP = "lists or objects nested too deep to decode (about a thousand levels or more); no record of ours nests more than a few"


def not_utf8(path: str | os.PathLike) -> str:
    """What is wrong with a file that is not UTF-8: its UTF-16/32 byte-order mark, or the byte
    offset (and line) of its first byte that is not UTF-8, and the fix."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            return f"{path} is {name} text (it starts with a {name} byte-order mark); save it as UTF-8"
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                data = pending + chunk
                at = offset - len(pending) + e.start
                lines += data[: e.start].count(b"\n")
                return (
                    f"{path}: byte 0x{data[e.start]:02x} at byte offset {at} (line {lines}) is not UTF-8; "
                    "the file is in another encoding (Latin-1, Windows-1252, ...): save it as UTF-8"
                )
            offset += len(chunk)
            lines += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return f"{path}: the file ends inside a UTF-8 character (byte offset {offset}); it is truncated or not UTF-8: save it as UTF-8"
    return f"{path} is not UTF-8; save it as UTF-8"


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


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
                except RecursionError:
                    raise ValueError(f"{path}: line {number}: {TOO_DEEP}; repair or remove that line") from None
        line = fh.readline()
        lines = [line] if line else []


def iter_json_array(fh, path, chunk_size: int = 1 << 20) -> Iterator[Any]:
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
        except RecursionError:
            raise ValueError(f"{path}: the record at character {offset}: {TOO_DEEP}; repair or remove it") from None
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
        raise RecordError("invalid_unicode", f"{_bad_field(record, 'the record', _lone_surrogate)} holds a lone surrogate (invalid Unicode); fix its escapes in the input file") from None
    except ValueError:
        where = _bad_field(record, "the record", _not_finite)
        raise RecordError("non_finite_number", f"{where} holds NaN or Infinity, which strict JSON cannot hold; write a number or null") from None


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


# --- writing ---------------------------------------------------------------------------------------
def json_line(obj: Any, **kwargs: Any) -> str:
    """JSON text that a UTF-8 file can hold and any strict parser reads: readable Unicode, or ASCII
    escapes when the object holds a lone surrogate; a NaN or Infinity becomes the text "NaN",
    "Infinity", "-Infinity" (a rejected record is still written whole, never lost to either)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, **kwargs)
    except ValueError:
        obj = _finite(obj)
        text = json.dumps(obj, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **kwargs)
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if _not_finite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


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


def update_dataset_info(folder: str | os.PathLike, name: str, entry: dict, into: Path | None = None) -> Path:
    """Add or replace one entry of `folder/dataset_info.json`, keeping the others; written to `into`
    when given (a temp file that replaces it together with the output)."""
    path = Path(folder) / DATASET_INFO_FILE
    info = read_dataset_info(path)
    info[name] = entry
    write_json(into or path, info)
    return path


def read_dataset_info(path: Path) -> dict:
    """A `dataset_info.json` ({} when there is none yet); damage is a ValueError naming the fix."""
    if not path.exists():
        return {}
    return read_json_file(
        path, dict, "a JSON object of LLaMA-Factory dataset entries",
        "repair it, or move it away and rerun: `adamllm format` writes a new one holding this dataset's entry",
    )


def user_message(text: str, with_image: bool) -> dict[str, str]:
    content = f"{IMAGE_TAG}\n{text}" if with_image else text
    return {"role": "user", "content": content}


def assistant_message(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}
