"""The universal avatar model: encoders, VAE bottleneck, primitive decoder, colour calibration, background."""

from __future__ import annotations

from collections.abc import Callable

from ava256.models.autoencoder import Autoencoder, ModelConfig, losses, psnr, ssim
from ava256.models.uvmap import TopologyArrays, UVLayout, grid_topology, load_topology


def get_raymarch() -> Callable:
    """``ava256.kernels.raymarch`` (CUDA on GPU tensors, PyTorch reference otherwise)."""
    from ava256.kernels import raymarch

    return raymarch


__all__ = [
    "Autoencoder",
    "ModelConfig",
    "TopologyArrays",
    "UVLayout",
    "get_raymarch",
    "grid_topology",
    "load_topology",
    "losses",
    "psnr",
    "ssim",
]
