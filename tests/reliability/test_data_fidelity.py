"""Decoding as the file means it: 16-bit PNGs scaled, EXIF orientation applied, a non-UTF-8 caption counted."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from samclip.data.images import decode_image
from samclip.data.synth import write_tar
from samclip.eval.datasets.retrieval import read_caption_shards


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_16_bit_png_is_scaled_to_8_bits() -> None:
    values = (np.arange(32 * 48).reshape(32, 48) * 41).astype(np.uint16)  # 0 .. 62935
    decoded = np.asarray(decode_image(_png(values)))
    expected = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255: the 16-bit range onto the 8-bit one
    assert decoded.shape == (32, 48, 3)
    assert np.array_equal(decoded[..., 0], expected) and np.array_equal(decoded[..., 2], expected)


def test_the_exif_orientation_is_applied() -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)  # red on the stored image's left half
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation 6: display rotated 90° clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    shown = np.asarray(decode_image(buffer.getvalue()))
    assert shown.shape == (40, 20, 3)  # portrait, as a viewer shows it
    assert shown[5, 10, 0] > 200 and shown[35, 10, 0] < 50  # the left half is now on top


def test_a_non_utf8_caption_is_a_counted_bad_sample(tmp_path: Path) -> None:
    image = _png(np.full((16, 16, 3), 128, dtype=np.uint8))
    members = [
        ("a.png", image),
        ("a.txt", b"un chat noir"),
        ("b.png", image),
        ("b.txt", "un chien brun".encode("latin-1") + b"\xe9\xff"),
        ("c.png", image),
        ("c.txt", b"a horse\na pony"),
    ]
    shard = tmp_path / "000000.tar"
    write_tar(str(shard), members)
    skipped: Counter[str] = Counter()
    pairs = list(read_caption_shards(str(shard), skipped))
    assert [pair.captions for pair in pairs] == [("un chat noir",), ("a horse", "a pony")]
    assert skipped == {"skipped/undecodable_caption": 1}
