"""Camera calibration: ``decoder/camera_calibration.json`` (K and T stored transposed) and the older KRT text.

Conventions of the returned :class:`Calibration` (C cameras, sorted by camera id as strings):

- ``intrinsics`` (C, 3, 3) float64, un-transposed ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of the
  full 4096 x 2668 (portrait) sensor: scale by the image's downsampling before use.
- ``extrinsics`` (C, 3, 4) float64, world -> camera ``[R | t]``, t in millimetres.
- ``distortion`` (C, 4) float64: k1, k2, p1, p2 (RadialAndTangential).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from ava256.formats._text import to_text


@dataclass
class Calibration:
    """Calibration of C cameras; arrays are indexed like ``camera_ids`` (sorted)."""

    camera_ids: list[str]
    intrinsics: np.ndarray  # (C, 3, 3) float64, pixels of the full sensor
    extrinsics: np.ndarray  # (C, 3, 4) float64, world -> camera, mm
    distortion: np.ndarray  # (C, 4) float64
    projection_models: list[str] = field(default_factory=list)
    distortion_models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        c = len(self.camera_ids)
        self.intrinsics = np.asarray(self.intrinsics, dtype=np.float64)
        self.extrinsics = np.asarray(self.extrinsics, dtype=np.float64)
        self.distortion = np.asarray(self.distortion, dtype=np.float64)
        if not self.projection_models:
            self.projection_models = ["Pinhole"] * c
        if not self.distortion_models:
            self.distortion_models = ["RadialAndTangential"] * c
        for name, arr, shape in (
            ("intrinsics", self.intrinsics, (c, 3, 3)),
            ("extrinsics", self.extrinsics, (c, 3, 4)),
            ("distortion", self.distortion, (c, 4)),
        ):
            if arr.shape != shape:
                raise ValueError(f"calibration {name} has shape {arr.shape}, expected {shape}")
        if len(self.projection_models) != c or len(self.distortion_models) != c:
            raise ValueError("calibration model lists must have one entry per camera")
        if len(set(self.camera_ids)) != c:
            dup = sorted({x for x in self.camera_ids if self.camera_ids.count(x) > 1})
            raise ValueError(f"calibration lists camera id(s) {dup} more than once")

    def __len__(self) -> int:
        return len(self.camera_ids)

    def index(self, camera_id: str) -> int:
        """Position of ``camera_id``; KeyError if unknown."""
        try:
            return self.camera_ids.index(str(camera_id))
        except ValueError:
            raise KeyError(f"camera {camera_id!r} not in calibration") from None

    def camera_centers(self) -> np.ndarray:
        """(C, 3) camera centres in world coordinates (mm): ``-R^T t``."""
        r = self.extrinsics[:, :, :3]
        t = self.extrinsics[:, :, 3]
        return -np.einsum("cji,cj->ci", r, t)

    def subset(self, camera_ids: list[str]) -> Calibration:
        """A calibration of the given cameras only (KeyError for unknown ones)."""
        idx = [self.index(c) for c in camera_ids]
        order = sorted(range(len(idx)), key=lambda i: str(camera_ids[i]))
        idx = [idx[i] for i in order]
        return Calibration(
            [self.camera_ids[i] for i in idx],
            self.intrinsics[idx],
            self.extrinsics[idx],
            self.distortion[idx],
            [self.projection_models[i] for i in idx],
            [self.distortion_models[i] for i in idx],
        )


def _matrix(value: object, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not a numeric matrix ({exc})") from exc
    if arr.shape != shape:
        raise ValueError(f"{what}: shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: contains NaN or infinity")
    return arr


def _sorted(cams: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, str, str]]) -> Calibration:
    if not cams:
        raise ValueError("calibration lists no cameras")
    cams = sorted(cams, key=lambda c: c[0])
    return Calibration(
        [c[0] for c in cams],
        np.stack([c[1] for c in cams]),
        np.stack([c[2] for c in cams]),
        np.stack([c[3] for c in cams]),
        [c[4] for c in cams],
        [c[5] for c in cams],
    )


def read_calibration(data: bytes | str) -> Calibration:
    """Parse ``camera_calibration.json``: ``{"KRT": [{cameraId, projectionModel, distortionModel, K, distortion,
    T}, ...]}``. K (3x3) and T (4x4) are stored transposed; they are returned un-transposed (see module doc).
    ValueError names the camera and field on malformed input."""
    text = to_text(data, "camera_calibration.json")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"camera_calibration.json: invalid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("KRT"), list):
        raise ValueError("camera_calibration.json: expected an object with a 'KRT' list")
    cams = []
    for i, entry in enumerate(doc["KRT"]):
        if not isinstance(entry, dict):
            raise ValueError(f"camera_calibration.json: KRT[{i}] is not an object")
        missing = [k for k in ("cameraId", "K", "T") if k not in entry]
        if missing:
            raise ValueError(f"camera_calibration.json: KRT[{i}] lacks {missing}")
        cid = str(entry["cameraId"]).strip()
        if not cid:
            raise ValueError(f"camera_calibration.json: KRT[{i}] has an empty cameraId")
        where = f"camera_calibration.json camera {cid}"
        k = _matrix(entry["K"], (3, 3), f"{where} K").T
        t = _matrix(entry["T"], (4, 4), f"{where} T").T
        if not np.allclose(k[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"{where} K: un-transposed last row is {k[2].tolist()}, expected [0, 0, 1]")
        if not np.allclose(t[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError(f"{where} T: un-transposed last row is {t[3].tolist()}, expected [0, 0, 0, 1]")
        dist = entry.get("distortion", [0.0, 0.0, 0.0, 0.0])
        d = np.asarray(dist, dtype=np.float64).reshape(-1) if isinstance(dist, list) else None
        if d is None or d.size < 4 or not np.all(np.isfinite(d)):
            raise ValueError(f"{where} distortion: expected 4 finite numbers, got {dist!r}")
        cams.append(
            (
                cid,
                k,
                t[:3, :4],
                d[:4],
                str(entry.get("projectionModel", "Pinhole")),
                str(entry.get("distortionModel", "RadialAndTangential")),
            )
        )
    return _sorted(cams)


def write_calibration(cal: Calibration) -> bytes:
    """Serialise to the release's JSON layout (K, T transposed; T padded to 4x4)."""
    entries = []
    for i, cid in enumerate(cal.camera_ids):
        t = np.eye(4)
        t[:3, :4] = cal.extrinsics[i]
        entries.append(
            {
                "cameraId": cid,
                "projectionModel": cal.projection_models[i],
                "distortionModel": cal.distortion_models[i],
                "K": cal.intrinsics[i].T.tolist(),
                "distortion": cal.distortion[i].tolist(),
                "T": t.T.tolist(),
            }
        )
    return json.dumps({"KRT": entries}, indent=4).encode()


def read_krt(data: bytes | str) -> Calibration:
    """Parse the older plain-text KRT: per camera an id line, 3 lines K (not transposed), one distortion line
    (4 or 5 numbers: k1 k2 p1 p2 [k3]; only the first 4 are kept), 3 lines ``[R | t]`` (world -> camera, mm),
    then a blank line."""
    text = to_text(data, "KRT")
    lines = [ln.strip() for ln in text.splitlines()]
    cams = []
    i = 0
    n = len(lines)
    while i < n:
        if not lines[i]:
            i += 1
            continue
        block = lines[i : i + 8]
        if len(block) < 8 or any(not b for b in block):
            raise ValueError(
                f"KRT line {i + 1}: truncated camera block (need id, 3 K lines, 1 dist, 3 RT lines)"
            )
        cid = block[0]
        if len(cid.split()) != 1:
            raise ValueError(f"KRT line {i + 1}: expected a camera id, got {cid!r}")
        try:
            rows = [np.array(b.split(), dtype=np.float64) for b in block[1:]]
        except ValueError as exc:
            raise ValueError(f"KRT camera {cid}: non-numeric value ({exc})") from exc
        k = rows[0:3]
        rt = rows[4:7]
        if any(r.size != 3 for r in k) or any(r.size != 4 for r in rt) or rows[3].size not in (4, 5):
            raise ValueError(f"KRT camera {cid}: wrong number of values in K/distortion/RT lines")
        kk = np.stack(k)
        if not np.allclose(kk[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"KRT camera {cid}: K last row is {kk[2].tolist()}, expected [0, 0, 1]")
        cams.append((cid, kk, np.stack(rt), rows[3][:4], "Pinhole", "RadialAndTangential"))
        i += 8
    if any(not math.isfinite(float(x)) for c in cams for x in c[2].ravel()):
        raise ValueError("KRT: non-finite extrinsics")
    return _sorted(cams)
