"""Vectorised pure-PyTorch MVP raymarcher: the fast CPU path (works on any device).

Same signature and semantics as :func:`ava256.kernels.reference.raymarch_reference` (the oracle), but with no
Python loop over march steps. Per chunk of rays:

1. **Enumerate samples.** A bounding-sphere cull (:func:`sphere_cull`: two small matrix products) and then
   the reference's ray/box slab test give each (ray, primitive) pair its ``t`` interval; every step ``i`` whose ``t = tmin + i * dt``
   lies in a hit pair's interval becomes a candidate sample, enumerated with ``torch.repeat_interleave``. A
   candidate is kept iff the reference would evaluate it: ``t < tmax``, ``t`` inside the pair's (padded)
   interval and the exact containment test ``|y| <= 1`` on the local coordinates, computed with the same
   rounded operations.
2. **Sample** the warp (if any) and the RGBA template for all kept samples at once (one gather each).
3. **Composite in closed form.** Samples are stably sorted by (ray, step) (k stays ascending within a step).
   With ``w_n = alpha_n * fade(y_n) * dt >= 0`` (the reference's border fade, of the pre-warp local ``y_n``) and ``S_n`` the ray's inclusive prefix sum of ``w`` (float64), the
   sequential rule ``a = min(1 - A, w); A += a`` with termination checked after every sample gives
   ``A_n = min(1, S_n)`` while the ray is live, hence ``a_n = [min(1, S_{n-1}) < termination] * (min(1, S_n)
   - min(1, S_{n-1}))``; ``C = sum_n rgb_n a_n`` and ``A = sum_n a_n`` are two ``index_add`` calls.

Autograd differentiates through these few large ops, so the backward is a handful of scatters per chunk
instead of one per step. The closed form needs non-negative opacities; a template with a negative alpha voxel
is handed to the reference (logged).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from .reference import (
    FADEEXP,
    FADESCALE,
    TERMINATION,
    ChunkMarcher,
    check_grid_shapes,
    check_march_params,
    fade,
    local_coords,
    march_images,
    ray_box_intervals,
    raymarch_reference,
)

__all__ = ["raymarch_vectorized", "sphere_cull", "trilinear_gather"]

log = logging.getLogger(__name__)

#: Largest step index considered (as in the reference).
_MAX_STEP = 1e9
#: (rays x primitives) per block of the bounding-sphere cull.
_CULL_BLOCK = 1 << 19
#: Steps in the first window of the termination-aware enumeration (windows then double).
_FIRST_WINDOW = 2


def _take(src: Tensor, index: Tensor) -> Tensor:
    """``src[index]`` for an int64 index along dim 0, via ``index_select`` on rows (several times faster than
    advanced indexing on CPU; its backward is one ``index_add``)."""
    if src.dim() == 1:
        return src.index_select(0, index)
    rows = src.reshape(src.shape[0], math.prod(src.shape[1:]))
    return rows.index_select(0, index).reshape(index.shape[0], *src.shape[1:])


def _take_prims(pos: Tensor, rot: Tensor, scale: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(pos[index], rot[index], scale[index])`` with a single gather of the packed (K, 15) rows."""
    rows = _take(torch.cat([pos, rot.reshape(-1, 9), scale], 1), index)
    return rows[:, :3], rows[:, 3:12].reshape(-1, 3, 3), rows[:, 12:]


def trilinear_gather(grid_flat: Tensor, index: Tensor, y: Tensor, size: int) -> Tensor:
    """Trilinear sample (align_corners=True) of per-primitive voxel grids with a single gather.

    Same arguments and result as :func:`ava256.kernels.reference.trilinear` ((S, C) values at ``y`` (S, 3) in
    primitive ``index`` (S,) of ``grid_flat`` (P * D^3, C)), but the 8 corners are fetched by one indexing op,
    so the backward is one scatter into the grid's gradient.
    """
    d = size
    u = (y + 1.0) * (0.5 * (d - 1))
    u0 = torch.floor(u).clamp(0, max(d - 2, 0))
    f = u - u0
    i0 = u0.long()
    # with d >= 2, i0 <= d - 2 so the upper corner is always i0 + 1 (d == 1: both corners are voxel 0)
    step = 1 if d > 1 else 0
    offs = torch.tensor(
        [cz * d * d + cy * d + cx for cz in (0, step) for cy in (0, step) for cx in (0, step)],
        dtype=torch.long,
        device=y.device,
    )
    idx = (index * (d**3) + (i0[:, 2] * d + i0[:, 1]) * d + i0[:, 0])[:, None] + offs  # (S, 8)
    fx, fy, fz = f.unbind(1)
    gx, gy, gz = (1.0 - f).unbind(1)
    zy = (gz * gy, gz * fy, fz * gy, fz * fy)
    w = torch.stack([v for c in zy for v in (c * gx, c * fx)], 1)  # (S, 8), corner order (z, y, x)
    vals = grid_flat.index_select(0, idx.reshape(-1)).reshape(idx.shape[0], 8, -1)  # (S, 8, C)
    if vals.shape[-1] == 1:
        return (w * vals[..., 0]).sum(1, keepdim=True)
    return torch.bmm(w[:, None, :], vals)[:, 0]


@torch.no_grad()
def sphere_cull(
    o: Tensor, dvec: Tensor, tmin: Tensor, tmax: Tensor, pos: Tensor, rot: Tensor, scale: Tensor
) -> tuple[Tensor, Tensor]:
    """(ray, primitive) pairs whose ray (with a non-empty ``[tmin, tmax)``) passes within the primitive's
    (slightly padded) bounding sphere.

    A cheap, conservative cull (a superset of the pairs whose box the ray enters): two (R, 5) x (5, K) matrix
    products and two (R, K) element-wise ops, in float32 with a margin for its rounding. Returns (ray_idx, prim_idx) sorted by ray, then k.
    Step 1 of the module doc; public so that its two promises (no hit pair lost, not much looser than the slab
    test) are tested directly: a lost pair would show in the images only where a ray happens to cross it.
    """
    dev = o.device
    o64, d64, p64 = o.double(), dvec.double(), pos.double()
    # box corners relative to the centre: x - p = rot^-1 (y / scale), y in {-1, 1}^3
    signs = torch.tensor(
        [[sx, sy, sz] for sx in (-1.0, 1.0) for sy in (-1.0, 1.0) for sz in (-1.0, 1.0)],
        dtype=torch.float64,
        device=dev,
    )
    inv_rot = torch.linalg.pinv(
        rot.double()
    )  # (K, 3, 3); pinv: defined (if useless) for degenerate rotations
    corners = torch.einsum("kij,kcj->kci", inv_rot, signs[None] / scale.double()[:, None, :])  # (K, 8, 3)
    radius = corners.norm(dim=-1).amax(-1) * (1.0 + 1e-4) + 1e-6 * (1.0 + p64.norm(dim=-1))  # (K,)
    finite = torch.isfinite(radius) & torch.isfinite(p64).all(-1)
    radius = torch.where(finite, radius, 0.0)
    # only rays with a non-empty interval can sample anything (t = tmin + i * dt >= tmin)
    active = (tmax > tmin).nonzero().squeeze(1)
    o64, d64 = _take(o64, active), _take(d64, active)
    d64 = d64 / d64.norm(dim=-1, keepdim=True)
    oo = (o64 * o64).sum(-1, keepdim=True)
    od = (o64 * d64).sum(-1, keepdim=True)
    pp = (p64 * p64).sum(-1, keepdim=True)
    r2 = (radius * radius)[:, None]
    # Ray r passes within the sphere of k iff |p - o|^2 - ((p - o) . d)^2 <= radius^2 (unit d). Both terms are
    # (R', 5) x (5, K) float32 matrix products of augmented vectors; the float32 rounding error (a few ulps of
    # |o|^2 + |p|^2 + r^2) is covered by an explicit margin of 64 ulps, folded into the augmented vectors.
    # Computed in blocks of rays into reused buffers (cache-sized; much faster than whole (R', K) temporaries).
    m = 64.0 * torch.finfo(torch.float32).eps
    lhs = torch.cat([-2.0 * o64, torch.ones_like(oo), oo * (1.0 - m), d64, -od], 1).float()  # (R', 9)
    rhs_dist = (
        torch.cat([p64, pp * (1.0 - m) - r2 * (1.0 + m), torch.ones_like(pp)], 1).float().T.contiguous()
    )
    rhs_tc = torch.cat([p64, torch.ones_like(pp)], 1).float().T.contiguous()
    k = pos.shape[0]
    block = max(1, min(lhs.shape[0], _CULL_BLOCK // max(k, 1)))
    dist = torch.empty(block, k, device=dev)
    tc = torch.empty(block, k, device=dev)
    near = torch.empty(block, k, dtype=torch.bool, device=dev)
    all_finite = bool(finite.all())
    rays, prims = [], []
    for s0 in range(0, lhs.shape[0], block):
        n = min(block, lhs.shape[0] - s0)
        torch.mm(lhs[s0 : s0 + n, :5], rhs_dist, out=dist[:n])  # |p - o|^2 - r^2 - margin
        torch.mm(lhs[s0 : s0 + n, 5:], rhs_tc, out=tc[:n])  # (p - o) . d
        tc[:n].mul_(tc[:n])
        torch.le(dist[:n], tc[:n], out=near[:n])
        if not all_finite:
            near[:n] |= ~finite[None]
        ri, pi = near[:n].nonzero(as_tuple=True)
        rays.append(ri + s0)
        prims.append(pi)
    if not rays:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty
    return active[torch.cat(rays)], torch.cat(prims)


def _step_range(t0: Tensor, tn: Tensor, tf: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """First step and number of steps (int64, (P,)) of the samples ``t_i = t0 + float(i) * dt`` (computed as the
    reference does) with ``tn <= t_i <= tf`` and ``i >= 0``.

    The quotients ``(tn - t0) / dt`` and ``(tf - t0) / dt`` give each end to within one step; the exact ``t`` of
    the neighbouring steps then settles it (``t_i`` is non-decreasing in ``i``).
    """
    dt_t = torch.tensor(dt, dtype=t0.dtype, device=t0.device)

    def t_at(i: Tensor) -> Tensor:
        return t0 + i.to(t0.dtype) * dt_t

    first = ((tn - t0) / dt).ceil().clamp(0, _MAX_STEP).long()
    first = torch.where(t_at(first) >= tn, first, first + 1)
    first = torch.where((first >= 1) & (t_at(first - 1) >= tn), first - 1, first)
    last = ((tf - t0) / dt).floor().clamp(-1, _MAX_STEP).long()
    last = torch.where(t_at(last) <= tf, last, last - 1)
    last = torch.where(t_at(last + 1) <= tf, last + 1, last)
    return first, (last - first + 1).clamp(min=0)


def _group_bounds(ray_count: Tensor, max_samples: int) -> list[int]:
    """Split rays [0, R) into consecutive groups of at most ``max_samples`` candidates (at least one ray each)."""
    r = ray_count.shape[0]
    cum = torch.cumsum(ray_count, 0)
    if r == 0 or int(cum[-1]) <= max_samples:
        return [0, r]
    bounds = [0]
    while bounds[-1] < r:
        start = bounds[-1]
        base = int(cum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cum, torch.tensor([base + max_samples], device=cum.device), right=True))
        bounds.append(min(r, max(end, start + 1)))
    return bounds


def _march_chunk(
    o: Tensor,
    dvec: Tensor,
    tmin: Tensor,
    tmax: Tensor,
    pos: Tensor,
    rot: Tensor,
    scale: Tensor,
    tmpl_flat: Tensor,
    alpha_flat: Tensor,
    warp_flat: Tensor | None,
    size: int,
    dt: float,
    fadescale: float,
    fadeexp: float,
    termination: float,
    max_samples: int,
) -> Tensor:
    """March one chunk of R rays of one image against its K primitives; returns (R, 4) RGBA."""
    r, dev = o.shape[0], o.device
    with torch.no_grad():
        ray_idx, prim_idx = sphere_cull(o, dvec, tmin, tmax, pos, rot, scale)  # sorted by ray, then k
        # the reference's slab test, on the candidate pairs only
        tnear, tfar = ray_box_intervals(
            _take(o, ray_idx),
            _take(dvec, ray_idx),
            *_take_prims(pos, rot, scale, prim_idx),
        )
        tn = torch.maximum(tnear, _take(tmin, ray_idx))
        tf = torch.minimum(tfar, _take(tmax, ray_idx))
        hit = tn <= tf
        hit = hit.nonzero().squeeze(1)
        ray_idx, prim_idx, tn, tf = (_take(v, hit) for v in (ray_idx, prim_idx, tn, tf))
        t0 = _take(tmin, ray_idx)
        lo, count = _step_range(t0, tn, tf, dt)
        ray_count = torch.zeros(r, dtype=torch.long, device=dev).index_add_(0, ray_idx, count)
        bounds = _group_bounds(ray_count, max_samples)
        pair_bounds = torch.searchsorted(ray_idx, torch.tensor(bounds, device=dev)).tolist()
    pieces = []
    for g in range(len(bounds) - 1):
        r0, r1 = bounds[g], bounds[g + 1]
        p0, p1 = pair_bounds[g], pair_bounds[g + 1]
        pieces.append(
            _march_group(
                o[r0:r1],
                dvec[r0:r1],
                tmin[r0:r1],
                tmax[r0:r1],
                pos,
                rot,
                scale,
                tmpl_flat,
                alpha_flat,
                warp_flat,
                size,
                dt,
                fadescale,
                fadeexp,
                termination,
                ray_idx[p0:p1] - r0,
                prim_idx[p0:p1],
                tn[p0:p1],
                tf[p0:p1],
                lo[p0:p1],
                count[p0:p1],
            )
        )
    return torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]


def _segment_prefix(w: Tensor, first: Tensor, seg_start: Tensor) -> tuple[Tensor, Tensor]:
    """Per-ray inclusive and exclusive prefix sums of ``w`` (S,) (float64), rays being contiguous segments.

    ``first`` (S,) marks each segment's first sample, ``seg_start`` (S,) is the index of that sample. One global
    cumsum, with the running total reset (by a detached constant) at every segment start so that it stays
    as small as one ray's sum, and the value before the segment start subtracted.
    """
    with torch.no_grad():
        seg_id = torch.cumsum(first.long(), 0) - 1
        seg_sum = torch.zeros(int(seg_id[-1]) + 1, dtype=w.dtype, device=w.device).index_add_(0, seg_id, w)
        reset = torch.zeros_like(w)
        starts = first.nonzero().squeeze(1)
        reset[starts[1:]] = -seg_sum[:-1]
    cum = torch.cumsum(w + reset, 0)
    cum_excl = cum - w  # at a segment start this includes the reset, so that it is the segment's base
    base = cum_excl.index_select(0, seg_start)
    return cum - base, cum_excl - base


def _segments(rs: Tensor) -> tuple[Tensor, Tensor]:
    """``first`` (S,) bool and ``seg_start`` (S,) int64 of the runs of equal values of sorted ``rs`` (S,)."""
    n = rs.numel()
    first = torch.ones(n, dtype=torch.bool, device=rs.device)
    first[1:] = rs[1:] != rs[:-1]
    seg_start = torch.cummax(torch.where(first, torch.arange(n, device=rs.device), 0), 0).values
    return first, seg_start


def _window_samples(
    o: Tensor,
    dvec: Tensor,
    tmin: Tensor,
    tmax: Tensor,
    pos: Tensor,
    rot: Tensor,
    scale: Tensor,
    dt: float,
    ray_idx: Tensor,
    prim_idx: Tensor,
    tn: Tensor,
    tf: Tensor,
    lo: Tensor,
    count: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """The samples of the given pairs' candidate steps ``lo .. lo + count - 1``, exactly as the reference
    decides them, in front-to-back order (ray, step, k): (ray, primitive, world point x (S, 3), local y (S, 3)),
    or None if there are none. No autograd."""
    total = int(count.sum()) if count.numel() else 0
    if total == 0:
        return None
    dev, dtype = o.device, o.dtype
    pair = torch.repeat_interleave(torch.arange(count.shape[0], device=dev), count, output_size=total)
    first_cand = torch.cumsum(count, 0) - count
    step = torch.arange(total, device=dev) - _take(first_cand - lo, pair)
    rs = _take(ray_idx, pair)
    # the reference's decisions: t = tmin + float(i) * dt, t < tmax, t in the pair's interval, |y| <= 1
    t = _take(tmin, rs) + step.to(dtype) * torch.tensor(dt, dtype=dtype, device=dev)
    keep = ((t < _take(tmax, rs)) & (t >= _take(tn, pair)) & (t <= _take(tf, pair))).nonzero().squeeze(1)
    pair, step, rs, t = (_take(v, keep) for v in (pair, step, rs, t))
    ks = _take(prim_idx, pair)
    x = _take(o, rs) + t[:, None] * _take(dvec, rs)
    y = local_coords(x, *_take_prims(pos, rot, scale, ks))
    inside = (y.abs() <= 1.0).all(-1).nonzero().squeeze(1)
    if inside.numel() == 0:
        return None
    # (ray, step) order, stable so that k stays ascending within a step
    key = _take(rs, inside) * (int(step.max()) + 1) + _take(step, inside)
    if int(key.max()) < 2**31:
        key = key.int()
    order = _take(inside, torch.sort(key, stable=True).indices)
    return _take(rs, order), _take(ks, order), _take(x, order), _take(y, order)


def _march_group(
    o: Tensor,
    dvec: Tensor,
    tmin: Tensor,
    tmax: Tensor,
    pos: Tensor,
    rot: Tensor,
    scale: Tensor,
    tmpl_flat: Tensor,
    alpha_flat: Tensor,
    warp_flat: Tensor | None,
    size: int,
    dt: float,
    fadescale: float,
    fadeexp: float,
    termination: float,
    ray_idx: Tensor,
    prim_idx: Tensor,
    tn: Tensor,
    tf: Tensor,
    lo: Tensor,
    count: Tensor,
) -> Tensor:
    """Enumerate, sample and composite the samples of R rays given their hit pairs; returns (R, 4) RGBA.

    First, without autograd, the samples are found and their opacities computed (from ``alpha_flat``
    (P * D^3, 1), a detached copy of the template's alpha channel) in windows of steps counted from each
    ray's first candidate step (4, 8, 16, ... steps), dropping rays once they terminate, so that samples far
    behind an opaque surface are never enumerated. Only the samples before each ray's termination (the "live"
    ones) are then sampled with autograd and composited in closed form.
    """
    r, dtype, dev = o.shape[0], o.dtype, o.device
    zeros = torch.zeros(r, 4, dtype=dtype, device=dev)
    with torch.no_grad():
        if count.numel() == 0:
            return zeros
        hi = lo + count - 1
        ray_first = torch.full((r,), 2**62, dtype=torch.long, device=dev)
        ray_first = ray_first.scatter_reduce(0, ray_idx, lo, "amin")
        rel_hi = hi - _take(ray_first, ray_idx)
        carry = torch.zeros(r, dtype=torch.float64, device=dev)  # sum of w over the windows done
        sel = (count > 0).nonzero().squeeze(1)  # pairs still to do
        parts = []
        w0, width = 0, _FIRST_WINDOW
        while sel.numel():
            w1 = w0 + width
            f = _take(ray_first, _take(ray_idx, sel))
            plo = torch.maximum(_take(lo, sel), f + w0)
            phi = torch.minimum(_take(hi, sel), f + (w1 - 1))
            found = _window_samples(
                o,
                dvec,
                tmin,
                tmax,
                pos,
                rot,
                scale,
                dt,
                _take(ray_idx, sel),
                _take(prim_idx, sel),
                _take(tn, sel),
                _take(tf, sel),
                plo,
                (phi - plo + 1).clamp(min=0),
            )
            if found is not None:
                rs, ks, x, y = found
                yw = (
                    y
                    if warp_flat is None
                    else trilinear_gather(warp_flat.detach(), ks, y, size).clamp(-1.0, 1.0)
                )
                alpha = trilinear_gather(alpha_flat, ks, yw, size)[:, 0]
                if fadescale != 0:
                    alpha = alpha * fade(y, fadescale, fadeexp)
                w = (alpha * dt).double().clamp(max=1.0)
                first, seg_start = _segments(rs)
                _, s_excl = _segment_prefix(w, first, seg_start)
                live = ((_take(carry, rs) + s_excl).clamp(max=1.0) < termination).nonzero().squeeze(1)
                parts.append((_take(rs, live), _take(ks, live), _take(x, live)))
                carry.index_add_(0, rs, w)
            # pairs of rays still alive whose step range goes on past this window
            alive = carry.clamp(max=1.0) < termination
            sel = _take(
                sel, (_take(alive, _take(ray_idx, sel)) & (_take(rel_hi, sel) >= w1)).nonzero().squeeze(1)
            )
            w0, width = w1, 2 * width
        if not parts:
            return zeros
        rs, ks, x = (torch.cat(v) for v in zip(*parts))
        if rs.numel() == 0:
            return zeros
        if len(parts) > 1:  # windows are in step order: a stable sort by ray gives (ray, step, k) order
            order = torch.sort(rs.int(), stable=True).indices
            rs, ks, x = _take(rs, order), _take(ks, order), _take(x, order)
        first, seg_start = _segments(rs)

    y = local_coords(x, *_take_prims(pos, rot, scale, ks))  # differentiable w.r.t. pos, rot, scale
    fd = fade(y, fadescale, fadeexp) if fadescale != 0 else None  # of the local y, before the warp
    if warp_flat is not None:
        y = trilinear_gather(warp_flat, ks, y, size).clamp(-1.0, 1.0)
    rgba = trilinear_gather(tmpl_flat, ks, y, size)
    alpha = rgba[:, 3] if fd is None else rgba[:, 3] * fd
    # Closed-form compositing (float64), gated again in case rounding moved a termination by a sample. w >= 1
    # saturates A in one sample, so clamping w at 1 changes neither values nor gradients but keeps the running
    # sums small.
    w = (alpha * dt).double().clamp(max=1.0)
    s_incl, s_excl = _segment_prefix(w, first, seg_start)
    s_excl = s_excl.clamp(max=1.0)
    a = torch.where(s_excl < termination, s_incl.clamp(max=1.0) - s_excl, 0.0)
    acc = torch.zeros(r, dtype=torch.float64, device=dev).index_add(0, rs, a)
    color = torch.zeros(r, 3, dtype=dtype, device=dev).index_add(0, rs, rgba[:, :3] * a.to(dtype)[:, None])
    return torch.cat([color, acc.to(dtype)[:, None]], 1)


def raymarch_vectorized(
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
    max_samples: int = 1 << 21,
) -> Tensor:
    """Raymarch N images of H x W rays through K volumetric primitives, vectorised over march steps.

    Arguments, result and gradients as :func:`ava256.kernels.reference.raymarch_reference`. ``chunk_elems``
    bounds (rays x primitives) of one ray/box culling pass; ``max_samples`` bounds the candidate samples
    (ray, step, primitive) processed at once (a group always holds at least one whole ray). Peak memory is
    roughly ``max_samples`` x 0.5 KB plus, when gradients are needed, what autograd keeps per kept sample.
    """
    check_march_params(dt, fadescale, fadeexp, termination)
    k, d = check_grid_shapes(raypos, primpos, template, warp)
    if template.numel() and bool((template[:, :, 3] < 0).any()):
        log.debug("negative template alpha: the closed-form compositing does not apply, using the reference")
        return raymarch_reference(
            raypos,
            raydir,
            tminmax,
            primpos,
            primrot,
            primscale,
            template,
            warp,
            dt=dt,
            fadescale=fadescale,
            fadeexp=fadeexp,
            termination=termination,
            chunk_elems=chunk_elems,
        )

    def march_image(b: int, tmpl_flat: Tensor, warp_flat: Tensor | None) -> ChunkMarcher:
        alpha_flat = tmpl_flat.detach()[:, 3:].contiguous()  # once per image, shared by its chunks

        def march(o: Tensor, dv: Tensor, tmin: Tensor, tmax: Tensor) -> Tensor:
            return _march_chunk(
                o, dv, tmin, tmax, primpos[b], primrot[b], primscale[b], tmpl_flat, alpha_flat, warp_flat,
                d, dt, fadescale, fadeexp, termination, max_samples,
            )  # fmt: skip

        return march

    return march_images(
        raypos, raydir, tminmax, template, warp, max(1, chunk_elems // max(k, 1)), march_image
    )
