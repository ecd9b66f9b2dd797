"""Pure-PyTorch MVP raymarcher (Lombardi et al. 2021, "Mixture of Volumetric Primitives").

This is the readable oracle for the CUDA extension and the CPU path. It implements the raymarcher contract of
``ava256.kernels.raymarch`` literally, with plain differentiable torch ops (autograd gives the gradients):

* A world point ``x`` lies in primitive ``k`` iff ``y = (R_k @ (x - p_k)) * s_k`` is in ``[-1, 1]^3``.
* RGBA (and the optional warp) are sampled trilinearly at ``y`` with ``align_corners=True`` semantics, grids
  indexed ``[z, y, x]``. With a warp, the warp field is sampled at ``y`` first, its output clamped to
  ``[-1, 1]`` (border padding), and the template is sampled at the warped coordinate.
* The sampled opacity is faded towards the primitive's border (as in MVP): ``alpha' = alpha * fade(y)`` with
  ``fade(y) = exp(-fadescale * ((|y_x|^fadeexp + |y_y|^fadeexp) + |y_z|^fadeexp))`` of the primitive-local ``y``
  (before the warp), so gradients also reach the transforms through the fade. ``fadescale = 0`` turns it off
  (``alpha' = alpha`` exactly).
* Rays march ``t = tmin + i * dt`` while ``t < tmax``. At each step, for every primitive containing the point in
  ascending ``k``: ``a = min(1 - A, alpha' * dt)``, ``C += rgb * a``, ``A += a``; a ray stops as soon as
  ``A >= termination`` (checked after every sample; the default 1 stops it at the sample that saturates it).

Work is chunked over rays so memory is bounded: for each chunk the ray/box intersection with every primitive's
oriented box gives, per ray, the primitives it can hit and the ``t`` interval in which it is inside each; only
those (ray, primitive) pairs are evaluated at each step.

Floating-point conventions shared with the CUDA kernel (so that the discrete "is the point inside" decisions
agree bit for bit): ``t = tmin + float(i) * dt``; ``x = o + t * d``; ``y_j = (((R_j0 * dx) + R_j1 * dy) + R_j2
* dz) * s_j`` with ``d? = x? - p?``, each op rounded separately (no fused multiply-add). The fade is a smooth
factor and need not agree bit for bit: the kernel squares for ``fadeexp = 8`` and uses ``powf``/``expf``
otherwise, and torch's CPU ``pow``/``exp`` round a SIMD batch and a scalar tail differently (last ulp), so with
the fade on, results depend on the chunking at that level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "raymarch_reference",
    "ray_box_intervals",
    "local_coords",
    "trilinear",
    "fade",
    "check_march_params",
    "FADESCALE",
    "FADEEXP",
    "TERMINATION",
]

#: Defaults of the opacity border fade and the termination threshold (those of the original MVP raymarcher).
FADESCALE = 8.0
FADEEXP = 8.0
TERMINATION = 1.0

#: Relative padding of the ray/box intersection intervals, so that the cull never drops a sample that the
#: exact containment test on ``y`` would keep.
_INTERVAL_PAD = 1e-4


def local_coords(x: Tensor, pos: Tensor, rot: Tensor, scale: Tensor) -> Tensor:
    """Primitive-local coordinates ``y = (rot @ (x - pos)) * scale``.

    Args:
        x: (..., 3) world points. pos: (..., 3). rot: (..., 3, 3). scale: (..., 3) (all broadcastable).

    Returns:
        (..., 3) local coordinates; the primitive's box is ``[-1, 1]^3``. Evaluated in a fixed order with every
        product and sum rounded separately, exactly as the CUDA kernel does.
    """
    d = x - pos
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    rows = []
    for j in range(3):
        acc = rot[..., j, 0] * dx
        acc = acc + rot[..., j, 1] * dy
        acc = acc + rot[..., j, 2] * dz
        rows.append(acc * scale[..., j])
    return torch.stack(rows, dim=-1)


def fade(y: Tensor, fadescale: float, fadeexp: float) -> Tensor:
    """Opacity border fade ``exp(-fadescale * ((|y_x|^e + |y_y|^e) + |y_z|^e))``, ``e = fadeexp``.

    Args:
        y: (..., 3) primitive-local coordinates. fadescale >= 0, fadeexp >= 1.

    Returns:
        (...) factors in ``(0, 1]`` (``exp(-3 * fadescale)`` at a corner of the box), differentiable w.r.t. ``y``.
    """
    p = y.abs().pow(fadeexp)
    return torch.exp(-fadescale * ((p[..., 0] + p[..., 1]) + p[..., 2]))


def check_march_params(dt: float, fadescale: float, fadeexp: float, termination: float) -> None:
    """ValueError (naming the argument) unless ``dt > 0``, ``fadescale >= 0``, ``fadeexp >= 1`` (so that the
    fade's derivative is bounded) and ``0 < termination <= 1``, all finite."""
    checks = (
        ("dt", dt, dt > 0, "> 0"),
        ("fadescale", fadescale, fadescale >= 0, ">= 0"),
        ("fadeexp", fadeexp, fadeexp >= 1, ">= 1"),
        ("termination", termination, 0 < termination <= 1, "in (0, 1]"),
    )
    for name, value, ok, want in checks:
        if not (ok and math.isfinite(value)):
            raise ValueError(f"{name} must be finite and {want}, got {value!r}")


def ray_box_intervals(
    origin: Tensor, direction: Tensor, pos: Tensor, rot: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    """Slab test of rays against primitives' oriented boxes.

    Args:
        origin, direction: (R, 1, 3) rays. pos: (1, K, 3) or (R, K, 3). rot: (..., K, 3, 3). scale: (..., K, 3).

    Returns:
        ``(tnear, tfar)`` each (R, K): the ray is inside box k for ``t`` in ``[tnear, tfar]`` (empty when
        ``tnear > tfar``), padded by a small relative margin so the interval is conservative.
    """
    a = local_coords(origin, pos, rot, scale)  # (R, K, 3) local position at t = 0
    b = torch.einsum("...ij,...j->...i", rot, direction) * scale  # (R, K, 3) local direction
    tiny = torch.finfo(b.dtype).tiny * 1e6
    b = torch.where(b.abs() < tiny, torch.where(b < 0, -tiny, tiny), b)
    t1 = (-1.0 - a) / b
    t2 = (1.0 - a) / b
    tnear = torch.minimum(t1, t2).amax(-1)
    tfar = torch.maximum(t1, t2).amin(-1)
    pad = _INTERVAL_PAD * (1.0 + torch.maximum(tnear.abs(), tfar.abs()).nan_to_num(0.0, 0.0, 0.0))
    return tnear - pad, tfar + pad


def trilinear(grid_flat: Tensor, index: Tensor, y: Tensor, size: int) -> Tensor:
    """Trilinear sample (align_corners=True) of per-primitive voxel grids.

    Args:
        grid_flat: (P * D^3, C) voxel values of all primitives, channel last; voxel ``(z, y, x)`` of primitive
            ``p`` at row ``p * D^3 + (z * D + y) * D + x``.
        index: (S,) int64 primitive index ``p`` of each sample.
        y: (S, 3) coordinates in ``[-1, 1]^3``, ordered (x, y, z).
        size: D.

    Returns:
        (S, C) sampled values.
    """
    d = size
    u = (y + 1.0) * 0.5 * (d - 1)
    u0 = torch.floor(u).clamp(0, max(d - 2, 0))
    f = u - u0
    i0 = u0.long()
    i1 = (i0 + 1).clamp(max=d - 1)
    base = index * (d**3)
    out = 0.0
    for cz in (0, 1):
        iz = i1[:, 2] if cz else i0[:, 2]
        wz = f[:, 2] if cz else 1.0 - f[:, 2]
        for cy in (0, 1):
            iy = i1[:, 1] if cy else i0[:, 1]
            wy = f[:, 1] if cy else 1.0 - f[:, 1]
            for cx in (0, 1):
                ix = i1[:, 0] if cx else i0[:, 0]
                wx = f[:, 0] if cx else 1.0 - f[:, 0]
                w = (wz * wy * wx)[:, None]
                out = out + w * grid_flat[base + (iz * d + iy) * d + ix]
    return out


def _march_chunk(
    o: Tensor,
    dvec: Tensor,
    tmin: Tensor,
    tmax: Tensor,
    pos: Tensor,
    rot: Tensor,
    scale: Tensor,
    tmpl_flat: Tensor,
    warp_flat: Tensor | None,
    size: int,
    dt: float,
    fadescale: float,
    fadeexp: float,
    termination: float,
) -> Tensor:
    """March one chunk of R rays of one image against its K primitives; returns (R, 4) RGBA."""
    r = o.shape[0]
    dtype = o.dtype
    color = torch.zeros(r, 3, dtype=dtype, device=o.device)
    acc = torch.zeros(r, dtype=dtype, device=o.device)

    tnear, tfar = ray_box_intervals(o[:, None], dvec[:, None], pos[None], rot[None], scale[None])
    tnear = torch.maximum(tnear, tmin[:, None])
    tfar = torch.minimum(tfar, tmax[:, None])
    hit = tnear <= tfar
    ray_idx, prim_idx = hit.nonzero(as_tuple=True)  # sorted by ray, then by k (row-major)
    if ray_idx.numel() == 0:
        return torch.cat([color, acc[:, None]], dim=1)
    tn, tf = tnear[ray_idx, prim_idx], tfar[ray_idx, prim_idx]

    dt_t = torch.tensor(dt, dtype=dtype, device=o.device)
    # Step range that can touch any hit interval (samples outside all intervals contribute nothing).
    steps_lo = ((tn - tmin[ray_idx]) / dt).floor().clamp(min=0)
    steps_hi = ((tf - tmin[ray_idx]) / dt).ceil()
    i_lo = int(steps_lo.min().item())
    i_hi = int(min(steps_hi.max().item(), 1e9))

    for i in range(i_lo, i_hi + 1):
        t = tmin + torch.tensor(float(i), dtype=dtype, device=o.device) * dt_t  # (R,)
        live = (t < tmax) & (acc < termination)
        t_pair = t[ray_idx]
        sel = live[ray_idx] & (t_pair >= tn) & (t_pair <= tf)
        if not bool(sel.any()):
            continue
        rs, ks = ray_idx[sel], prim_idx[sel]
        x = o[rs] + t[rs, None] * dvec[rs]
        y = local_coords(x, pos[ks], rot[ks], scale[ks])
        inside = (y.abs() <= 1.0).all(-1)
        if not bool(inside.any()):
            continue
        rs, ks, y = rs[inside], ks[inside], y[inside]
        fd = fade(y, fadescale, fadeexp) if fadescale != 0 else None  # of the local y, before the warp
        if warp_flat is not None:
            y = trilinear(warp_flat, ks, y, size).clamp(-1.0, 1.0)
        rgba = trilinear(tmpl_flat, ks, y, size)
        alpha = rgba[:, 3] if fd is None else rgba[:, 3] * fd
        # Rank of each sample among the samples of its ray at this step (pairs are sorted by ray, then k).
        first = torch.ones_like(rs, dtype=torch.bool)
        first[1:] = rs[1:] != rs[:-1]
        start = torch.cummax(torch.where(first, torch.arange(rs.numel(), device=rs.device), 0), 0).values
        rank = torch.arange(rs.numel(), device=rs.device) - start
        for j in range(int(rank.max().item()) + 1):
            m = rank == j
            rj = rs[m]
            a_prev = acc[rj]
            w = alpha[m] * dt
            a = torch.where(a_prev < termination, torch.minimum(1.0 - a_prev, w), torch.zeros_like(w))
            color = color.index_add(0, rj, rgba[m, :3] * a[:, None])
            acc = acc.index_add(0, rj, a)
    return torch.cat([color, acc[:, None]], dim=1)


def raymarch_reference(
    raypos: Tensor,
    raydir: Tensor,
    tminmax: Tensor,
    primpos: Tensor,
    primrot: Tensor,
    primscale: Tensor,
    template: Tensor,
    warp: Tensor | None = None,
    *,
    dt: float,
    fadescale: float = FADESCALE,
    fadeexp: float = FADEEXP,
    termination: float = TERMINATION,
    chunk_elems: int = 1 << 22,
) -> Tensor:
    """Raymarch N images of H x W rays through K volumetric primitives (reference implementation).

    Args:
        raypos, raydir: (N, H, W, 3) ray origins and unit directions (world units).
        tminmax: (N, H, W, 2) per-ray marching interval.
        primpos: (N, K, 3) primitive centres. primrot: (N, K, 3, 3) world->local rotations. primscale: (N, K, 3)
            world->local scales (the box is ``[-1, 1]^3`` in local coordinates).
        template: (N, K, 4, D, D, D) RGBA voxel grids, channels (r, g, b, alpha), grid indexed [z, y, x].
        warp: optional (N, K, 3, D, D, D) warp fields (local -> template coordinates).
        dt: step size in world units.
        fadescale, fadeexp: opacity border fade ``exp(-fadescale * sum_j |y_j|^fadeexp)`` (module docstring);
            ``fadescale = 0``: hard-edged primitives.
        termination: a ray stops once its accumulated alpha reaches this (in ``(0, 1]``).
        chunk_elems: bound on (rays x primitives) evaluated at once by the ray/box culling.

    Returns:
        (N, H, W, 4) accumulated (r, g, b, alpha), differentiable (autograd) w.r.t. template, warp, primpos,
        primrot and primscale.
    """
    check_march_params(dt, fadescale, fadeexp, termination)
    k, d = check_grid_shapes(raypos, primpos, template, warp)

    def march_image(b: int, tmpl_flat: Tensor, warp_flat: Tensor | None) -> ChunkMarcher:
        def march(o: Tensor, dv: Tensor, tmin: Tensor, tmax: Tensor) -> Tensor:
            return _march_chunk(
                o,
                dv,
                tmin,
                tmax,
                primpos[b],
                primrot[b],
                primscale[b],
                tmpl_flat,
                warp_flat,
                d,
                dt,
                fadescale,
                fadeexp,
                termination,
            )

        return march

    return march_images(
        raypos, raydir, tminmax, template, warp, max(1, chunk_elems // max(k, 1)), march_image
    )


#: Marches one chunk of rays of one image: (origins (R,3), directions (R,3), tmin (R,), tmax (R,)) -> (R, 4).
ChunkMarcher = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def check_grid_shapes(
    raypos: Tensor, primpos: Tensor, template: Tensor, warp: Tensor | None
) -> tuple[int, int]:
    """Check template (N, K, 4, D, D, D) and warp (N, K, 3, D, D, D) against the rays and primitives; returns
    (K, D). ValueError names the offending shape."""
    n = raypos.shape[0]
    k = primpos.shape[1]
    d = template.shape[-1]
    if template.shape != (n, k, 4, d, d, d):
        raise ValueError(
            f"template must be (N, K, 4, D, D, D) = {(n, k, 4, d, d, d)}, got {tuple(template.shape)}"
        )
    if warp is not None and warp.shape != (n, k, 3, d, d, d):
        raise ValueError(f"warp must be (N, K, 3, D, D, D) = {(n, k, 3, d, d, d)}, got {tuple(warp.shape)}")
    return k, d


def march_images(
    raypos: Tensor,
    raydir: Tensor,
    tminmax: Tensor,
    template: Tensor,
    warp: Tensor | None,
    chunk: int,
    march_image: Callable[[int, Tensor, Tensor | None], ChunkMarcher],
) -> Tensor:
    """The driver shared by the CPU raymarchers: per image ``b``, flatten its rays and its grids (template to
    (K*D^3, 4), warp to (K*D^3, 3), voxel-major), get that image's chunk marcher from
    ``march_image(b, tmpl_flat, warp_flat)`` and run it over ``chunk`` rays at a time (bounded memory).
    Returns (N, H, W, 4)."""
    n, h, w_, _ = raypos.shape
    k, d = template.shape[1], template.shape[-1]
    out_images = []
    for b in range(n):
        o = raypos[b].reshape(-1, 3)
        dv = raydir[b].reshape(-1, 3)
        tmm = tminmax[b].reshape(-1, 2)
        tmpl_flat = template[b].permute(0, 2, 3, 4, 1).reshape(k * d**3, 4)
        warp_flat = None if warp is None else warp[b].permute(0, 2, 3, 4, 1).reshape(k * d**3, 3)
        march = march_image(b, tmpl_flat, warp_flat)
        pieces = [
            march(o[s : s + chunk], dv[s : s + chunk], tmm[s : s + chunk, 0], tmm[s : s + chunk, 1])
            for s in range(0, o.shape[0], chunk)
        ]
        out_images.append(torch.cat(pieces, 0).reshape(h, w_, 4))
    return torch.stack(out_images, 0)


def num_steps(tmin: float, tmax: float, dt: float) -> int:
    """Number of samples ``t = tmin + i * dt`` with ``t < tmax`` (a helper for tests and docs)."""
    return max(0, math.ceil((tmax - tmin) / dt))
