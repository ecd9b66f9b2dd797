"""Synthetic raymarcher inputs for tests and benchmarks (no I/O, plain torch).

Coordinates are normalised: the volume is ``[-1, 1]^3`` (world mm divided by the volume radius, 256 mm for the
MVP model), so ``dt = 1 / 256`` is one millimetre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Scene", "pinhole_rays", "random_rotations", "random_scene", "head_scene"]


@dataclass
class Scene:
    """Inputs of :func:`ava256.kernels.raymarch` (see its docstring for shapes)."""

    raypos: Tensor
    raydir: Tensor
    tminmax: Tensor
    primpos: Tensor
    primrot: Tensor
    primscale: Tensor
    template: Tensor
    warp: Tensor | None = None

    def args(self) -> tuple:
        return (
            self.raypos,
            self.raydir,
            self.tminmax,
            self.primpos,
            self.primrot,
            self.primscale,
            self.template,
            self.warp,
        )

    def to(self, device=None, dtype=None) -> Scene:
        def cv(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return Scene(*(cv(t) for t in self.args()))


def random_rotations(shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """(*shape, 3, 3) uniformly random rotation matrices (float32)."""
    q, r = torch.linalg.qr(torch.randn(*shape, 3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    det = torch.linalg.det(q)
    q[..., :, 0] = q[..., :, 0] * det[..., None]
    return q


def _look_at(campos: Tensor) -> Tensor:
    """(N, 3, 3) camera->world rotations looking from ``campos`` (N, 3) at the origin (columns x, y, z)."""
    fwd = -campos / campos.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0]).expand_as(fwd)
    right = torch.linalg.cross(up, fwd)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(fwd, right)
    return torch.stack([right, down, fwd], dim=-1)


def pinhole_rays(
    campos: Tensor, height: int, width: int, fov_deg: float = 30.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Rays of N pinhole cameras at ``campos`` (N, 3) looking at the origin, clipped to the volume [-1, 1]^3.

    Returns:
        raypos (N, H, W, 3), raydir (N, H, W, 3) unit, tminmax (N, H, W, 2) (``tmin = tmax = 0`` for rays that
        miss the volume).
    """
    n = campos.shape[0]
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    cam = torch.stack([(xs - width / 2) / f, (ys - height / 2) / f, torch.ones_like(xs)], -1)  # (H, W, 3)
    rot = _look_at(campos)  # (N, 3, 3)
    d = torch.einsum("nij,hwj->nhwi", rot, cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = campos[:, None, None, :].expand(n, height, width, 3).contiguous()
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-1.0 - o) * inv, (1.0 - o) * inv
    tmin = torch.minimum(t1, t2).amax(-1).clamp(min=0.0)
    tmax = torch.maximum(t1, t2).amin(-1)
    miss = tmax <= tmin
    tmin = torch.where(miss, torch.zeros_like(tmin), tmin)
    tmax = torch.where(miss, torch.zeros_like(tmax), tmax)
    return o, d.contiguous(), torch.stack([tmin, tmax], -1).contiguous()


def _cameras(n: int, distance: float, generator: torch.Generator | None) -> Tensor:
    az = torch.rand(n, generator=generator) * 1.2 - 0.6
    el = torch.rand(n, generator=generator) * 0.6 - 0.3
    return distance * torch.stack(
        [torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)], -1
    )


def random_scene(
    n: int = 1,
    height: int = 12,
    width: int = 10,
    k: int = 8,
    d: int = 4,
    *,
    warp: bool = False,
    alpha_max: float = 8.0,
    half_size: tuple[float, float] = (0.15, 0.45),
    spread: float = 0.5,
    fov_deg: float = 35.0,
    seed: int = 0,
) -> Scene:
    """Small random scene: K randomly rotated boxes near the origin seen by N cameras (float32, CPU).

    ``alpha_max`` is the largest template alpha (density per unit length): ``alpha * dt`` is one sample's
    opacity. Warps are small random perturbations of the identity map.
    """
    g = torch.Generator().manual_seed(seed)
    o, dvec, tmm = pinhole_rays(_cameras(n, 3.0, g), height, width, fov_deg)
    pos = (torch.rand(n, k, 3, generator=g) * 2 - 1) * spread
    rot = random_rotations((n, k), g)
    lo, hi = half_size
    scale = 1.0 / (lo + (hi - lo) * torch.rand(n, k, 3, generator=g))
    rgb = torch.rand(n, k, 3, d, d, d, generator=g)
    alpha = torch.rand(n, k, 1, d, d, d, generator=g) * alpha_max
    template = torch.cat([rgb, alpha], 2)
    w = None
    if warp:
        lin = torch.linspace(-1, 1, d)
        zz, yy, xx = torch.meshgrid(lin, lin, lin, indexing="ij")
        ident = torch.stack([xx, yy, zz], 0)  # channels (x, y, z) of grid [z, y, x]
        w = ident[None, None] * 0.8 + 0.25 * (torch.rand(n, k, 3, d, d, d, generator=g) * 2 - 1)
    return Scene(o, dvec, tmm, pos, rot, scale, template, w)


def head_scene(
    n: int = 4,
    height: int = 333,
    width: int = 512,
    k: int = 16384,
    d: int = 8,
    *,
    warp: bool = False,
    volume_radius_mm: float = 256.0,
    alpha_max: float = 64.0,
    seed: int = 0,
) -> Scene:
    """Benchmark scene shaped like the MVP model's: K primitives tiling a head-sized ellipsoid.

    Primitives sit on an ellipsoid of semi-axes (80, 105, 95) mm (Fibonacci lattice, so evenly spread), each
    oriented along the surface normal with a little random twist, sized 1.5x the lattice spacing (so that
    neighbours overlap, as in MVP), and seen by N cameras 1 m away with a 20 degree field of view (the head
    fills most of the frame). ``alpha_max`` (per unit length, normalised) makes a ray through the shell
    saturate within a few samples at ``dt = 1/256``, as the trained model does.
    """
    g = torch.Generator().manual_seed(seed)
    axes = torch.tensor([80.0, 105.0, 95.0]) / volume_radius_mm
    i = torch.arange(k, dtype=torch.float64) + 0.5
    phi = torch.arccos(1 - 2 * i / k)
    theta = math.pi * (1 + 5**0.5) * i
    unit = torch.stack(
        [torch.cos(theta) * torch.sin(phi), torch.cos(phi), torch.sin(theta) * torch.sin(phi)], -1
    )
    unit = unit.float()
    pos = unit * axes
    normal = unit / axes
    normal = normal / normal.norm(dim=-1, keepdim=True)
    area = (
        4
        * math.pi
        * ((axes[0] * axes[1]) ** 1.6 + (axes[0] * axes[2]) ** 1.6 + (axes[1] * axes[2]) ** 1.6) ** (1 / 1.6)
        / 3
    )
    spacing = math.sqrt(float(area) / k)
    half = 0.75 * spacing
    # local frame: z along the normal
    helper = torch.where(
        normal[:, 1:2].abs() < 0.9, torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    )
    tx = torch.linalg.cross(helper, normal)
    tx = tx / tx.norm(dim=-1, keepdim=True)
    ty = torch.linalg.cross(normal, tx)
    twist = (torch.rand(k, generator=g) - 0.5) * 0.6
    c, s = torch.cos(twist)[:, None], torch.sin(twist)[:, None]
    tx, ty = c * tx + s * ty, -s * tx + c * ty
    rot = torch.stack([tx, ty, normal], 1)  # rows: world->local
    jitter = 1 + 0.1 * (torch.rand(n, k, 3, generator=g) - 0.5)
    scale = (1.0 / half) * jitter
    pos = pos[None].expand(n, k, 3).contiguous()
    rot = rot[None].expand(n, k, 3, 3).contiguous()
    cams = _cameras(n, 1000.0 / volume_radius_mm, g)
    o, dvec, tmm = pinhole_rays(cams, height, width, fov_deg=20.0)
    template = torch.rand(n, k, 4, d, d, d, generator=g)
    template[:, :, 3] *= alpha_max
    w = None
    if warp:
        lin = torch.linspace(-1, 1, d)
        zz, yy, xx = torch.meshgrid(lin, lin, lin, indexing="ij")
        ident = torch.stack([xx, yy, zz], 0)
        w = ident[None, None] * 0.9 + 0.1 * (torch.rand(n, k, 3, d, d, d, generator=g) * 2 - 1)
    return Scene(o, dvec, tmm, pos, rot, scale, template, w)
