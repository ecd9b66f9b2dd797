"""Cross-capture normalisation of uv textures and mesh vertices.

Each capture ships a texture mean image (T, T, 3) and scalar variance, and a vertex mean (V, 3) and scalar
variance. A dataset of N captures normalises with

- ``mean = (1/N) sum_i mean_i`` (the mean of the per-capture means, as the reference code does),
- ``var = (1/N) sum_i var_i + (1/(N*size)) sum_i ||mean_i - mean||^2`` (law of total variance: the average
  within-capture variance plus the spread of the capture means), ``std = sqrt(var)``.

For vertices this is exactly the reference code's formula. For textures the reference code drops the first
term (and uses a different ad-hoc value for N = 1); we use the same formula for both, which for one capture
reduces to that capture's own variance. Normalised value: ``(x - mean) / std``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class NormStats:
    """Normalisation statistics of a dataset: ``tex_mean`` (3, T, T) float32, ``tex_std`` float,
    ``vert_mean`` (V, 3) float32, ``vert_std`` float; ``captures`` the captures they were computed from.
    Save them with the model (``state_dict``) and pass the training set's stats to val/test datasets."""

    tex_mean: torch.Tensor
    tex_std: float
    vert_mean: torch.Tensor
    vert_std: float
    captures: tuple[str, ...] = ()
    _mean_over_std: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _device_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        # Caches (device copies may be CUDA tensors) never travel to worker processes or checkpoints.
        return {**self.__dict__, "_mean_over_std": None, "_device_cache": {}}

    def on(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tex_mean, vert_mean)`` on ``device`` (copied once per device, then cached)."""
        key = str(torch.device(device))
        if key not in self._device_cache:
            self._device_cache[key] = (self.tex_mean.to(device), self.vert_mean.to(device))
        return self._device_cache[key]

    def normalize_tex(self, tex_chw: torch.Tensor) -> torch.Tensor:
        """(3, T, T) float32 texture in 0..255 -> normalised, in place."""
        return tex_chw.sub_(self.tex_mean).div_(self.tex_std)

    def normalized_tex_from_uint8(
        self, tex_hwc: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T, T, 3) uint8 texture -> normalised (3, T, T) float32,
        ``out = t / std - mean / std`` (equal to ``(t - mean) / std`` up to float rounding); written into
        ``out`` (e.g. a slot of a batch tensor) when given."""
        if self._mean_over_std is None:
            self._mean_over_std = -(self.tex_mean / self.tex_std)  # negated: added in place
        if out is None:
            out = torch.empty((tex_hwc.shape[2], tex_hwc.shape[0], tex_hwc.shape[1]), dtype=torch.float32)
        # Cast-copy then two in-place passes: ~2x faster than one mixed-dtype torch.add on a strided input.
        out.copy_(tex_hwc.permute(2, 0, 1))
        return out.mul_(1.0 / self.tex_std).add_(self._mean_over_std)

    def normalize_verts(self, verts: torch.Tensor) -> torch.Tensor:
        """(V, 3) float32 vertices (mm) -> normalised, in place."""
        return verts.sub_(self.vert_mean).div_(self.vert_std)

    def state_dict(self) -> dict[str, Any]:
        return {
            "tex_mean": self.tex_mean.clone(),
            "tex_std": float(self.tex_std),
            "vert_mean": self.vert_mean.clone(),
            "vert_std": float(self.vert_std),
            "captures": list(self.captures),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> NormStats:
        return cls(
            torch.as_tensor(state["tex_mean"], dtype=torch.float32),
            float(state["tex_std"]),
            torch.as_tensor(state["vert_mean"], dtype=torch.float32),
            float(state["vert_std"]),
            tuple(state.get("captures", ())),
        )


@dataclass(frozen=True)
class CaptureStats:
    """Per-capture statistics as stored: ``tex_mean`` (T, T, 3), ``tex_var``, ``vert_mean`` (V, 3),
    ``vert_var``."""

    capture: str
    tex_mean: np.ndarray
    tex_var: float
    vert_mean: np.ndarray
    vert_var: float


def combine_stats(per_capture: Iterable[CaptureStats]) -> NormStats:
    """Combine per-capture statistics (see module doc). Streams: holds two accumulators per array, so 256
    captures of 1024 x 1024 textures never sit in memory at once (two passes over the iterable's items are
    avoided by accumulating sums of means and of squared means)."""
    n = 0
    tex_sum = tex_sq = vert_sum = vert_sq = None
    tex_var_sum = vert_var_sum = 0.0
    captures = []
    for s in per_capture:
        tm = np.asarray(s.tex_mean, dtype=np.float64)
        vm = np.asarray(s.vert_mean, dtype=np.float64)
        if tex_sum is None:
            tex_sum, tex_sq = np.zeros_like(tm), np.zeros_like(tm)
            vert_sum, vert_sq = np.zeros_like(vm), np.zeros_like(vm)
        if tm.shape != tex_sum.shape or vm.shape != vert_sum.shape:
            raise ValueError(
                f"{s.capture}: texture mean {tm.shape} / vertex mean {vm.shape} differ from the other captures' "
                f"{tex_sum.shape} / {vert_sum.shape}"
            )
        if not (math.isfinite(s.tex_var) and math.isfinite(s.vert_var)) or s.tex_var < 0 or s.vert_var < 0:
            raise ValueError(f"{s.capture}: invalid variance (texture {s.tex_var}, vertices {s.vert_var})")
        tex_sum += tm
        tex_sq += tm * tm
        vert_sum += vm
        vert_sq += vm * vm
        tex_var_sum += float(s.tex_var)
        vert_var_sum += float(s.vert_var)
        captures.append(s.capture)
        n += 1
    if n == 0:
        raise ValueError("no captures to compute normalisation statistics from")
    tex_mean = tex_sum / n
    vert_mean = vert_sum / n
    # (1/(N*size)) sum_i ||m_i - m||^2 = mean over elements of (E[m^2] - m^2)
    tex_spread = float(np.maximum(tex_sq / n - tex_mean * tex_mean, 0.0).mean())
    vert_spread = float(np.maximum(vert_sq / n - vert_mean * vert_mean, 0.0).mean())
    tex_std = math.sqrt(tex_var_sum / n + tex_spread)
    vert_std = math.sqrt(vert_var_sum / n + vert_spread)
    if tex_std == 0 or vert_std == 0:
        raise ValueError(
            f"degenerate normalisation statistics (texture std {tex_std}, vertex std {vert_std})"
        )
    return NormStats(
        torch.from_numpy(np.ascontiguousarray(tex_mean.transpose(2, 0, 1), dtype=np.float32)),
        tex_std,
        torch.from_numpy(vert_mean.astype(np.float32)),
        vert_std,
        tuple(captures),
    )
