"""Primitive decoder: expression code + identity biases -> mesh, primitive transforms and RGBA voxels."""

from __future__ import annotations

import math

import torch
from torch import nn

from ava256.models.encoders import _act, channels_at


class _Up(nn.Module):
    """x2 transposed-conv upsampling with an optional additive (identity) bias map."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
        self.act = _act()

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv(x)
        if bias is not None:
            h = h + bias.to(h.dtype)
        return self.act(h)


class _VoxelHead(nn.Module):
    """(B, cin, P, P) -> (B, cout_per_voxel * D, P*D, P*D): log2(D) x2-upsamplings, then a 3x3 conv."""

    def __init__(self, cin: int, ch: int, voxels: int, cout_per_voxel: int):
        super().__init__()
        n_up = int(math.log2(voxels))
        if 2**n_up != voxels:
            raise ValueError(f"voxels per side must be a power of two, got {voxels}")
        ups = []
        c = cin
        for _ in range(n_up):
            ups.append(_Up(c, ch))
            c = ch
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(c, cout_per_voxel * voxels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for up in self.ups:
            x = up(x)
        return self.out(x)


def tiles_to_voxels(x: torch.Tensor, channels: int, prim_res: int, voxels: int) -> torch.Tensor:
    """(B, channels*D, P*D, P*D) tiled image -> (B, P*P, channels, D, D, D) voxel grids indexed [z, y, x].

    Channel ``c * D + z``; row ``i * D + y``; column ``j * D + x``; primitive ``k = i * P + j``.
    """
    b = x.shape[0]
    d, p = voxels, prim_res
    x = x.reshape(b, channels, d, p, d, p, d)  # b c z i y j x
    x = x.permute(0, 3, 5, 1, 2, 4, 6)  # b i j c z y x
    return x.reshape(b, p * p, channels, d, d, d)


class PrimitiveDecoder(nn.Module):
    """Decoder trunk over uv space.

    Inputs: expression code (B, E, S, S), identity biases ``{res: (B, ch, res, res)}``, view direction (B, 3).
    Outputs: dict with ``geometry`` (B, 3, P, P) uv image of normalised vertex offsets, ``transform``
    (B, 9, P, P) per-primitive deltas (position 3, rotation 3 axis-angle, log-scale 3), ``rgb``
    (B, P*P, 3, D, D, D) colour offsets (0..255 units, the autoencoder adds ``rgb_init``), ``alpha`` (B, P*P, 1, D, D, D) opacity logits (the autoencoder
    offsets and rectifies them).
    """

    def __init__(
        self,
        code_res: int,
        expr_dim: int,
        prim_res: int,
        voxels: int,
        ch_min: int,
        ch_max: int,
        voxel_ch: int,
    ):
        super().__init__()
        self.prim_res, self.voxels = prim_res, voxels
        self.levels = []
        r = code_res
        while r <= prim_res:
            self.levels.append(r)
            r *= 2
        if self.levels[-1] != prim_res:
            raise ValueError(f"primitive grid {prim_res} is not code size {code_res} times a power of two")
        c0 = channels_at(code_res, prim_res, ch_min, ch_max)
        self.stem = nn.Conv2d(expr_dim, c0, 3, padding=1)
        self.stem_act = _act()
        self.ups = nn.ModuleList(
            _Up(channels_at(a, prim_res, ch_min, ch_max), channels_at(a * 2, prim_res, ch_min, ch_max))
            for a in self.levels[:-1]
        )
        cp = channels_at(prim_res, prim_res, ch_min, ch_max)
        self.geometry = nn.Conv2d(cp, 3, 3, padding=1)
        self.transform = nn.Conv2d(cp, 9, 3, padding=1)
        for m in (self.geometry, self.transform):
            nn.init.normal_(m.weight, std=1e-3)
            nn.init.zeros_(m.bias)
        self.rgb = _VoxelHead(cp + 3, voxel_ch, voxels, 3)
        self.alpha = _VoxelHead(cp, voxel_ch, voxels, 1)

    def forward(
        self, code: torch.Tensor, id_bias: dict[int, torch.Tensor], viewdir: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        h = self.stem(code)
        h = self.stem_act(h + id_bias[self.levels[0]].to(h.dtype))
        for res, up in zip(self.levels[1:], self.ups):
            h = up(h, id_bias[res])
        p, d = self.prim_res, self.voxels
        view = viewdir[:, :, None, None].to(h.dtype).expand(-1, -1, p, p)
        rgb = self.rgb(torch.cat([h, view], 1))
        alpha = self.alpha(h)
        return {
            "geometry": self.geometry(h),
            "transform": self.transform(h),
            "rgb": tiles_to_voxels(rgb, 3, p, d) * 25.0,
            "alpha": tiles_to_voxels(alpha, 1, p, d),
        }
