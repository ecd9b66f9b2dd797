"""The face topology that the models and synth share: a procedurally generated head-like mesh with exactly 7306
vertices (the release's vertex count).

Head frame, millimetres, OpenCV-like axes: x to the subject's left (image right for a frontal camera),
y down, z out of the face. Parts (vertex ranges are fixed):

- face/scalp sheet: a 76 x 76 grid over the front of an ellipsoid (azimuth +-100 deg, elevation -69..+69
  deg) with a nose, brow, cheeks and chin, and holes at the eyes and the mouth;
- two eyeballs (hemispheres of 8 rings x 24 segments + pole) sitting in the eye holes;
- two teeth strips (2 x 286 vertices) behind the mouth hole.

uvs are one per vertex (``faces_uv == faces``), in [0, 1]^2 with OBJ orientation (v up; texture row =
(1 - v) * T): the face sheet fills [0.03, 0.97] x [0.17, 0.97], eyes and teeth sit in the bottom strip.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ava256.capture import NUM_VERTICES
from ava256.formats.obj import Topology

GRID = 76
EYE_RINGS, EYE_SEGMENTS = 8, 24
TEETH_COLS = 286
HEAD_RADII = np.array([80.0, 110.0, 95.0])  # ellipsoid semi-axes x, y, z (mm)
HEAD_CENTER = np.array([0.0, -10.0, -20.0])
AZIMUTH = 1.75  # +- radians covered by the face sheet
ELEVATION = 1.2  # +- radians
EYE_CENTERS = ((-0.36, 0.16), (0.36, 0.16))  # (azimuth, elevation) of the eye holes, radians
EYE_HOLE = (0.13, 0.05)
MOUTH_CENTER = (0.0, -0.42)
MOUTH_HOLE = (0.24, 0.03)

# uv regions (u0, v0, u1, v1), OBJ orientation
FACE_UV = (0.03, 0.17, 0.97, 0.97)
EYE_UV = (((0.03, 0.02, 0.15, 0.14)), ((0.17, 0.02, 0.29, 0.14)))
TEETH_UV = ((0.33, 0.09, 0.97, 0.13), (0.33, 0.03, 0.97, 0.07))


def _gauss(t: np.ndarray, p: np.ndarray, t0: float, p0: float, st: float, sp: float) -> np.ndarray:
    return np.exp(-0.5 * (((t - t0) / st) ** 2 + ((p - p0) / sp) ** 2))


def _surface(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Points (..., 3) on the featured head surface at azimuth ``theta``, elevation ``phi`` (radians)."""
    d = (
        24.0 * _gauss(theta, phi, 0.0, -0.08, 0.09, 0.16)  # nose
        + 7.0 * _gauss(theta, phi, 0.0, 0.3, 0.45, 0.06)  # brow ridge
        + 6.0 * _gauss(np.abs(theta), phi, 0.5, -0.2, 0.18, 0.2)  # cheeks
        - 9.0 * _gauss(np.abs(theta), phi, 0.36, 0.16, 0.12, 0.08)  # eye sockets
        + 6.0 * _gauss(theta, phi, 0.0, -0.42, 0.22, 0.07)  # lips
        + 8.0 * _gauss(theta, phi, 0.0, -0.75, 0.25, 0.12)  # chin
        + 10.0 * _gauss(np.abs(theta), phi, 1.45, 0.0, 0.1, 0.2)  # ears
    )
    scale = 1.0 + d / 95.0
    x = HEAD_RADII[0] * np.cos(phi) * np.sin(theta) * scale
    y = -HEAD_RADII[1] * np.sin(phi) * scale
    z = HEAD_RADII[2] * np.cos(phi) * np.cos(theta) * scale
    return np.stack([x, y, z], axis=-1) + HEAD_CENTER


def _grid_faces(rows: int, cols: int, offset: int) -> np.ndarray:
    idx = np.arange(rows * cols).reshape(rows, cols) + offset
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    return np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])


def _in_ellipse(
    t: np.ndarray, p: np.ndarray, center: tuple[float, float], radii: tuple[float, float]
) -> np.ndarray:
    return ((t - center[0]) / radii[0]) ** 2 + ((p - center[1]) / radii[1]) ** 2 < 1.0


def _map(uv01: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    u0, v0, u1, v1 = box
    return np.stack([u0 + uv01[:, 0] * (u1 - u0), v0 + uv01[:, 1] * (v1 - v0)], axis=-1)


@lru_cache(maxsize=1)
def _build() -> Topology:
    verts, uvs, faces = [], [], []
    # face sheet
    g = np.linspace(0.0, 1.0, GRID)
    gu, gv = np.meshgrid(g, g)  # gv: 0 at the top row (forehead)
    theta = (gu - 0.5) * 2 * AZIMUTH
    phi = (0.5 - gv) * 2 * ELEVATION
    verts.append(_surface(theta, phi).reshape(-1, 3))
    uvs.append(_map(np.stack([gu.ravel(), 1.0 - gv.ravel()], -1), FACE_UV))
    f = _grid_faces(GRID, GRID, 0)
    ct, cp = theta.ravel()[f].mean(1), phi.ravel()[f].mean(1)
    hole = _in_ellipse(ct, cp, MOUTH_CENTER, MOUTH_HOLE)
    for e in EYE_CENTERS:
        hole |= _in_ellipse(ct, cp, e, EYE_HOLE)
    faces.append(f[~hole])
    n = GRID * GRID
    # eyeballs: pole + rings, hemisphere facing +z
    for (et, ep), box in zip(EYE_CENTERS, EYE_UV):
        center = _surface(np.array(et), np.array(ep)) - np.array([0.0, 0.0, 14.0])
        r = 12.0
        ang = np.linspace(0, 2 * np.pi, EYE_SEGMENTS, endpoint=False)
        pol = np.linspace(0, np.pi / 2, EYE_RINGS + 1)[1:]
        pp, aa = np.meshgrid(pol, ang, indexing="ij")
        ring = np.stack([np.sin(pp) * np.cos(aa), np.sin(pp) * np.sin(aa), np.cos(pp)], -1).reshape(-1, 3)
        pts = np.concatenate([[[0.0, 0.0, 1.0]], ring]) * r + center
        verts.append(pts)
        disc = np.concatenate([[[0.5, 0.5]], 0.5 + 0.5 * (pts[1:, :2] - center[:2]) / r * [1, -1]])
        uvs.append(_map(disc, box))
        ring_idx = np.arange(EYE_RINGS * EYE_SEGMENTS).reshape(EYE_RINGS, EYE_SEGMENTS) + n + 1
        nxt = np.roll(ring_idx, -1, axis=1)
        fan = np.stack([np.full(EYE_SEGMENTS, n), ring_idx[0], nxt[0]], -1)
        a, b, c, d = ring_idx[:-1], nxt[:-1], ring_idx[1:], nxt[1:]
        quads = np.concatenate(
            [np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)]
        )
        faces.append(np.concatenate([fan, quads]))
        n += 1 + EYE_RINGS * EYE_SEGMENTS
    # teeth strips behind the mouth
    for k, box in enumerate(TEETH_UV):
        t = np.linspace(-0.35, 0.35, TEETH_COLS)
        mid = _surface(t, np.full_like(t, MOUTH_CENTER[1])) - np.array([0.0, 0.0, 8.0])
        sign = -1.0 if k == 0 else 1.0  # upper teeth go up (y down), lower teeth down
        edge = mid + np.array([0.0, 1.0 * sign, 0.0])
        pts = np.concatenate([edge + np.array([0.0, 6.0 * sign, 0.0]), edge])
        verts.append(pts)
        uu = np.linspace(0, 1, TEETH_COLS)
        uvs.append(_map(np.stack([np.tile(uu, 2), np.repeat([1.0, 0.0], TEETH_COLS)], -1), box))
        faces.append(_grid_faces(2, TEETH_COLS, n))
        n += 2 * TEETH_COLS
    v = np.concatenate(verts).astype(np.float32)
    uv = np.clip(np.concatenate(uvs), 0.0, 1.0).astype(np.float32)
    fc = np.concatenate(faces).astype(np.int64)
    assert v.shape[0] == NUM_VERTICES == n, (v.shape, n)
    return Topology(v, uv, fc, fc.copy())


def face_topology() -> Topology:
    """The synthetic face topology: vertices (7306, 3) float32 mm (head frame), uvs (7306, 2) in [0, 1],
    faces (Fc, 3) int64 and faces_uv (== faces). Deterministic; a fresh copy on every call."""
    t = _build()
    return Topology(t.vertices.copy(), t.uvs.copy(), t.faces.copy(), t.faces_uv.copy())


def region_weights(vertices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-vertex weights (7306,) in [0, 1] of facial regions used to animate expressions: ``jaw``,
    ``smile``, ``brow``, ``blink``, ``cheek``. Computed from the rest shape's angles."""
    rest = _build().vertices if vertices is None else vertices
    p = rest.astype(np.float64) - HEAD_CENTER
    theta = np.arctan2(p[:, 0] / HEAD_RADII[0], p[:, 2] / HEAD_RADII[2])
    phi = np.arctan2(-p[:, 1] / HEAD_RADII[1], np.hypot(p[:, 0] / HEAD_RADII[0], p[:, 2] / HEAD_RADII[2]))
    w = {
        "jaw": np.clip((MOUTH_CENTER[1] + 0.02 - phi) / 0.35, 0, 1) * _gauss(theta, phi, 0, -0.7, 0.6, 1.0),
        "smile": _gauss(np.abs(theta), phi, 0.2, -0.4, 0.1, 0.08),
        "brow": _gauss(theta, phi, 0.0, 0.32, 0.5, 0.08),
        "blink": sum(_gauss(theta, phi, et, ep + 0.05, 0.12, 0.05) for et, ep in EYE_CENTERS),
        "cheek": _gauss(np.abs(theta), phi, 0.5, -0.2, 0.18, 0.2),
    }
    return {k: np.clip(v, 0, 1).astype(np.float32) for k, v in w.items()}
