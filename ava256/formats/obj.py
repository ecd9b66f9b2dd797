"""Wavefront OBJ mesh topology (``face_topology.obj``): vertices, uv coordinates and triangles.

Parsed with regular expressions over the whole text (no per-line Python loop). Indices are returned
0-based; negative (relative) OBJ indices are resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ava256.formats._text import to_text

_V = re.compile(r"^v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.M)
_VT = re.compile(r"^vt[ \t]+(\S+)[ \t]+(\S+)", re.M)
_F = re.compile(r"^f[ \t]+(.*?)[ \t]*$", re.M)
_CORNER = re.compile(r"^(-?\d+)(?:/(-?\d*))?(?:/(-?\d*))?$")


@dataclass
class Topology:
    """A triangle mesh with a uv layout.

    vertices (V, 3) float32; uvs (Vt, 2) float32 in [0, 1]^2; faces (Fc, 3) int64 vertex indices;
    faces_uv (Fc, 3) int64 uv indices (-1 where the OBJ gives none). All indices 0-based."""

    vertices: np.ndarray
    uvs: np.ndarray
    faces: np.ndarray
    faces_uv: np.ndarray

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])


def _floats(rows: list[tuple[str, ...]], what: str, ncol: int) -> np.ndarray:
    if not rows:
        return np.zeros((0, ncol), np.float32)
    try:
        return np.array(rows, dtype=np.float64).astype(np.float32)
    except ValueError as exc:
        raise ValueError(f"OBJ: non-numeric {what} ({exc})") from exc


def _resolve(idx: np.ndarray, n: int, what: str) -> np.ndarray:
    out = np.where(idx < 0, idx + n, idx - 1)
    bad = (out < 0) | (out >= n)
    if np.any(bad & (idx != 0)) or np.any(idx == 0):
        raise ValueError(f"OBJ: face {what} index out of range (have {n})")
    return out


def read_obj(data: bytes | str) -> Topology:
    """Parse vertices (``v``), uv coordinates (``vt``) and triangular faces (``f a/ta b/tb c/tc``).
    ValueError for non-triangular faces, indices out of range or malformed numbers."""
    text = to_text(data, "OBJ")
    verts = _floats(_V.findall(text), "vertex", 3)
    uvs = _floats(_VT.findall(text), "uv", 2)
    flines = _F.findall(text)
    if not flines:
        return Topology(verts, uvs, np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64))
    tokens = " ".join(flines).split()
    if len(tokens) != 3 * len(flines):
        counts = np.array([len(f.split()) for f in flines])
        bad = int(np.flatnonzero(counts != 3)[0])
        raise ValueError(f"OBJ: face {bad + 1} has {counts[bad]} corners; only triangles are supported")
    corners = [_CORNER.match(t) for t in tokens]
    if not all(corners):
        bad_t = next(t for t, m in zip(tokens, corners) if m is None)
        raise ValueError(f"OBJ: malformed face corner {bad_t!r}")
    vi = np.array([m.group(1) for m in corners], dtype=np.int64).reshape(-1, 3)
    ti_raw = [m.group(2) or "0" for m in corners]
    ti = np.array(ti_raw, dtype=np.int64).reshape(-1, 3)
    faces = _resolve(vi, verts.shape[0], "vertex")
    if np.all(ti == 0):
        faces_uv = np.full_like(faces, -1)
    else:
        faces_uv = _resolve(ti, uvs.shape[0], "uv")
    return Topology(verts, uvs, faces, faces_uv)


def write_obj(topo: Topology) -> bytes:
    """Serialise a topology as OBJ (``v``, ``vt``, ``f v/vt``; 1-based)."""
    parts = []
    parts.append("".join(f"v {x:.9g} {y:.9g} {z:.9g}\n" for x, y, z in topo.vertices.tolist()))
    parts.append("".join(f"vt {u:.9g} {v:.9g}\n" for u, v in topo.uvs.tolist()))
    f = topo.faces + 1
    if np.all(topo.faces_uv >= 0):
        ft = topo.faces_uv + 1
        parts.append(
            "".join(
                f"f {a}/{ta} {b}/{tb} {c}/{tc}\n" for (a, b, c), (ta, tb, tc) in zip(f.tolist(), ft.tolist())
            )
        )
    else:
        parts.append("".join(f"f {a} {b} {c}\n" for a, b, c in f.tolist()))
    return "".join(parts).encode()
