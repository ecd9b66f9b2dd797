"""Identity and expression encoders over uv-space geometry and texture images."""

from __future__ import annotations

import math

import torch
from torch import nn


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def channels_at(res: int, prim_res: int, ch_min: int, ch_max: int) -> int:
    """Feature channels of a uv-space feature map of size ``res`` (more channels at coarser levels)."""
    if res >= prim_res:
        return max(8, ch_min * prim_res // res)
    return min(ch_max, ch_min * prim_res // res)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), _act())


class IdentityEncoder(nn.Module):
    """Neutral uv geometry + texture -> one bias map per decoder level (the decoder's identity conditioning).

    Input (B, 6, E, E) (neutral geometry image and neutral texture, normalised). Output: dict
    ``{res: (B, ch(res), res, res)}`` for every res in ``levels`` (powers of two from the code size up to the
    primitive grid size).
    """

    def __init__(self, enc_res: int, levels: list[int], prim_res: int, ch_min: int, ch_max: int):
        super().__init__()
        self.levels = sorted(levels)
        self.stem = nn.Sequential(
            nn.Conv2d(6, channels_at(enc_res, prim_res, ch_min, ch_max), 3, padding=1), _act()
        )
        self.downs = nn.ModuleList()
        self.heads = nn.ModuleDict()
        res = enc_res
        cin = channels_at(enc_res, prim_res, ch_min, ch_max)
        if res in self.levels:
            self.heads[str(res)] = nn.Conv2d(cin, channels_at(res, prim_res, ch_min, ch_max), 1)
        while res > self.levels[0]:
            res //= 2
            cout = channels_at(res, prim_res, ch_min, ch_max)
            self.downs.append(_down(cin, cout))
            cin = cout
            if res in self.levels:
                self.heads[str(res)] = nn.Conv2d(cin, channels_at(res, prim_res, ch_min, ch_max), 1)
        missing = set(self.levels) - {int(k) for k in self.heads}
        if missing:
            raise ValueError(
                f"identity encoder cannot reach levels {sorted(missing)} from input size {enc_res}"
            )

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        h = self.stem(x)
        if str(h.shape[-1]) in self.heads:
            out[h.shape[-1]] = self.heads[str(h.shape[-1])](h)
        for down in self.downs:
            h = down(h)
            key = str(h.shape[-1])
            if key in self.heads:
                out[h.shape[-1]] = self.heads[key](h)
        return out


class ExpressionEncoder(nn.Module):
    """Frame uv geometry + texture (B, 6, E, E) -> (mu, logstd), each (B, expr_dim, S, S).

    Strided convolutions bring the input down to the code size S with ``features`` channels (64 in the
    reference) from which 1x1 convolutions give the VAE's mean and log standard deviation.
    """

    def __init__(self, enc_res: int, code_res: int, expr_dim: int, features: int, ch_min: int):
        super().__init__()
        n_down = int(math.log2(enc_res // code_res))
        if code_res * 2**n_down != enc_res:
            raise ValueError(f"encoder input {enc_res} is not code size {code_res} times a power of two")
        layers: list[nn.Module] = [nn.Conv2d(6, ch_min, 3, padding=1), _act()]
        cin = ch_min
        for i in range(n_down):
            cout = min(features, ch_min * 2 ** (i + 1)) if i < n_down - 1 else features
            layers.append(_down(cin, cout))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.mu = nn.Conv2d(features, expr_dim, 1)
        self.logstd = nn.Conv2d(features, expr_dim, 1)
        nn.init.zeros_(self.logstd.weight)
        nn.init.zeros_(self.logstd.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Small output scales keep the code near the prior early on; logstd is bounded to [-6, 1]."""
        h = self.body(x)
        logstd = (self.logstd(h) * 0.1).clamp(-6.0, 1.0)
        return self.mu(h) * 0.1, logstd
