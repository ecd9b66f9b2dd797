"""The repack tasks' AVIF fast path and malloc tuning: same pixels and errors as ``formats.images``."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from ava256.formats.images import decode_rgb, encode_avif, encode_png
from ava256.pipeline import repack_tasks as rt


def _picture(h: int = 48, w: int = 40, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 5 + yy * (3 + k)) % 256 for k in range(c)], -1)
    return (base + rng.integers(0, 20, base.shape)).clip(0, 255).astype(np.uint8)


@pytest.mark.skipif(rt._AVIF is None, reason="Pillow without AVIF")
def test_fast_avif_decode_equals_pillow_decode():
    blob = encode_avif(_picture(), 63)
    x = rt._decode_rgb_fast(blob)
    ref = decode_rgb(blob)
    assert x.shape == ref.shape == (48, 40, 3) and x.dtype == np.uint8
    assert np.array_equal(x, ref)


def test_fast_decode_falls_back_for_other_images():
    from PIL import Image

    png = encode_png(_picture())
    assert np.array_equal(rt._decode_rgb_fast(png), decode_rgb(png))
    if rt._AVIF is not None:  # an RGBA AVIF: alpha dropped exactly as decode_rgb does
        import io

        buf = io.BytesIO()
        Image.fromarray(_picture(c=4), "RGBA").save(buf, format="AVIF", quality=90)
        x = rt._decode_rgb_fast(buf.getvalue())
        assert x.shape == (48, 40, 3) and np.array_equal(x, decode_rgb(buf.getvalue()))


def test_fast_decode_errors_like_decode_rgb():
    blob = encode_avif(_picture(), 63)
    for bad in (blob[: len(blob) // 2], b"\x00\x00\x00\x1cftypavif" + b"\x00" * 40, b"not an image"):
        with pytest.raises(ValueError) as fast:
            rt._decode_rgb_fast(bad)
        with pytest.raises(ValueError) as ref:
            decode_rgb(bad)
        hexid = re.compile(r"0x[0-9a-f]+")  # Pillow names the BytesIO object it read
        assert hexid.sub("", str(fast.value)) == hexid.sub("", str(ref.value))


def test_tune_malloc_is_idempotent():
    first = rt.tune_malloc()
    assert rt.tune_malloc() is first
    if sys.platform.startswith("linux") and "musl" not in sys.version.lower():
        assert first is True  # glibc: mallopt accepted both settings
