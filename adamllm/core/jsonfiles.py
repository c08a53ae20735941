"""Reading and writing JSON and JSONL files: streamed record readers for inputs of any size, one
reader for small documents, and writers that always leave a whole file that strict parsers read.

Every JSON file a user or a run folder gives is read here, so that any damage is one ValueError
naming the file, the place (line, character or byte offset) and the fix, never a decoder's bare words.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from adamllm.core.files import atomic_write

log = logging.getLogger(__name__)


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


TOO_DEEP = (
    "lists or objects nested too deep to decode (about a thousand levels or more); no record of ours nests "
    "more than a few"
)


def not_utf8(path: str | os.PathLike) -> str:
    """What is wrong with a file that is not UTF-8: its UTF-16/32 byte-order mark, or the byte
    offset (and line) of its first byte that is not UTF-8, and the fix."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    for bom, name in (
        (codecs.BOM_UTF32_LE, "UTF-32"),
        (codecs.BOM_UTF32_BE, "UTF-32"),
        (codecs.BOM_UTF16_LE, "UTF-16"),
        (codecs.BOM_UTF16_BE, "UTF-16"),
    ):
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
            return (
                f"{path}: the file ends inside a UTF-8 character (byte offset {offset}); it is truncated or not "
                f"UTF-8: save it as UTF-8"
            )
    return f"{path} is not UTF-8; save it as UTF-8"


def _json_type(value: Any) -> str:
    names = {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
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
    if isinstance(value, float) and not math.isfinite(value):
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
