"""Resampling of decoded pictures for ``--downsample k``: pure numpy/Pillow, no I/O.

Colour images use Pillow's BOX filter (an exact area average for integer factors, anti-aliased for others);
label images use NEAREST so no label value is invented. Both map the whole source extent onto the whole
target extent, which is what :func:`ava256.store.layout.scale_intrinsics` assumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def resize_rgb(rgb: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 -> (h, w[, 3]) uint8 with an area (box) filter; identity if same size."""
    h, w = int(out_hw[0]), int(out_hw[1])
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((w, h), Image.Resampling.BOX))


def resize_labels(labels: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """(H, W) uint8 labels -> (h, w) uint8 by nearest neighbour; identity if same size."""
    h, w = int(out_hw[0]), int(out_hw[1])
    if labels.shape[:2] == (h, w):
        return labels
    return np.asarray(Image.fromarray(np.ascontiguousarray(labels)).resize((w, h), Image.Resampling.NEAREST))
