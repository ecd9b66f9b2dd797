"""Per-camera and per-identity colour calibration, and the background model."""

from __future__ import annotations

import torch
from torch import nn


class ColourCalibration(nn.Module):
    """Affine colour correction ``gain * x + bias`` per camera and per identity (channels RGB).

    The first camera's calibration is held at the identity so the two factors stay identifiable.
    """

    def __init__(self, n_cameras: int, n_identities: int):
        super().__init__()
        self.cam_gain = nn.Parameter(torch.ones(n_cameras, 3))
        self.cam_bias = nn.Parameter(torch.zeros(n_cameras, 3))
        self.id_gain = nn.Parameter(torch.ones(n_identities, 3))
        self.id_bias = nn.Parameter(torch.zeros(n_identities, 3))

    def forward(self, image: torch.Tensor, camindex: torch.Tensor, idindex: torch.Tensor) -> torch.Tensor:
        """image (N, 3, H, W) 0..255 -> calibrated image, same shape."""
        fixed = (camindex == 0).to(image.dtype)[:, None]
        cg = self.cam_gain[camindex] * (1 - fixed) + fixed
        cb = self.cam_bias[camindex] * (1 - fixed)
        gain = cg * self.id_gain[idindex]
        bias = cb + self.id_bias[idindex]
        return image * gain[:, :, None, None] + bias[:, :, None, None]


class Background(nn.Module):
    """One learnt low-resolution background image per camera, upsampled bilinearly to the image size.

    Args:
        n_cameras: number of cameras; res: (h, w) of the stored backgrounds; init: initial grey (0..255).
    """

    def __init__(self, n_cameras: int, res: tuple[int, int] = (64, 48), init: float = 100.0):
        super().__init__()
        self.image = nn.Parameter(torch.full((n_cameras, 3, res[0], res[1]), float(init)))

    def forward(self, camindex: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """camindex (N,) -> background (N, 3, H, W)."""
        return nn.functional.interpolate(
            self.image[camindex], size=size, mode="bilinear", align_corners=False
        )
