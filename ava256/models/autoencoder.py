"""The universal avatar autoencoder (identity + expression encoders, VAE, primitive decoder, raymarching)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from ava256.models.calibration import Background, ColourCalibration
from ava256.models.decoder import PrimitiveDecoder
from ava256.models.encoders import ExpressionEncoder, IdentityEncoder
from ava256.models.rays import camera_rays
from ava256.models.uvmap import TopologyArrays, UVLayout


@dataclass
class ModelConfig:
    """Sizes of the model. The reference: 128 x 128 primitives of 8^3, volume radius 256 mm, dt 1/256.

    Units: ``volradius`` mm per normalised volume unit; ``dt`` raymarching step in normalised units;
    ``prim_size`` primitive side as a multiple of one uv cell's side on the surface; ``alpha_steps``: a raw
    opacity of 1 makes a ray opaque in about this many steps; ``alpha_bias``: the opacity logits' offset, so
    a ray starts at about ``alpha_bias / alpha_steps`` opacity per step; ``fadescale``, ``fadeexp``: the
    raymarcher's opacity fade at primitive borders, ``termination``: accumulated opacity that ends a ray
    (the original MVP's 8, 8 and 1); ``bg_init``, ``rgb_init``: initial background and primitive grey (0..255); ``pixel_lr_mult``: the
    learning-rate multiplier of the parameters in pixel units (:meth:`Autoencoder.param_groups`).
    """

    prim_res: int = 128
    voxels: int = 8
    enc_res: int = 256
    code_res: int = 4
    expr_dim: int = 16
    expr_features: int = 64
    ch_min: int = 32
    ch_max: int = 256
    voxel_ch: int = 16
    volradius: float = 256.0
    dt: float = 1.0 / 256.0
    alpha_steps: float = 2.0
    alpha_bias: float = 0.1
    prim_size: float = 1.5
    fadescale: float = 8.0
    fadeexp: float = 8.0
    termination: float = 1.0
    bg_res: list[int] = field(default_factory=lambda: [64, 48])
    bg_init: float = 100.0
    rgb_init: float = 100.0
    pixel_lr_mult: float = 2500.0
    n_cameras: int = 1
    n_identities: int = 1

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle (..., 3) -> rotation (..., 3, 3)."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-12)
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*w.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand_as(k)
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-12))
    return eye + a * k + b * (k @ k)


class Autoencoder(nn.Module):
    """Universal decoder with encoders.

    Args:
        cfg: sizes (:class:`ModelConfig`).
        topology: the face mesh topology (vertex count must match the data's ``verts``).
        vertmean: (V, 3) mean vertex positions, mm, head frame; vertstd: scalar std, mm — the loader's vertex
            normalisation, so normalised vertices map back to mm.
    """

    def __init__(self, cfg: ModelConfig, topology: TopologyArrays, vertmean: torch.Tensor, vertstd: float):
        super().__init__()
        self.cfg = cfg
        self.uv = UVLayout(topology, [cfg.enc_res, cfg.prim_res])
        self.register_buffer("vertmean", torch.as_tensor(vertmean, dtype=torch.float32).clone())
        self.register_buffer("vertstd", torch.tensor(float(vertstd), dtype=torch.float32))
        self.decoder = PrimitiveDecoder(
            cfg.code_res, cfg.expr_dim, cfg.prim_res, cfg.voxels, cfg.ch_min, cfg.ch_max, cfg.voxel_ch
        )
        self.id_encoder = IdentityEncoder(
            cfg.enc_res, self.decoder.levels, cfg.prim_res, cfg.ch_min, cfg.ch_max
        )
        self.expr_encoder = ExpressionEncoder(
            cfg.enc_res, cfg.code_res, cfg.expr_dim, cfg.expr_features, cfg.ch_min
        )
        self.colourcal = ColourCalibration(cfg.n_cameras, cfg.n_identities)
        self.background = Background(cfg.n_cameras, tuple(cfg.bg_res), init=cfg.bg_init)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: parameters in 0..255 pixel units (background image, colour-calibration biases)
        learn at ``lr * pixel_lr_mult``. Adam steps ~lr in a parameter's own units: 2e-4 of a pixel value per
        step would leave them at their init for thousands of iterations."""
        pixel = [self.background.image, self.colourcal.cam_bias, self.colourcal.id_bias]
        ids = {id(p) for p in pixel}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": pixel, "lr": lr * self.cfg.pixel_lr_mult}]

    # --- encoders --------------------------------------------------------------------------------------
    def _uv_input(self, verts: torch.Tensor, tex: torch.Tensor) -> torch.Tensor:
        e = self.cfg.enc_res
        geo = self.uv.to_uv_image(verts, e)
        if tex.shape[-1] != e:
            tex = nn.functional.interpolate(
                tex, size=(e, e), mode="bilinear", antialias=True, align_corners=False
            )
        return torch.cat([geo, tex.to(geo.dtype)], 1)

    def encode_identity(self, neut_verts: torch.Tensor, neut_tex: torch.Tensor) -> dict[int, torch.Tensor]:
        """neut_verts (B, V, 3), neut_tex (B, 3, T, T) normalised -> identity bias maps."""
        return self.id_encoder(self._uv_input(neut_verts, neut_tex))

    def encode_expression(self, verts: torch.Tensor, tex: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """verts (B, V, 3), tex (B, 3, T, T) normalised -> mu, logstd (B, expr_dim, S, S)."""
        return self.expr_encoder(self._uv_input(verts, tex))

    # --- decoder + rendering ----------------------------------------------------------------------------
    def decode(
        self,
        code: torch.Tensor,
        id_bias: dict[int, torch.Tensor],
        neut_verts: torch.Tensor,
        campos: torch.Tensor,
        guide_verts: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Decode primitives. Returns fp32 ``verts`` (B, V, 3) normalised, ``primpos`` (B, K, 3),
        ``primrot`` (B, K, 3, 3), ``primscale`` (B, K, 3) (normalised volume units), ``template``
        (B, K, 4, D, D, D).

        ``guide_verts`` (B, V, 3) normalised: place the primitives on this mesh (the tracked one) with zero
        residual transforms instead of on the decoded mesh; the decoded ``verts`` are still returned, so the
        geometry branch keeps learning (the original's warm-up for its first iterations)."""
        cfg = self.cfg
        viewdir = nn.functional.normalize(campos, dim=-1)
        dec = self.decoder(code, id_bias, viewdir)
        dec = {k: v.float() for k, v in dec.items()}
        verts = neut_verts.float() + self.uv.sample_vertices(dec["geometry"])
        place = verts if guide_verts is None else guide_verts.float()
        verts_vol = (place * self.vertstd + self.vertmean) / cfg.volradius
        pos, rot, cell = self.uv.surface_frames(verts_vol, cfg.prim_res)
        # the primitives ride on the mesh (positions stay differentiable); their base orientation and size
        # follow the mesh without gradients, which would otherwise let the image loss shear the mesh apart
        rot, cell = rot.detach(), cell.detach()
        b, k = pos.shape[:2]
        tr = dec["transform"].permute(0, 2, 3, 1).reshape(b, k, 9)
        if guide_verts is not None:  # residuals off but kept in the graph: DDP wants every parameter's grad
            tr = tr * 0.0
        half = (0.5 * cfg.prim_size * cell)[..., None]  # (B, K, 1)
        # bounded deltas: offset within one primitive size, rotation small, size x0.5..x2
        dpos = 2.0 * torch.tanh(tr[..., 0:3])
        drot = 0.5 * torch.tanh(tr[..., 3:6])
        dscale = 0.7 * torch.tanh(tr[..., 6:9])
        primpos = pos + torch.einsum("bkji,bkj->bki", rot, dpos * half)
        primrot = axis_angle_to_matrix(drot) @ rot
        primscale = 1.0 / (half * torch.exp(dscale)).clamp_min(1e-6)
        alpha = torch.relu(dec["alpha"] + cfg.alpha_bias) / (cfg.alpha_steps * cfg.dt)
        template = torch.cat([dec["rgb"] + cfg.rgb_init, alpha], 2)
        return {
            "verts": verts,
            "primpos": primpos,
            "primrot": primrot,
            "primscale": primscale,
            "template": template,
        }

    def render(
        self,
        prims: dict[str, torch.Tensor],
        camrot: torch.Tensor,
        campos: torch.Tensor,
        focal: torch.Tensor,
        princpt: torch.Tensor,
        pixelcoords: torch.Tensor,
        camindex: torch.Tensor,
        idindex: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raymarch (fp32, autocast off) and composite: -> image (N, 3, H, W) 0..255, alpha (N, 1, H, W)."""
        from ava256.models import get_raymarch

        raymarch = get_raymarch()
        with torch.autocast(device_type=camrot.device.type, enabled=False):
            raypos, raydir, tminmax = camera_rays(
                camrot.float(),
                campos.float(),
                focal.float(),
                princpt.float(),
                pixelcoords.float(),
                self.cfg.volradius,
            )
            rgba = raymarch(
                raypos,
                raydir,
                tminmax,
                prims["primpos"].float().contiguous(),
                prims["primrot"].float().contiguous(),
                prims["primscale"].float().contiguous(),
                prims["template"].float().contiguous(),
                dt=self.cfg.dt,
                fadescale=self.cfg.fadescale,
                fadeexp=self.cfg.fadeexp,
                termination=self.cfg.termination,
            )
            rgba = rgba.permute(0, 3, 1, 2)
            colour, acc = rgba[:, :3], rgba[:, 3:4]
            bg = self.background(camindex, tuple(colour.shape[-2:]))
            image = colour + (1.0 - acc) * bg
            image = self.colourcal(image, camindex, idindex)
        return image, acc

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        *,
        sample: bool = True,
        code: torch.Tensor | None = None,
        guide: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Full pass on a loader batch (contract dict). ``sample``: draw z ~ N(mu, std) (training) or use mu.

        ``code``: use this expression code (B, E, S, S) instead of encoding the batch's expression (transfer).
        ``guide``: place the primitives on the batch's tracked mesh ``verts`` (:meth:`decode`'s warm-up).
        Returns image (B, 3, H, W), alpha (B, 1, H, W), verts (B, V, 3), mu, logstd, primscale, code.
        """
        id_bias = self.encode_identity(batch["neut_verts"], batch["neut_tex"])
        mu = logstd = None
        if code is None:
            mu, logstd = self.encode_expression(batch["verts"], batch["tex"])
            mu, logstd = mu.float(), logstd.float()
            code = mu + torch.randn_like(mu) * torch.exp(logstd) if sample else mu
        guide_verts = batch["verts"] if guide else None
        prims = self.decode(code, id_bias, batch["neut_verts"], batch["campos"], guide_verts)
        image, alpha = self.render(
            prims,
            batch["camrot"],
            batch["campos"],
            batch["focal"],
            batch["princpt"],
            batch["pixelcoords"],
            batch["camindex"],
            batch["idindex"],
        )
        return {
            "image": image,
            "alpha": alpha,
            "verts": prims["verts"],
            "primscale": prims["primscale"],
            "mu": mu,
            "logstd": logstd,
            "code": code,
        }


def losses(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: dict[str, float]
) -> dict[str, torch.Tensor]:
    """Weighted losses (fp32). Keys: ``image`` L1 (0..255 units), ``verts`` L1 (normalised), ``kl`` (sum over
    the code, mean over samples), ``primvol`` (sum of primitive volumes, normalised units^3, mean over samples),
    and ``total`` = sum of weight * term. Samples with ``valid`` False contribute nothing."""
    valid = batch["valid"].to(out["image"].dtype)
    nvalid = valid.sum().clamp_min(1.0)

    def per_sample_mean(x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).mean(1) * valid).sum() / nvalid

    terms = {
        "image": per_sample_mean((out["image"] - batch["image"].to(out["image"].dtype)).abs()),
        "verts": per_sample_mean((out["verts"] - batch["verts"].float()).abs()),
        "primvol": (torch.prod(1.0 / out["primscale"], -1).sum(-1) * valid).sum() / nvalid,
    }
    if out.get("mu") is not None:
        mu, logstd = out["mu"], out["logstd"]
        kl = 0.5 * (mu**2 + torch.exp(2 * logstd) - 1 - 2 * logstd)
        terms["kl"] = (kl.flatten(1).sum(1) * valid).sum() / nvalid
    total = sum(weights.get(k, 0.0) * v for k, v in terms.items())
    terms["total"] = total
    return terms


def psnr(pred: torch.Tensor, target: torch.Tensor, peak: float = 255.0) -> torch.Tensor:
    """Per-image PSNR in dB of (N, 3, H, W) images in 0..peak."""
    mse = ((pred.clamp(0, peak) - target) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(peak**2 / mse.clamp_min(1e-10))


def ssim(pred: torch.Tensor, target: torch.Tensor, peak: float = 255.0, window: int = 7) -> torch.Tensor:
    """Per-image SSIM (Gaussian window, sigma 1.5) of (N, 3, H, W) images in 0..peak."""
    window = min(window, pred.shape[-1], pred.shape[-2])
    if window % 2 == 0:
        window -= 1
    x = pred.clamp(0, peak) / peak
    y = target / peak
    g = torch.exp(-((torch.arange(window, dtype=x.dtype, device=x.device) - window // 2) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(3, 1, window, window).contiguous()

    def blur(z: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv2d(z, k, groups=3)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "Autoencoder",
    "ModelConfig",
    "losses",
    "psnr",
    "ssim",
    "axis_angle_to_matrix",
    "n_parameters",
]
