"""decode_image / decode_caption: every bad-sample reason and every conversion."""
from __future__ import annotations

import pickle
import struct
import warnings

import numpy as np
import pytest
from data_helpers import encode, noise_image, png_header_only, raw_png
from PIL import Image, ImageFile

from vlmkit.data.decode import BadSample, decode_caption, decode_image


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(BadSample) as caught:
        decode_image(data, **kwargs)
    return caught.value.reason


def test_plain_rgb_png_roundtrips_without_notes():
    image = noise_image()
    decoded, notes = decode_image(encode(image))
    assert decoded.mode == "RGB" and notes == []
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_zero_bytes_is_empty_file():
    assert reason_of(b"") == "empty_file"


def test_random_bytes_are_corrupt():
    assert reason_of(b"this is not an image at all" * 10) == "corrupt_image"


def test_damaged_png_data_is_corrupt():
    data = bytearray(encode(noise_image()))
    middle = len(data) // 2
    data[middle:middle + 50] = b"\x00" * 50
    assert reason_of(bytes(data)) == "corrupt_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_file_cut_in_half_is_truncated(fmt):
    data = encode(noise_image(), fmt)
    assert reason_of(data[: len(data) // 2]) == "truncated_image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on globally


def test_decompression_bomb_is_too_large_and_nothing_escapes():
    bomb = png_header_only(20000, 20000)
    assert len(bomb) < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked DecompressionBombWarning would fail here
        assert reason_of(bomb) == "too_large"
        # Between PIL's warning and error thresholds: PIL only warns; we still refuse.
        assert reason_of(png_header_only(10000, 10000)) == "too_large"


def test_max_pixels_is_checked_from_the_header():
    data = encode(noise_image(100, 100))
    assert reason_of(data, max_pixels=5000) == "too_large"
    decoded, _ = decode_image(data, max_pixels=10_000)
    assert decoded.size == (100, 100)


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded, notes = decode_image(data)
    assert decoded.mode == "RGB" and notes == ["cmyk"]
    red = np.asarray(decoded)[8, 8]
    assert red[0] > 220 and red[1] < 40 and red[2] < 40


def test_palette_png_with_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))  # left half palette index 1 (blue), right half index 0 (red)
    data = encode(image, "PNG", transparency=0)  # index 0 transparent
    decoded, notes = decode_image(data)
    assert notes == ["palette", "alpha"]
    pixels = np.asarray(decoded)
    assert pixels[0, 0].tolist() == [0, 0, 255]
    assert pixels[0, 7].tolist() == [255, 255, 255]


def test_palette_png_without_transparency():
    decoded, notes = decode_image(encode(noise_image().convert("P")))
    assert decoded.mode == "RGB" and notes == ["palette"]


def test_rgba_png_is_composited_on_white():
    data = encode(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))
    decoded, notes = decode_image(data)
    assert notes == ["alpha"]
    assert np.asarray(decoded)[0, 0].tolist() == pytest.approx([255, 127, 127], abs=1)


def test_16bit_grayscale_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535, 32768]], dtype=np.uint16)
    decoded, notes = decode_image(encode(Image.fromarray(values)))
    assert set(notes) == {"16bit", "grayscale"}
    assert np.asarray(decoded)[0, :, 0].tolist() == [0, 100, 255, 128]


def test_16bit_rgb_png_is_noted():
    # PIL cannot save 16-bit RGB, so the 1x1 PNG is written by hand.
    data = raw_png(1, 1, 16, 2, b"\x00" + struct.pack(">HHH", 65535, 0, 32896))
    decoded, notes = decode_image(data)
    assert notes == ["16bit"] and np.asarray(decoded)[0, 0].tolist() == [255, 0, 128]


def test_float_and_int32_tiffs_are_scaled():
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    decoded, notes = decode_image(encode(floats, "TIFF"))
    assert "float" in notes and np.asarray(decoded)[0, :, 0].tolist() == [0, 128, 255]
    ints = Image.fromarray(np.array([[0, 1000, 4000]], dtype=np.int32), "I")
    decoded, _ = decode_image(encode(ints, "TIFF"))
    assert np.asarray(decoded)[0, :, 0].tolist() == [0, 4, 16]  # 16-bit range: / 257


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_gray_modes_become_rgb(mode):
    decoded, notes = decode_image(encode(Image.new(mode, (5, 5), 1 if mode == "1" else 200)))
    assert decoded.mode == "RGB" and "grayscale" in notes


def test_exif_orientation_is_applied():
    image = noise_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded, notes = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40) and notes == ["exif_rotated"]


def test_bad_sample_message_and_pickling():
    error = BadSample("corrupt_image", "k1", "broken")
    error.hint = "use --on-bad-sample skip to skip such samples"
    assert str(error) == ("sample 'k1': corrupt_image (broken); "
                          "use --on-bad-sample skip to skip such samples")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.key, copy.detail, copy.hint) == ("corrupt_image", "k1", "broken",
                                                              error.hint)


def test_caption_strip_and_bom():
    assert decode_caption("  a red circle \n") == ("a red circle", [])
    assert decode_caption(b"\xef\xbb\xbfa cat") == ("a cat", [])
    assert decode_caption("\ufeffa cat") == ("a cat", [])


def test_cp1252_caption_bytes():
    assert decode_caption("café".encode("cp1252")) == ("café", ["non_utf8"])
    # Valid UTF-8 parts stay intact; only the stray byte is read as cp1252.
    assert decode_caption("naïve ".encode() + b"caf\xe9") == ("naïve café", ["non_utf8"])


def test_surrogate_escaped_caption_string_is_repaired():
    raw = b"caf\xe9 \x93quoted\x94".decode("utf-8", errors="surrogateescape")
    assert decode_caption(raw) == ("café \u201cquoted\u201d", ["non_utf8"])


@pytest.mark.parametrize("raw,reason", [("", "empty_caption"), ("  \t\n", "empty_caption"),
                                        (b"", "empty_caption"), (None, "missing_caption")])
def test_bad_captions(raw, reason):
    with pytest.raises(BadSample) as caught:
        decode_caption(raw, key="k9")
    assert (caught.value.reason, caught.value.key) == (reason, "k9")
