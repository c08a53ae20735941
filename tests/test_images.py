"""Image checks: each rejection reason, and the RGB conversion."""

import os
import struct
import zlib

import pytest
from PIL import Image

from adamllm.formats import RecordError
from adamllm.images import check_image, ensure_blank_image, load_image, read_image_bytes, resolve_image_path


def reason(fn, *args):
    with pytest.raises(RecordError) as e:
        fn(*args)
    return e.value.reason


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "images"
    f.mkdir()
    Image.new("L", (8, 6), 100).save(f / "gray.png")
    Image.new("RGBA", (8, 6)).save(f / "rgba.png")
    (f / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "secret.png").write_bytes((f / "gray.png").read_bytes())
    os.symlink(tmp_path / "secret.png", f / "link_out.png")
    os.symlink(f / "gray.png", f / "link_in.png")
    return f


def png_header_claiming(width, height):
    """A tiny PNG file whose header claims a huge size (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_modes_become_rgb(folder):
    assert load_image(folder, "gray.png").mode == "RGB"
    assert load_image(folder, "rgba.png").mode == "RGB"
    assert load_image(folder, "link_in.png").size == (8, 6)


@pytest.mark.parametrize("path", ["/etc/passwd", "../secret.png", "sub/../../secret.png", "~/x.png", ""])
def test_paths_outside_the_folder_rejected(folder, path):
    assert reason(resolve_image_path, folder, path) == "unsafe_image_path"


def test_symlink_out_rejected(folder):
    assert reason(resolve_image_path, folder, "link_out.png") == "unsafe_image_path"


def test_missing_and_corrupt(folder):
    assert reason(resolve_image_path, folder, "nope.png") == "image_missing"
    assert reason(load_image, folder, "broken.jpg") == "image_unreadable"
    assert reason(check_image, folder / "broken.jpg") == "image_unreadable"


def test_decompression_bomb_rejected_before_decoding(folder):
    (folder / "bomb.png").write_bytes(png_header_claiming(50_000, 50_000))
    assert reason(load_image, folder, "bomb.png") == "image_too_large"
    assert reason(check_image, folder / "bomb.png") == "image_too_large"
    (folder / "big.png").write_bytes(png_header_claiming(20_000, 20_000))
    assert reason(check_image, folder / "big.png") == "image_too_large"


def test_read_image_bytes_checks_the_bytes_it_read(folder, tmp_path, monkeypatch):
    """The file is opened once: its bytes, then the decode check from them (as check_image's)."""
    (folder / "cut.png").write_bytes((folder / "gray.png").read_bytes()[:-30])  # header intact, data cut
    (folder / "bomb.png").write_bytes(png_header_claiming(50_000, 50_000))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: (opened.append(fp), real_open(fp, *a, **k))[1])
    assert read_image_bytes(folder / "gray.png") == (folder / "gray.png").read_bytes()
    assert not any(isinstance(fp, (str, os.PathLike)) for fp in opened)  # decoded from memory
    assert reason(read_image_bytes, folder / "cut.png") == "image_unreadable"
    assert reason(read_image_bytes, folder / "broken.jpg") == "image_unreadable"
    assert reason(read_image_bytes, folder / "bomb.png") == "image_too_large"
    assert reason(read_image_bytes, folder / "gone.png") == "image_unreadable"
    assert reason(read_image_bytes, folder) == "image_unreadable"  # a folder, not a file


def test_blank_image_made_once(tmp_path):
    path = ensure_blank_image(tmp_path / "b" / "blank.png")
    with Image.open(path) as im:
        assert im.getextrema() == ((255, 255), (255, 255), (255, 255))
    stamp = path.stat().st_mtime_ns
    ensure_blank_image(path)
    assert path.stat().st_mtime_ns == stamp
