"""CUDA path of the raymarcher: acceleration grid (built on the GPU) + autograd Function.

The acceleration structure is a uniform grid over each image's primitives: every primitive's oriented box is
bounded by a (slightly padded) axis-aligned box, and each grid cell lists, in ascending k, the primitives
whose bounding box overlaps it. The kernel then tests only the primitives of the cell its sample point lies
in, and jumps over empty cells. On the GPU it is built by a few small kernels (csrc/raymarch_kernel.cu) plus a
stable sort of the (cell, primitive) pairs; on the CPU (for tests) by the same steps in torch ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .reference import FADEEXP, FADESCALE, TERMINATION, check_march_params

__all__ = ["AccelGrid", "build_grid", "raymarch_cuda"]

#: Largest grid resolution along an axis, and the most (primitive, cell) entries allowed.
MAX_RES = 128
MAX_ENTRIES = 1 << 26
#: Grid cell edge relative to the mean primitive bounding-box edge (0.5: ~5 primitives tested per sample on
#: the MVP head layout; see benchmarks/raymarch.py --cell-factor).
CELL_FACTOR = 0.5
#: Backward kernel variant flags (csrc/raymarch.h): 4 = sum transform gradients across the warp before atomics.
BACKWARD_FLAGS = 4
#: Launch flags for both kernels: 0 = 16x8-pixel blocks (warps of 16x2 rays), 8 = 8x16 (warps of 8x4),
#: 16 = kernels compiled with a register cap for more resident blocks.
LAUNCH_FLAGS = 16


@dataclass
class AccelGrid:
    """Per-image uniform grid. ``gridinfo`` (N, 12): lo(3), hi(3), 1/cell(3), cell(3); ``cell_start``
    (N*Gz*Gy*Gx + 1,) int32 offsets into ``cell_prims`` (E,) int32 primitive indices; ``res`` (Gx, Gy, Gz)."""

    gridinfo: Tensor
    cell_start: Tensor
    cell_prims: Tensor
    res: tuple[int, int, int]


def _prim_bounds(pos: Tensor, rot: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Padded axis-aligned bounds (N, K, 3) of the primitives' boxes, and a (N, K) finiteness mask."""
    inv_s = 1.0 / scale.abs().clamp_min(1e-30)
    half = (rot.abs() * inv_s[..., :, None]).sum(-2)  # half_i = sum_j |R_ji| / s_j
    pad = 1e-4 * half + 1e-5 * (pos.abs() + half) + 1e-12
    lo, hi = pos - half - pad, pos + half + pad
    valid = torch.isfinite(lo).all(-1) & torch.isfinite(hi).all(-1)
    return lo, hi, valid


@torch.no_grad()
def build_grid(
    primpos: Tensor,
    primrot: Tensor,
    primscale: Tensor,
    *,
    cell_factor: float | None = None,
    max_res: int = MAX_RES,
) -> AccelGrid:
    """Build the acceleration grid for (N, K) primitives (tensors on one device, CPU or CUDA).

    ``cell_factor`` sets the cell edge relative to the mean primitive bounding-box edge (default
    :data:`CELL_FACTOR`). Two host syncs: one to size the grid, one to size the entry list.
    """
    n, k = primpos.shape[:2]
    dev = primpos.device
    cell_factor = CELL_FACTOR if cell_factor is None else cell_factor
    if dev.type == "cuda":
        return _build_grid_cuda(primpos, primrot, primscale, cell_factor, max_res)
    lo, hi, valid = _prim_bounds(primpos.float(), primrot.float(), primscale.float())
    glo, ghi, ext = _grid_box(
        torch.where(valid[..., None], lo, float("inf")).amin(1),
        torch.where(valid[..., None], hi, float("-inf")).amax(1),
    )
    nvalid = valid.sum()
    mean_edge = torch.where(valid[..., None], hi - lo, 0.0).sum() / (3 * nvalid).clamp_min(1)
    res = _resolution(ext, mean_edge, nvalid, cell_factor, max_res)

    while True:
        g = torch.tensor(res, device=dev, dtype=torch.float32)
        inv = g / ext
        gmax = (g - 1)[None, None]
        clo = torch.minimum(torch.floor((lo - glo[:, None]) * inv[:, None]).clamp_min(0), gmax)
        chi = torch.minimum(torch.floor((hi - glo[:, None]) * inv[:, None]).clamp_min(0), gmax)
        clo = torch.where(valid[..., None], clo, 0.0).to(torch.int32)
        chi = torch.where(valid[..., None], chi, -1.0).to(torch.int32)
        cnt = (chi - clo + 1).to(torch.int64).prod(-1).reshape(-1)
        ends = torch.cumsum(cnt, 0)
        total = int(ends[-1]) if ends.numel() else 0
        if total <= MAX_ENTRIES or max(res) == 1:
            break
        res = [max(1, r // 2) for r in res]
    gx, gy, gz = res
    ncells = n * gx * gy * gz
    starts = ends - cnt
    prim_ids = torch.repeat_interleave(torch.arange(n * k, device=dev), cnt, output_size=total)
    j = torch.arange(total, device=dev) - starts[prim_ids]
    c0 = clo.reshape(-1, 3)[prim_ids].long()
    ex = (chi - clo + 1).reshape(-1, 3)[prim_ids].long()
    cx = c0[:, 0] + j % ex[:, 0]
    cy = c0[:, 1] + (j // ex[:, 0]) % ex[:, 1]
    cz = c0[:, 2] + j // (ex[:, 0] * ex[:, 1])
    cell = (((prim_ids // k) * gz + cz) * gy + cy) * gx + cx
    cell_sorted, order = torch.sort(cell, stable=True)  # stable: k stays ascending within a cell
    cell_prims = (prim_ids[order] % k).to(torch.int32)
    counts = torch.bincount(cell_sorted, minlength=ncells)
    cell_start = torch.zeros(ncells + 1, dtype=torch.int32, device=dev)
    cell_start[1:] = torch.cumsum(counts, 0)
    return AccelGrid(_gridinfo(glo, ghi, inv), cell_start, cell_prims.contiguous(), (gx, gy, gz))


def _grid_box(glo: Tensor, ghi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image grid box from the union of primitive bounds (N, 3), with a 1% margin; unit box if empty."""
    empty = ~torch.isfinite(glo).all(-1) | ~torch.isfinite(ghi).all(-1)
    glo = torch.where(empty[:, None], torch.zeros_like(glo), glo)
    ghi = torch.where(empty[:, None], torch.ones_like(ghi), ghi)
    ext = (ghi - glo).clamp_min(1e-6)
    glo = glo - 0.01 * ext - 1e-6
    ghi = ghi + 0.01 * ext + 1e-6
    return glo, ghi, ghi - glo


def _resolution(
    ext: Tensor, mean_edge: Tensor, nvalid: Tensor, cell_factor: float, max_res: int
) -> list[int]:
    stats = torch.cat([ext.amax(0), mean_edge.reshape(1), nvalid.reshape(1).float()]).tolist()  # host sync
    target = stats[3] * cell_factor if stats[4] > 0 else 1.0
    return [max(1, min(max_res, math.ceil(e / max(target, 1e-12)))) for e in stats[:3]]


def _gridinfo(glo: Tensor, ghi: Tensor, inv: Tensor) -> Tensor:
    n = glo.shape[0]
    return torch.cat([glo, ghi, inv.expand(n, 3), (1.0 / inv).expand(n, 3)], -1).float().contiguous()


def _build_grid_cuda(primpos, primrot, primscale, cell_factor: float, max_res: int) -> AccelGrid:
    """The same grid as the CPU path, built with a few custom kernels (few launches, two host syncs)."""
    from ._build import load_extension

    ext_mod = load_extension()
    dev = primpos.device
    n, k = primpos.shape[:2]
    stream = torch.cuda.current_stream(dev).cuda_stream
    bounds, stats = ext_mod.prim_bounds(_aligned(primpos), _aligned(primrot), _aligned(primscale), stream)
    rows = stats.tolist()  # host sync 1: per-image (min lo, max hi, edge sum, count)
    glo, ghi, exts = [], [], []
    for r in rows:
        lo3, hi3 = r[0:3], r[3:6]
        if r[7] == 0 or not all(math.isfinite(v) for v in lo3 + hi3):
            lo3, hi3 = [0.0] * 3, [1.0] * 3
        e3 = [max(b - a, 1e-6) for a, b in zip(lo3, hi3)]
        lo3 = [a - 0.01 * e - 1e-6 for a, e in zip(lo3, e3)]
        hi3 = [b + 0.01 * e + 1e-6 for b, e in zip(hi3, e3)]
        glo.append(lo3)
        ghi.append(hi3)
        exts.append([b - a for a, b in zip(lo3, hi3)])
    nvalid = sum(r[7] for r in rows)
    target = sum(r[6] for r in rows) / nvalid * cell_factor if nvalid > 0 else 1.0
    res = [max(1, min(max_res, math.ceil(max(e[a] for e in exts) / max(target, 1e-12)))) for a in range(3)]
    while True:
        info = []
        for lo3, hi3, e3 in zip(glo, ghi, exts):
            inv = [r / e for r, e in zip(res, e3)]
            info.append(lo3 + hi3 + inv + [1.0 / v for v in inv])
        gridinfo = torch.tensor(info, dtype=torch.float32).to(dev)
        clo, chi, cnt = ext_mod.cell_ranges(bounds, gridinfo, res, stream)
        ends = torch.cumsum(cnt, 0)
        total = int(ends[-1]) if ends.numel() else 0  # host sync 2
        if total <= MAX_ENTRIES or max(res) == 1:
            break
        res = [max(1, r // 2) for r in res]
    ncells = n * res[0] * res[1] * res[2]
    cell, prim = ext_mod.grid_entries(clo, chi, ends - cnt, total, res, stream)
    cell_sorted, order = torch.sort(cell, stable=True)  # stable: k stays ascending within a cell
    cell_prims = prim[order].contiguous()
    cell_start = ext_mod.cell_starts(cell_sorted, ncells, stream)
    return AccelGrid(gridinfo, cell_start, cell_prims, (res[0], res[1], res[2]))


def _pack_prims(primpos: Tensor, primrot: Tensor, primscale: Tensor) -> Tensor:
    n, k = primpos.shape[:2]
    pad = primpos.new_zeros(n, k, 1)
    return _aligned(
        torch.cat([primpos.float(), primscale.float(), primrot.reshape(n, k, 9).float(), pad.float()], -1)
    )


def _aligned(t: Tensor) -> Tensor:
    """Contiguous float32 with a 16-byte aligned start (the kernels read float4s)."""
    t = t.float().contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


class _RaymarchCUDA(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        raypos,
        raydir,
        tminmax,
        primpos,
        primrot,
        primscale,
        template,
        warp,
        dt,
        fadescale,
        fadeexp,
        termination,
    ):
        from ._build import load_extension

        ext = load_extension()
        grid = build_grid(primpos, primrot, primscale)
        prim = _pack_prims(primpos, primrot, primscale)
        rays = [_aligned(t) for t in (raypos, raydir, tminmax)]
        warp_in = None if warp is None else _aligned(warp)
        stream = torch.cuda.current_stream(raypos.device).cuda_stream
        rgba, aux = ext.forward(
            *rays,
            prim,
            _aligned(template),
            warp_in,
            grid.gridinfo,
            grid.cell_start,
            grid.cell_prims,
            list(grid.res),
            float(dt),
            float(fadescale),
            float(fadeexp),
            float(termination),
            stream,
            LAUNCH_FLAGS,
        )
        ctx.save_for_backward(
            *rays, prim, template, warp, grid.gridinfo, grid.cell_start, grid.cell_prims, aux
        )
        ctx.res = grid.res
        ctx.params = (float(dt), float(fadescale), float(fadeexp), float(termination))
        ctx.dtypes = (primpos.dtype, primrot.dtype, primscale.dtype, template.dtype)
        return rgba

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rgba):
        from ._build import load_extension

        ext = load_extension()
        raypos, raydir, tminmax, prim, template, warp, gridinfo, cell_start, cell_prims, aux = (
            ctx.saved_tensors
        )
        stream = torch.cuda.current_stream(raypos.device).cuda_stream
        g_tmpl, g_warp, g_prim = ext.backward(
            raypos,
            raydir,
            tminmax,
            prim,
            _aligned(template),
            None if warp is None else _aligned(warp),
            gridinfo,
            cell_start,
            cell_prims,
            list(ctx.res),
            *ctx.params,
            aux,
            _aligned(grad_rgba),
            stream,
            BACKWARD_FLAGS | LAUNCH_FLAGS,
        )
        n, k = prim.shape[:2]
        dpos, drot, dscale, dtmpl = ctx.dtypes
        g_template = g_tmpl.to(dtmpl)
        g_w = None if warp is None else g_warp.to(warp.dtype)
        g_pos = g_prim[..., 0:3].to(dpos)
        g_scale = g_prim[..., 3:6].to(dscale)
        g_rot = g_prim[..., 6:15].reshape(n, k, 3, 3).to(drot)
        return None, None, None, g_pos, g_rot, g_scale, g_template, g_w, None, None, None, None


def raymarch_cuda(
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
) -> Tensor:
    """The CUDA raymarcher (same contract as :func:`ava256.kernels.raymarch`); all tensors on one CUDA device."""
    check_march_params(dt, fadescale, fadeexp, termination)
    n, h, w, _ = raypos.shape
    k = primpos.shape[1]
    d = template.shape[-1]
    expect = {
        "raypos": (raypos, (n, h, w, 3)),
        "raydir": (raydir, (n, h, w, 3)),
        "tminmax": (tminmax, (n, h, w, 2)),
        "primpos": (primpos, (n, k, 3)),
        "primrot": (primrot, (n, k, 3, 3)),
        "primscale": (primscale, (n, k, 3)),
        "template": (template, (n, k, 4, d, d, d)),
    }
    if warp is not None:
        expect["warp"] = (warp, (n, k, 3, d, d, d))
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
        if not t.is_cuda or t.device != raypos.device:
            raise ValueError(f"{name} must be on {raypos.device} like raypos (CUDA path), got {t.device}")
    if d < 2:
        raise ValueError("voxel grids need D >= 2")
    with torch.cuda.device(raypos.device):
        return _RaymarchCUDA.apply(
            raypos,
            raydir,
            tminmax,
            primpos,
            primrot,
            primscale,
            template,
            warp,
            dt,
            fadescale,
            fadeexp,
            termination,
        )
