"""Head pose text files (``head_pose.zip`` members ``{frame:06d}.txt``): a 3x4 head -> world transform.

NaN policy: a file that parses but holds ``nan``/``inf`` values is returned as is (the tracker writes such
files when it loses the head); the caller masks it (``np.isfinite(pose).all()``), e.g. repack records it as
``valid/head_pose = False``. Anything that is not 12 numbers (or 16 with a last row ``0 0 0 1``) raises.
"""

from __future__ import annotations

import numpy as np

from ava256.formats._text import to_text


def read_head_pose(data: bytes | str) -> np.ndarray:
    """Parse a head pose text: (3, 4) float32 ``[R | t]`` (t in mm). May contain NaN (see module doc)."""
    text = to_text(data, "head pose")
    tokens = text.replace(",", " ").split()
    try:
        vals = np.array(tokens, dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"head pose: non-numeric value ({exc})") from exc
    if vals.size == 16:
        m = vals.reshape(4, 4)
        if not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError(f"head pose: 4x4 matrix with last row {m[3].tolist()}, expected [0, 0, 0, 1]")
        vals = m[:3].ravel()
    if vals.size != 12:
        raise ValueError(f"head pose: {vals.size} numbers, expected a 3x4 matrix (12)")
    return vals.reshape(3, 4).astype(np.float32)


def write_head_pose(a: np.ndarray) -> bytes:
    """Serialise a (3, 4) transform as 3 lines of 4 numbers (9 significant digits: float32 round-trips)."""
    m = np.asarray(a, dtype=np.float64)
    if m.shape != (3, 4):
        raise ValueError(f"head pose must be (3, 4), got {m.shape}")
    return ("\n".join(" ".join(f"{x:.9g}" for x in row) for row in m) + "\n").encode()
