"""Image codecs (Pillow): AVIF camera images / uv textures / IR images, PNG segmentation labels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# what Pillow raises for data it cannot open or decode (its AVIF plugin raises RuntimeError for what libavif
# rejects, e.g. "Failed to decode image: Not implemented" for a damaged item)
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, RuntimeError)
# Pillow modes decode_labels accepts (single-channel images)
_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")


def _open(data: bytes, what: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except _PIL_ERRORS as exc:
        raise ValueError(f"{what}: cannot decode image ({exc})") from exc
    return im


def _check_label_mode(mode: str) -> None:
    if mode not in _LABEL_MODES:
        raise ValueError(f"label image: mode {mode!r}, expected a single-channel image")


def image_header(data: bytes, what: str = "image") -> tuple[int, int, str]:
    """(height, width, Pillow mode) of an encoded image, from its header only (no pixel decode: ~0.3 ms for a
    667 x 1024 AVIF against ~5-9 ms to decode it). The decoders below return arrays of this height and width.
    ValueError if the header cannot be parsed."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            return int(h), int(w), str(im.mode)
    except _PIL_ERRORS as exc:
        raise ValueError(f"{what}: cannot read image header ({exc})") from exc


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) that :func:`decode_rgb` / :func:`decode_gray` return for ``data``, from its header."""
    h, w, _mode = image_header(data)
    return h, w


def label_size(data: bytes) -> tuple[int, int]:
    """(height, width) that :func:`decode_labels` returns for ``data``, from its header; ValueError where
    :func:`decode_labels` refuses the mode (not single-channel)."""
    h, w, mode = image_header(data, "label image")
    _check_label_mode(mode)
    return h, w


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode an RGB image (AVIF, PNG, ...) to (H, W, 3) uint8; grey or alpha images are converted."""
    im = _open(data, "rgb image")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def decode_labels(data: bytes) -> np.ndarray:
    """Decode a single-channel label PNG to (H, W) uint8 (values kept as stored, e.g. 0..10).
    ValueError for a multi-channel image (labels must not be colour-converted)."""
    im = _open(data, "label image")
    _check_label_mode(im.mode)
    arr = np.asarray(im)
    if im.mode not in ("L", "P") and arr.size and arr.max() > 255:
        raise ValueError(f"label image: values up to {arr.max()} do not fit uint8")
    return arr.astype(np.uint8, copy=False)


def decode_gray(data: bytes) -> np.ndarray:
    """Decode a greyscale-looking image (encoder IR AVIF) to (H, W) uint8 (colour is converted to luma)."""
    im = _open(data, "gray image")
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)


def encode_avif(rgb: np.ndarray, quality: int, speed: int | None = None) -> bytes:
    """Encode (H, W, 3) or (H, W) uint8 as AVIF at ``quality`` (0..100; the release uses 63 / 70).
    ``speed`` 0 (slow, small) .. 10 (fast); None keeps Pillow's default."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"encode_avif: need (H, W, 3) or (H, W) uint8, got {arr.shape} {arr.dtype}")
    buf = io.BytesIO()
    kw = {} if speed is None else {"speed": int(speed)}
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="AVIF", quality=int(quality), **kw)
    return buf.getvalue()


def encode_png(arr: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode (H, W) (greyscale/labels) or (H, W, 3) uint8 as PNG (lossless)."""
    a = np.asarray(arr)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"encode_png: need (H, W) or (H, W, 3) uint8, got {a.shape} {a.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
