"""The MVP raymarcher: a CUDA extension and two pure-PyTorch paths behind one function.

``raymarch(...)`` renders N images of H x W rays through K volumetric primitives and is differentiable w.r.t.
the primitives' RGBA grids, warp fields and transforms. CUDA tensors go to the CUDA extension (built on first
use with ``torch.utils.cpp_extension``, or ahead of time with ``python -m ava256.kernels.build``); anything else
goes to the vectorised PyTorch path in :mod:`ava256.kernels.vectorized` (no Python loop over march steps).
The readable step-by-step reference in :mod:`ava256.kernels.reference` is the oracle: ``backend="reference"``
or the environment variable ``AVA256_RAYMARCH=reference`` forces it everywhere (``vectorized`` and ``cuda``
may be named the same ways).

Importing this package needs neither a GPU nor nvcc: the extension is loaded lazily.
"""

from __future__ import annotations

import os

from torch import Tensor

from .reference import FADEEXP, FADESCALE, TERMINATION, check_march_params, raymarch_reference
from .vectorized import raymarch_vectorized

__all__ = ["raymarch", "raymarch_reference", "raymarch_vectorized", "cuda_available"]

_BACKENDS = ("auto", "cuda", "vectorized", "reference")

_ENV_BACKEND = "AVA256_RAYMARCH"


def cuda_available() -> bool:
    """True if torch sees a CUDA device (the extension may still need building on first use)."""
    import torch

    return torch.cuda.is_available()


def raymarch(
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
    backend: str | None = None,
) -> Tensor:
    """Differentiable MVP raymarch; returns (N, H, W, 4) float32 accumulated (r, g, b, alpha).

    Args:
        raypos, raydir: (N, H, W, 3) ray origins and unit directions (world units).
        tminmax: (N, H, W, 2) per-ray marching interval ``[tmin, tmax)``.
        primpos: (N, K, 3) primitive centres. primrot: (N, K, 3, 3) world->local rotations.
        primscale: (N, K, 3) world->local scales: world point ``x`` is in primitive ``k`` iff
            ``y = (primrot_k @ (x - primpos_k)) * primscale_k`` lies in ``[-1, 1]^3``.
        template: (N, K, 4, D, D, D) RGBA voxel grids, channels (r, g, b, alpha), grids indexed [z, y, x],
            sampled trilinearly at ``y`` (align_corners=True).
        warp: optional (N, K, 3, D, D, D): sampled at ``y`` first; the template is then sampled at the warped
            coordinate (clamped to ``[-1, 1]``).
        dt: step size (world units); samples at ``t = tmin + i * dt`` while ``t < tmax``.
        fadescale, fadeexp: the sampled opacity is multiplied by ``exp(-fadescale * (|y_x|^fadeexp +
            |y_y|^fadeexp + |y_z|^fadeexp))`` of the local ``y`` (before the warp): primitives fade out towards
            their borders (MVP's defaults 8, 8: ``exp(-8)`` at a face). ``fadescale=0``: hard edges.
            Needs ``fadescale >= 0`` and ``fadeexp >= 1``.
        termination: a ray stops once its accumulated alpha reaches this, in ``(0, 1]`` (default 1: at the
            sample that saturates it, as MVP).
        backend: ``"cuda"``, ``"vectorized"``, ``"reference"`` or None (auto: CUDA tensors -> extension,
            anything else -> vectorized; the environment variable ``AVA256_RAYMARCH`` (same names) overrides
            auto).

    Gradients flow to template, warp, primpos, primrot and primscale (not to the rays); with the fade on, also
    from the opacity to the transforms through ``y``.
    """
    check_march_params(dt, fadescale, fadeexp, termination)
    choice = backend or os.environ.get(_ENV_BACKEND, "auto")
    if choice not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, _BACKENDS))}, got {choice!r}")
    use_cuda = choice == "cuda" or (choice == "auto" and raypos.is_cuda)
    if use_cuda:
        from .function import raymarch_cuda

        return raymarch_cuda(
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
        )
    impl = raymarch_reference if choice == "reference" else raymarch_vectorized
    return impl(
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
    )
