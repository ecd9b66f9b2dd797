"""``frame_list.csv``: columns ``seg_id,frame_id``, one row per frame. Frame index = row position."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from ava256.formats._text import to_text


@dataclass
class FrameList:
    """Frames of a capture in file order: ``segments`` (F,) str and ``frame_ids`` (F,) int64."""

    segments: np.ndarray
    frame_ids: np.ndarray

    def __post_init__(self) -> None:
        self.segments = np.asarray(self.segments, dtype=str).reshape(-1)
        self.frame_ids = np.asarray(self.frame_ids, dtype=np.int64).reshape(-1)
        if self.segments.shape != self.frame_ids.shape:
            raise ValueError(f"frame list: {self.segments.size} segments but {self.frame_ids.size} frame ids")

    def __len__(self) -> int:
        return int(self.frame_ids.size)

    def segment_frames(self, segment: str) -> np.ndarray:
        """Frame indices (row positions) belonging to ``segment``."""
        return np.flatnonzero(self.segments == segment)


def read_frame_list(data: bytes | str) -> FrameList:
    """Parse a frame list CSV (header with ``seg_id`` and ``frame_id``, any column order). ValueError on a
    missing column, a non-integer or negative frame id, a duplicate frame id, or a row with a wrong field
    count (the message gives the line)."""
    text = to_text(data, "frame_list.csv")
    rows = list(csv.reader(io.StringIO(text)))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if not rows:
        raise ValueError("frame_list.csv: empty (no header)")
    header = [h.strip() for h in rows[0]]
    if "seg_id" not in header or "frame_id" not in header:
        raise ValueError(f"frame_list.csv: header {header} lacks 'seg_id' and/or 'frame_id'")
    si, fi = header.index("seg_id"), header.index("frame_id")
    body = rows[1:]
    bad = next((n for n, r in enumerate(body, start=2) if len(r) != len(header)), None)
    if bad is not None:
        raise ValueError(f"frame_list.csv line {bad}: {len(body[bad - 2])} fields, expected {len(header)}")
    segs = np.array([r[si].strip() for r in body], dtype=str)
    raw = np.array([r[fi].strip() for r in body], dtype=str)
    try:
        ids = raw.astype(np.int64) if raw.size else np.zeros(0, np.int64)
    except ValueError:
        bad_i = next(i for i, s in enumerate(raw) if not s.lstrip("-").isdigit())
        raise ValueError(
            f"frame_list.csv line {bad_i + 2}: frame_id {str(raw[bad_i])!r} is not an integer"
        ) from None
    if ids.size and ids.min() < 0:
        raise ValueError(f"frame_list.csv line {int(np.argmin(ids)) + 2}: negative frame_id {ids.min()}")
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"frame_list.csv: duplicate frame_id(s) {uniq[counts > 1][:5].tolist()}")
    return FrameList(segs, ids)


def write_frame_list(fl: FrameList) -> bytes:
    """Serialise to ``seg_id,frame_id`` CSV (LF line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["seg_id", "frame_id"])
    w.writerows(zip(fl.segments.tolist(), fl.frame_ids.tolist()))
    return buf.getvalue().encode()
