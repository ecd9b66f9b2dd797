"""What of each capture ``ava256 repack`` stores: a camera subset, a frame range over the frame list's rows,
a segment subset and an asset subset (``--cameras``, ``--frames``, ``--segments``, ``--assets``).

Frames: rows of ``decoder/frame_list.csv`` whose segment is selected (all without ``--segments``), then
``START:STOP:STEP`` over those rows (Python slice semantics). Encoder images: the encoder frames whose ids are
among the selected frames (all of them without a frame or segment selection). Metadata (calibration of the
selected cameras, stats) is always stored. The selection is part of a capture store's identity
(:data:`ava256.store.layout.ATTR_SELECTION`): a run with another selection on an existing capture is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ava256.assets import REGISTRY


@dataclass(frozen=True)
class Selection:
    """A repack selection; ``None`` in a field selects everything of it."""

    cameras: tuple[str, ...] | None = None
    frames: tuple[int | None, int | None, int | None] | None = None  # (start, stop, step) over rows
    segments: tuple[str, ...] | None = None
    assets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # one spelling per selection, so equal selections compare equal (cameras sorted, assets in store order)
        if self.cameras is not None:
            object.__setattr__(self, "cameras", tuple(sorted(dict.fromkeys(str(c) for c in self.cameras))))
        if self.assets is not None:
            object.__setattr__(self, "assets", tuple(a for a in REGISTRY if a in set(self.assets)))
        if self.segments is not None:
            object.__setattr__(self, "segments", tuple(dict.fromkeys(str(s) for s in self.segments)))
        if self.frames is not None:
            object.__setattr__(self, "frames", tuple(self.frames))

    @property
    def is_full(self) -> bool:
        return self.cameras is None and self.frames is None and self.segments is None and self.assets is None

    def to_attrs(self) -> dict[str, Any] | None:
        """JSON form for the capture group's attrs; None for the full selection."""
        if self.is_full:
            return None
        return {
            "cameras": list(self.cameras) if self.cameras is not None else None,
            "frames": list(self.frames) if self.frames is not None else None,
            "segments": list(self.segments) if self.segments is not None else None,
            "assets": list(self.assets) if self.assets is not None else None,
        }

    @classmethod
    def from_attrs(cls, value: dict[str, Any] | None) -> Selection:
        if not value:
            return cls()

        def tup(k: str) -> tuple | None:
            v = value.get(k)
            return None if v is None else tuple(v)

        fr = value.get("frames")
        return cls(tup("cameras"), None if fr is None else tuple(fr), tup("segments"), tup("assets"))  # type: ignore[arg-type]

    def describe(self) -> str:
        """One line, as the CLI options would spell it ("everything" for the full selection)."""
        if self.is_full:
            return "everything"
        parts = []
        if self.cameras is not None:
            parts.append("--cameras " + ",".join(self.cameras))
        if self.frames is not None:
            parts.append("--frames " + ":".join("" if x is None else str(x) for x in self.frames))
        if self.segments is not None:
            parts.append("--segments " + ",".join(self.segments))
        if self.assets is not None:
            parts.append("--assets " + ",".join(self.assets))
        return " ".join(parts)

    def wants(self, asset: str) -> bool:
        return self.assets is None or asset in self.assets

    def frame_rows(self, segments: Sequence[str]) -> list[int]:
        """Rows of the frame list (one segment name per row) that the selection keeps, in order."""
        rows = list(range(len(segments)))
        if self.segments is not None:
            keep = set(self.segments)
            rows = [i for i in rows if segments[i] in keep]
        if self.frames is not None:
            rows = rows[slice(*self.frames)]
        return rows


def _list(value: str, what: str) -> tuple[str, ...]:
    """A comma list, or the ids in a text file (comma or whitespace separated) when ``value`` names one."""
    text = value
    if os.path.isfile(value):
        with open(value) as f:
            text = f.read().replace("\n", ",").replace(" ", ",")
    items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    if not items:
        raise ValueError(f"--{what}: empty list {value!r}")
    return items


def parse_frames(value: str) -> tuple[int | None, int | None, int | None]:
    """``START:STOP[:STEP]`` (each part optional, Python slice semantics; STEP > 0)."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"--frames {value!r}: expected START:STOP or START:STOP:STEP, e.g. 0:1000:10")
    try:
        nums = [int(p) if p.strip() else None for p in parts] + [None] * (3 - len(parts))
    except ValueError:
        raise ValueError(f"--frames {value!r}: START, STOP and STEP must be integers") from None
    if nums[2] is not None and nums[2] <= 0:
        raise ValueError(f"--frames {value!r}: STEP must be > 0")
    return nums[0], nums[1], nums[2]


def parse_selection(
    cameras: str | None = None,
    frames: str | None = None,
    segments: str | None = None,
    assets: str | None = None,
) -> Selection:
    """A :class:`Selection` from the CLI strings; ValueError (one line) for a bad value or an unknown asset."""
    sel_assets = None
    if assets is not None:
        sel_assets = _list(assets, "assets")
        unknown = [a for a in sel_assets if a not in REGISTRY]
        if unknown:
            raise ValueError(
                f"--assets: unknown asset(s) {', '.join(unknown)}; expected some of {', '.join(REGISTRY)}"
            )
    return Selection(
        cameras=_list(cameras, "cameras") if cameras is not None else None,
        frames=parse_frames(frames) if frames is not None else None,
        segments=_list(segments, "segments") if segments is not None else None,
        assets=sel_assets,
    )
