"""Images: resolving a record's path safely inside the image folder, opening it defensively, and
the blank image of stage 1."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adamllm.core.records import IMAGE_STAT, RecordError

# Decompression-bomb cap: a 16-bit PNG of a few KB can claim 50,000 x 50,000 pixels. The largest
# anyres grid of LLaVA-NeXT is 672 x 672 per tile; 64 Mpx leaves ample room for real photos and scans.
MAX_IMAGE_PIXELS = 64_000_000

BLANK_IMAGE_SIZE = (336, 336)


def trusted_image_folder(folder: str, source: str) -> Path:
    """`folder` resolved, for a tool that reads images a run folder names (report, export): a
    filesystem root is refused, since any image on the disk would then pass `resolve_image_path`.
    `source` says where the folder came from, for the error."""
    if "\x00" in folder:
        raise ValueError(f"image folder {folder!r} ({source}) holds a NUL byte")
    resolved = Path(folder).resolve()
    if resolved.parent == resolved:
        raise ValueError(
            f"image folder {folder} ({source}) is a filesystem root, which would let any image on the disk in; "
            "pass the run's own image folder with --image_folder"
        )
    return resolved


def resolve_image_path(image_folder: str | os.PathLike, relative: str) -> Path:
    """The file a record's image path names, proven to lie inside `image_folder`.

    Rejects absolute paths, `..` components and symlinks that lead out of the folder, so a data file
    cannot make the pipeline read (and copy into training data) arbitrary files.
    """
    if not relative or "\x00" in relative:
        raise RecordError("unsafe_image_path", f"image path {relative!r} is empty or holds a NUL byte")
    if os.path.isabs(relative) or relative.startswith("~"):
        raise RecordError(
            "unsafe_image_path", f"image path {relative!r} is absolute; give it relative to the image folder"
        )
    if ".." in Path(relative).parts:
        raise RecordError("unsafe_image_path", f"image path {relative!r} climbs out of the image folder with '..'")
    try:
        folder = Path(image_folder).resolve()
        target = (folder / relative).resolve()
        if not target.is_relative_to(folder):
            raise RecordError(
                "unsafe_image_path", f"image path {relative!r} is a symlink that leads out of the image folder"
            )
        if not target.is_file():
            raise RecordError("image_missing", f"no image file {relative!r} in {image_folder}")
        # Path() drops a trailing "/" or "/.", the OS does not: later stages hand the path on as written
        # (format's llava `image`, export's `image_path`), where open() would refuse it.
        if not os.path.isfile(os.path.join(folder, relative)):
            raise RecordError(
                "unsafe_image_path",
                f"image path {relative!r} ends as a folder would ('/' or '/.'); write the file's path, e.g. "
                f"{str(Path(relative))!r}",
            )
    except (OSError, RuntimeError) as e:  # a name too long; a symlink loop (RuntimeError before Python 3.13)
        detail = getattr(e, "strerror", None) or "a symlink loop"
        raise RecordError("unsafe_image_path", f"image path {relative[:200]!r} cannot be resolved ({detail})") from None
    return target


def image_stat(path: str | os.PathLike | None) -> dict | None:
    """The image file a record's output is made from, as a later stage checks it cheaply: its size
    and modification time (None: no such file)."""
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        st = None
    return None if st is None else {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def check_image_unchanged(record: Any, path: str | os.PathLike) -> None:
    """RecordError `image_changed` when `path` is no longer the image the record's task was
    synthesized from (the `image_stat` synthesis recorded); records without one are not checked."""
    recorded = record.get(IMAGE_STAT) if isinstance(record, dict) else None
    if not isinstance(recorded, dict):
        return
    now = image_stat(path)
    if now != recorded:
        raise RecordError(
            "image_changed",
            f"{path} is not the image this record's task was written about (synthesis saw {recorded}, now {now}): "
            "rerun synthesize into the run folder (it redoes records whose image changed), then filter --overwrite and "
            "format",
        )


def open_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image as RGB; raise RecordError on a corrupt or oversized file.

    The pixel count is checked from the header, before any pixel is decoded.
    """
    try:
        image = _read(path, max_pixels, lambda im: (im.load(), _to_rgb(im, path))[1])
    except RecordError as e:
        _remember(path, max_pixels, e)
        raise
    _remember(path, max_pixels, image.size)
    return image


def check_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Check that a file decodes whole as an image within the pixel cap; its (width, height).

    For stages that only hand the path on (merging, formatting, the training set's admission). Every
    pixel is decoded, because a header can be intact while the data is cut short (a truncated JPEG
    passes `verify()`, then fails the trainer or the post-training user). Each file is decoded once
    per process: the verdict is kept by path, size and modification time.
    """
    return _check(path, max_pixels, None)


def read_image_bytes(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> bytes:
    """A file's bytes, checked as `check_image` checks it, from those bytes: a file handed on whole
    (`adamllm export`) is read from disk once."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RecordError("image_unreadable", f"{path}: {e.strerror or e}") from None
    _check(path, max_pixels, data)
    return data


def _check(path, max_pixels: int, data: bytes | None) -> tuple[int, int]:
    key = _key(path, max_pixels)
    known = _DECODED.get(key) if key else None
    if known is None:
        try:
            known = _read(path, max_pixels, lambda im: (im.load(), _wide_values(im, path), im.size)[2], data)
        except RecordError as e:
            known = e
        _remember(path, max_pixels, known)
    if isinstance(known, RecordError):
        raise RecordError(known.reason, known.detail)
    return known


def image_size(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """An image's (width, height) from its header alone, within the pixel cap: to plan work before
    decoding (which `open_image` or `check_image` then does). A file this process already decoded
    whole is not opened again: its size (or why it failed) is known."""
    key = _key(path, max_pixels)
    known = _DECODED.get(key) if key else None
    if isinstance(known, RecordError):
        raise RecordError(known.reason, known.detail)
    return known or _read(path, max_pixels, lambda im: im.size)


# Verdicts of full decodes: (path, size, mtime, cap) -> (width, height) or the RecordError.
_DECODED: dict[tuple, tuple[int, int] | RecordError] = {}
_DECODED_MAX = 1 << 20


def _key(path, max_pixels: int) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # nothing to remember: the read itself reports the error
    return (str(path), st.st_size, st.st_mtime_ns, max_pixels)


def _remember(path, max_pixels: int, verdict) -> None:
    key = _key(path, max_pixels)
    if key is None:
        return
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    _DECODED[key] = verdict


def _to_rgb(image: Image.Image, path) -> Image.Image:
    """The decoded image as 8-bit RGB. Pillow's own conversion clips values above 255, so a 16-bit
    or 32-bit scan (mode I;16, I or F: biomedical and scientific images) would turn black and white;
    such an image is scaled by its own range instead, min..max to 0..255 (a constant image is 0).
    EXIF orientation is not applied, as in the public release (README, "Input checks")."""
    values = _wide_values(image, path)
    if values is None:
        return image.convert("RGB")
    low, high = values.min(), values.max()
    if high == low:
        scaled = np.zeros(values.shape, dtype=np.uint8)
    else:
        # In place, in float32 where it holds every value exactly (16-bit, and F itself): a 64 Mpx scan
        # then costs 256 MB more, not a GB. A 32-bit integer image needs float64.
        scaled = values.astype(np.float64 if values.dtype.kind in "iu" and values.itemsize > 2 else np.float32)
        scaled -= low
        scaled *= 255.0 / (float(high) - float(low))
        scaled = np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled).astype(np.uint8)
    return Image.fromarray(scaled).convert("RGB")


def _wide_values(image: Image.Image, path) -> np.ndarray | None:
    """The pixel values of an image wider than 8 bits per channel (None for any other mode); a float
    image holding NaN or an infinity has no range to scale by: RecordError."""
    if not (image.mode == "F" or image.mode.startswith("I")):
        return None
    values = np.asarray(image)
    if image.mode == "F" and not np.isfinite(values).all():
        raise RecordError(
            "image_not_finite",
            f"{path} is a float image holding NaN or infinite pixel values, which have no 8-bit value; "
            "replace them (e.g. by 0) or save the image as 8-bit",
        )
    return values


def _read(path, max_pixels: int, use, data: bytes | None = None):
    """`use(image)` of the file at `path` (or of its bytes `data`, already read), within the cap."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise RecordError(
                        "image_too_large",
                        f"{path} claims {width}x{height} pixels, over the cap of {max_pixels:,} "
                        "(a decompression bomb, or a scan to downscale first)",
                    )
                return use(im)
    except RecordError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own, larger cap, hit while opening
        raise RecordError("image_too_large", f"{path}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise RecordError("image_unreadable", f"{path} does not decode as an image ({type(e).__name__}: {e})") from None


def load_image(image_folder: str | os.PathLike, relative: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A record's image, safely resolved and decoded as RGB."""
    return open_image(resolve_image_path(image_folder, relative), max_pixels)


def ensure_blank_image(path: str | os.PathLike) -> Path:
    """The blank image that stands in for 10% of the seed images; made (white, 336x336) if missing."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", BLANK_IMAGE_SIZE, (255, 255, 255)).save(path)
    return path
