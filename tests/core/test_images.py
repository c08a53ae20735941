"""Image checks: each rejection reason, and the RGB conversion."""

import os
import struct
import zlib

import pytest
from PIL import Image

from adamllm.core.images import check_image, ensure_blank_image, load_image, read_image_bytes, resolve_image_path
from adamllm.core.records import RecordError


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


# --- images of more than 8 bits per channel ---------------------------------------------------------
def gradient(dtype, low, high, shape=(12, 40)):
    import numpy as np

    return np.linspace(low, high, shape[0] * shape[1]).astype(dtype).reshape(shape)


@pytest.mark.parametrize(
    "name, dtype, low, high, mode",
    [
        ("scan16.png", "uint16", 0, 57000, "I;16"),
        ("scan32.tiff", "int32", -2_000_000_000, 2_100_000_000, "I"),
        ("scanf.tiff", "float32", -3.5, 1e6, "F"),
    ],
)
def test_wide_images_are_scaled_by_their_range_not_clipped(folder, name, dtype, low, high, mode):
    import numpy as np

    Image.fromarray(gradient(dtype, low, high)).save(folder / name)
    with Image.open(folder / name) as raw:
        assert raw.mode == mode  # what Pillow reads back: the case the conversion must handle
    values = np.asarray(load_image(folder, name))
    assert values.shape == (12, 40, 3) and (values[..., 0] == values[..., 2]).all()
    flat = values[..., 0].ravel().astype(int)
    assert flat.min() == 0 and flat.max() == 255 and (np.diff(flat) >= 0).all()  # order kept, full span
    assert len(set(flat)) > 200
    assert check_image(folder / name) == (40, 12)


def test_a_constant_wide_image_is_black(folder):
    import numpy as np

    Image.fromarray(np.full((4, 5), 40000, dtype=np.uint16)).save(folder / "flat16.png")
    assert load_image(folder, "flat16.png").getextrema() == ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_float_image_holding_nan_or_infinity_is_rejected(folder, bad):
    values = gradient("float32", 0, 1)
    values[3, 7] = bad
    Image.fromarray(values).save(folder / "bad.tiff")
    assert reason(load_image, folder, "bad.tiff") == "image_not_finite"
    assert reason(check_image, folder / "bad.tiff") == "image_not_finite"  # the stages that hand it on agree


def test_8_bit_images_are_converted_as_before(folder):
    """The scaling touches only wide modes: an 8-bit gray image keeps its values (no stretching)."""
    assert load_image(folder, "gray.png").getextrema() == ((100, 100), (100, 100), (100, 100))


def test_exif_orientation_is_not_applied(folder):
    """The release's choice (README, "Input checks"): the pixels as stored, whatever the EXIF tag says."""
    image = Image.new("RGB", (8, 4), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 2, 4))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(folder / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(folder, "rotated.jpg")
    assert loaded.size == (8, 4)
    assert loaded.getpixel((0, 2))[2] > 200 and loaded.getpixel((7, 2))[0] > 200


@pytest.mark.parametrize("path", ["gray.png/", "gray.png/.", "gray.png//"])
def test_a_file_path_ending_as_a_folder_is_rejected(folder, path):
    """Path() would read 'gray.png/' as the file; open() refuses it, so it must not pass here."""
    with pytest.raises(RecordError) as e:
        resolve_image_path(folder, path)
    assert e.value.reason == "unsafe_image_path" and "'gray.png'" in e.value.detail


@pytest.mark.parametrize("path", ["./gray.png", "sub//x.png", "sub/./x.png"])
def test_paths_the_os_opens_as_written_pass(folder, path):
    (folder / "sub").mkdir()
    Image.new("L", (2, 2)).save(folder / "sub" / "x.png")
    assert resolve_image_path(folder, path).is_file()
