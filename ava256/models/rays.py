"""Camera rays in the head frame, in normalised volume coordinates (mm / volume radius)."""

from __future__ import annotations

import torch


def camera_rays(
    camrot: torch.Tensor,
    campos: torch.Tensor,
    focal: torch.Tensor,
    princpt: torch.Tensor,
    pixelcoords: torch.Tensor,
    volradius: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through pixel centres, clipped to the volume cube [-1, 1]^3.

    Args:
        camrot: (N, 3, 3) head->camera rotation (``x_cam = camrot @ (x_head - campos)``).
        campos: (N, 3) camera centre in the head frame, mm.
        focal: (N, 2) fx, fy in pixels; princpt: (N, 2) cx, cy in pixels.
        pixelcoords: (N, H, W, 2) pixel x, y.
        volradius: mm per normalised volume unit.
    Returns:
        raypos (N, H, W, 3) ray origins (normalised units), raydir (N, H, W, 3) unit directions,
        tminmax (N, H, W, 2) entry/exit distances (tmin == tmax for rays that miss the cube).
    """
    n, h, w, _ = pixelcoords.shape
    d_cam = torch.cat(
        [
            (pixelcoords - princpt[:, None, None, :]) / focal[:, None, None, :],
            torch.ones(n, h, w, 1, dtype=pixelcoords.dtype, device=pixelcoords.device),
        ],
        dim=-1,
    )
    raydir = torch.einsum("nji,nhwj->nhwi", camrot, d_cam)  # camrot^T @ d
    raydir = torch.nn.functional.normalize(raydir, dim=-1)
    raypos = (campos / volradius)[:, None, None, :].expand(n, h, w, 3)
    safe = torch.where(raydir.abs() < 1e-9, torch.full_like(raydir, 1e-9), raydir)
    t0 = (-1.0 - raypos) / safe
    t1 = (1.0 - raypos) / safe
    tmin = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    tmax = torch.maximum(t0, t1).amin(-1)
    tmax = torch.maximum(tmax, tmin)
    return raypos.contiguous(), raydir, torch.stack([tmin, tmax], -1)
