"""One-number text files (``*_variance.txt``) and ``.npy`` arrays."""

from __future__ import annotations

import io

import numpy as np

from ava256.formats._text import to_text


def read_scalar_txt(data: bytes | str) -> float:
    """Parse a text file holding exactly one number; ValueError otherwise."""
    tokens = to_text(data, "scalar text").split()
    if len(tokens) != 1:
        raise ValueError(f"scalar text: expected exactly one number, got {len(tokens)} tokens")
    try:
        return float(tokens[0])
    except ValueError:
        raise ValueError(f"scalar text: {tokens[0]!r} is not a number") from None


def write_scalar_txt(x: float) -> bytes:
    return f"{float(x):.17g}\n".encode()


def read_npy(data: bytes) -> np.ndarray:
    """Load a ``.npy`` (never pickles); ValueError on a malformed or truncated file."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"npy: cannot read ({exc})") from exc


def write_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()
