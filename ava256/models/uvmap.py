"""The face topology's uv layout as lookup tables for the model.

A :class:`UVLayout` rasterises the mesh's uv charts onto an ``R x R`` grid once (numpy, at construction) and
keeps, for every grid cell centre, the triangle that covers it and the barycentric coordinates of the centre in
that triangle. Cells that no triangle covers take the nearest triangle (barycentrics clamped onto it), so every
cell — and therefore every volumetric primitive placed on a cell — lies on the mesh surface.

Grid convention (the uv texture's, OBJ orientation with v up): cell ``(i, j)`` (row ``i``, column ``j``) has
centre ``u = (j + 0.5) / R``, ``v = 1 - (i + 0.5) / R``; primitive ``k = i * R + j``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ava256.topology import face_topology

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopologyArrays:
    """The parts of a mesh topology the model needs.

    vertices (V, 3) float32 template positions (only used for the vertex count), uvs (Vt, 2) float32 in [0, 1],
    faces (Fc, 3) int64 vertex indices, faces_uv (Fc, 3) int64 indices into ``uvs``.
    """

    vertices: np.ndarray
    uvs: np.ndarray
    faces: np.ndarray
    faces_uv: np.ndarray


def load_topology() -> TopologyArrays:
    """The package's face topology (``ava256.topology.face_topology()``, 7306 vertices), shared with synth."""

    topo = face_topology()
    return TopologyArrays(
        vertices=np.asarray(topo.vertices, np.float32),
        uvs=np.asarray(topo.uvs, np.float32),
        faces=np.asarray(topo.faces, np.int64),
        faces_uv=np.asarray(topo.faces_uv, np.int64),
    )


def grid_topology(n_u: int, n_v: int) -> TopologyArrays:
    """A small regular grid mesh (``n_u * n_v`` vertices) on a spherical cap; for unit tests of the model."""
    u, v = np.meshgrid(np.linspace(0, 1, n_u), np.linspace(0, 1, n_v))
    theta = (u - 0.5) * 2.0
    phi = (v - 0.5) * 1.6
    verts = np.stack([np.sin(theta) * np.cos(phi), np.sin(phi), np.cos(theta) * np.cos(phi)], -1) * 100.0
    uvs = np.stack([u, v], -1).reshape(-1, 2).astype(np.float32)
    idx = np.arange(n_u * n_v).reshape(n_v, n_u)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return TopologyArrays(verts.reshape(-1, 3).astype(np.float32), uvs, faces.astype(np.int64), faces.copy())


def _barycentric(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points p (..., 2) in triangle tri (3, 2) -> (..., 3)."""
    a, b, c = tri
    v0, v1 = b - a, c - a
    d = v0[0] * v1[1] - v1[0] * v0[1]
    if abs(d) < 1e-20:
        return np.full(p.shape[:-1] + (3,), -1.0)
    w = p - a
    l1 = (w[..., 0] * v1[1] - v1[0] * w[..., 1]) / d
    l2 = (v0[0] * w[..., 1] - w[..., 0] * v0[1]) / d
    return np.stack([1.0 - l1 - l2, l1, l2], -1)


def rasterize_uv(topo: TopologyArrays, res: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangle index (R, R) int64 and barycentrics (R, R, 3) float32 for every uv grid cell centre."""
    tri_uv = topo.uvs[topo.faces_uv].astype(np.float64)  # (Fc, 3, 2)
    tri_idx = np.full((res, res), -1, np.int64)
    bary = np.zeros((res, res, 3), np.float64)
    # (column, row) bounds of every triangle; rows run along 1 - v
    rc = np.stack([tri_uv[..., 0], 1.0 - tri_uv[..., 1]], -1)
    lo = np.clip(np.floor(rc.min(1) * res - 0.5).astype(int), 0, res - 1)
    hi = np.clip(np.ceil(rc.max(1) * res - 0.5).astype(int), 0, res - 1)
    for f in range(len(tri_uv)):
        (j0, i0), (j1, i1) = lo[f], hi[f]
        jj, ii = np.meshgrid(np.arange(j0, j1 + 1), np.arange(i0, i1 + 1))
        p = np.stack([(jj + 0.5) / res, 1.0 - (ii + 0.5) / res], -1)
        b = _barycentric(p, tri_uv[f])
        inside = (b >= -1e-9).all(-1) & (tri_idx[ii, jj] < 0)
        tri_idx[ii[inside], jj[inside]] = f
        bary[ii[inside], jj[inside]] = b[inside]
    empty = np.argwhere(tri_idx < 0)
    if len(empty):
        # nearest triangle by centroid, barycentrics clamped onto the triangle
        cent = tri_uv.mean(1)
        pts = (empty[:, ::-1] + 0.5) / res
        pts[:, 1] = 1.0 - pts[:, 1]
        for s in range(0, len(pts), 2048):
            p = pts[s : s + 2048]
            d2 = ((p[:, None, :] - cent[None]) ** 2).sum(-1)
            near = d2.argmin(1)
            for (i, j), q, f in zip(empty[s : s + 2048], p, near):
                b = np.clip(_barycentric(q, tri_uv[f]), 0.0, None)
                bary[i, j] = b / max(b.sum(), 1e-12) if b.sum() > 0 else np.array([1 / 3] * 3)
                tri_idx[i, j] = f
    return tri_idx, bary.astype(np.float32)


def vertex_uvs(topo: TopologyArrays) -> np.ndarray:
    """One uv (V, 2) float32 per vertex (the first uv any face gives it; 0.5 for unreferenced vertices)."""
    n = len(topo.vertices)
    out = np.full((n, 2), 0.5, np.float32)
    fv, fuv = topo.faces.reshape(-1), topo.faces_uv.reshape(-1)
    order = np.arange(len(fv))[::-1]  # write last first so the first occurrence wins
    out[fv[order]] = topo.uvs[fuv[order]]
    return out


class UVLayout(torch.nn.Module):
    """Precomputed uv lookup tables as (non-persistent) buffers.

    Args:
        topo: mesh topology.
        resolutions: grid sizes to rasterise (e.g. the encoder's input size and the primitive grid size).
    """

    def __init__(self, topo: TopologyArrays, resolutions: list[int]):
        super().__init__()
        self.n_vertices = len(topo.vertices)
        self.register_buffer("faces", torch.as_tensor(topo.faces), persistent=False)
        self.register_buffer("faces_uv", torch.as_tensor(topo.faces_uv), persistent=False)
        self.register_buffer("uvs", torch.as_tensor(topo.uvs), persistent=False)
        vuv = torch.as_tensor(vertex_uvs(topo))
        # grid_sample coordinates in [-1, 1]: x <- u, y <- 1 - v (rows run down)
        grid = torch.stack([vuv[:, 0] * 2 - 1, 1 - vuv[:, 1] * 2], -1)
        self.register_buffer("vertex_grid", grid.view(1, 1, -1, 2), persistent=False)
        self.resolutions = sorted(set(int(r) for r in resolutions))
        for r in self.resolutions:
            tri, bary = rasterize_uv(topo, r)
            self.register_buffer(f"tri_{r}", torch.as_tensor(tri), persistent=False)
            self.register_buffer(f"bary_{r}", torch.as_tensor(bary), persistent=False)
            log.debug("uv layout %dx%d rasterised", r, r)

    def tables(self, res: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Triangle index (R, R) and barycentrics (R, R, 3) of grid ``res``."""
        return getattr(self, f"tri_{res}"), getattr(self, f"bary_{res}")

    def to_uv_image(self, verts: torch.Tensor, res: int) -> torch.Tensor:
        """Per-vertex attributes (B, V, C) -> uv image (B, C, R, R) by barycentric interpolation."""
        tri, bary = self.tables(res)
        corner = self.faces[tri]  # (R, R, 3) vertex ids
        g = verts[:, corner]  # (B, R, R, 3, C)
        img = (g * bary[None, ..., None].to(g.dtype)).sum(-2)
        return img.permute(0, 3, 1, 2).contiguous()

    def sample_vertices(self, image: torch.Tensor) -> torch.Tensor:
        """uv image (B, C, R, R) -> per-vertex values (B, V, C) (bilinear at each vertex's uv)."""
        grid = self.vertex_grid.expand(image.shape[0], -1, -1, -1).to(image.dtype)
        s = torch.nn.functional.grid_sample(image, grid, mode="bilinear", align_corners=False)
        return s[:, :, 0].permute(0, 2, 1)

    def surface_frames(
        self, verts: torch.Tensor, res: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Points, tangent frames and sizes of the ``res x res`` uv cells on a mesh.

        Args:
            verts: (B, V, 3) vertex positions (any length unit).
        Returns:
            pos (B, K, 3) cell centres on the surface, rot (B, K, 3, 3) rows = (tangent u, tangent v, normal)
            orthonormal, size (B, K) length of one uv cell's side on the surface (same unit as ``verts``).
        """
        tri, bary = self.tables(res)
        tri = tri.reshape(-1)
        corner = self.faces[tri]  # (K, 3)
        p = verts[:, corner]  # (B, K, 3, 3)
        pos = (p * bary.reshape(1, -1, 3, 1).to(p.dtype)).sum(2)
        uv = self.uvs[self.faces_uv[tri]].to(p.dtype)  # (K, 3, 2)
        e1, e2 = p[:, :, 1] - p[:, :, 0], p[:, :, 2] - p[:, :, 0]
        d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
        det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        inv = 1.0 / det
        t = (e1 * d2[None, :, 1:2] - e2 * d1[None, :, 1:2]) * inv[None, :, None]
        b = (e2 * d1[None, :, 0:1] - e1 * d2[None, :, 0:1]) * inv[None, :, None]
        n = torch.nn.functional.normalize(torch.cross(t, b, dim=-1), dim=-1, eps=1e-8)
        tu = torch.nn.functional.normalize(t - (t * n).sum(-1, keepdim=True) * n, dim=-1, eps=1e-8)
        tv = torch.cross(n, tu, dim=-1)
        rot = torch.stack([tu, tv, n], dim=-2)
        # surface length per uv unit = sqrt(world area / uv area), times one cell (1 / res)
        area3 = torch.linalg.vector_norm(torch.cross(e1, e2, dim=-1), dim=-1)
        scale = torch.sqrt(area3 / det.abs()[None].clamp_min(1e-12)).clamp(max=1e4) / res
        return pos, rot, scale
