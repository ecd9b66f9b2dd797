"""3D keypoints (``keypoints_3d.zip`` members ``{frame:06d}.npy``): (n <= 274, 6) rows of
``id, x, y, z, sum of inlier confidences, number of inliers``; absent keypoints have no row."""

from __future__ import annotations

import numpy as np

from ava256.capture import NUM_KEYPOINTS
from ava256.formats.scalars import read_npy, write_npy


def _check_rows(rows: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros((0, 6), np.float64)
    if rows.ndim != 2 or rows.shape[1] != 6:
        raise ValueError(f"keypoints: shape {rows.shape}, expected (n, 6)")
    if not np.issubdtype(rows.dtype, np.number):
        raise ValueError(f"keypoints: dtype {rows.dtype} is not numeric")
    if rows.shape[0] > NUM_KEYPOINTS:
        raise ValueError(f"keypoints: {rows.shape[0]} rows, at most {NUM_KEYPOINTS}")
    ids = rows[:, 0]
    if not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)):
        raise ValueError("keypoints: id column holds non-integer values")
    if ids.min() < 0 or ids.max() >= NUM_KEYPOINTS:
        raise ValueError(
            f"keypoints: id out of range [0, {NUM_KEYPOINTS}): min {ids.min():g}, max {ids.max():g}"
        )
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"keypoints: duplicate id(s) {uniq[counts > 1].astype(int).tolist()[:5]}")
    return rows


def read_keypoints(data: bytes) -> np.ndarray:
    """Parse one keypoint npy into a dense (274, 5) float32 array (x, y, z, confidence, n_inliers); rows of
    absent ids are NaN. ValueError on a wrong shape, ids out of range/non-integer/duplicated."""
    rows = _check_rows(read_npy(data))
    out = np.full((NUM_KEYPOINTS, 5), np.nan, dtype=np.float32)
    if rows.shape[0]:
        out[rows[:, 0].astype(np.int64)] = rows[:, 1:]
    return out


def write_keypoints(rows: np.ndarray) -> bytes:
    """Serialise (n, 6) rows (id first) as a float32 npy; validated like :func:`read_keypoints`."""
    arr = np.asarray(rows)
    return write_npy(_check_rows(arr).astype(np.float32))
