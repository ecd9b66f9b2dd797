"""The pure-PyTorch raymarcher: exact small cases, a brute-force oracle, and float64 gradcheck."""

from __future__ import annotations

import pytest
import torch

from ava256.kernels import raymarch
from ava256.kernels.reference import local_coords, raymarch_reference, trilinear
from ava256.kernels.scenes import random_scene


def _naive(scene, dt: float, termination: float) -> torch.Tensor:
    """Literal transcription of the contract: every ray, every step, every primitive (no culling)."""
    raypos, raydir, tminmax, pos, rot, scale, template, warp = scene.args()
    n, h, w, _ = raypos.shape
    k, d = pos.shape[1], template.shape[-1]
    out = torch.zeros(n, h, w, 4, dtype=raypos.dtype)
    for b in range(n):
        tflat = template[b].permute(0, 2, 3, 4, 1).reshape(k * d**3, 4)
        wflat = None if warp is None else warp[b].permute(0, 2, 3, 4, 1).reshape(k * d**3, 3)
        for i in range(h):
            for j in range(w):
                o, dv = raypos[b, i, j], raydir[b, i, j]
                tmin, tmax = tminmax[b, i, j]
                c, a_acc = torch.zeros(3, dtype=o.dtype), torch.zeros((), dtype=o.dtype)
                step = 0
                while True:
                    t = tmin + torch.tensor(float(step), dtype=o.dtype) * torch.tensor(dt, dtype=o.dtype)
                    if not t < tmax or a_acc >= termination:
                        break
                    x = o + t * dv
                    for kk in range(k):
                        y = local_coords(x, pos[b, kk], rot[b, kk], scale[b, kk])
                        if bool((y.abs() <= 1).all()) and a_acc < termination:
                            idx = torch.tensor([kk])
                            yy = y[None]
                            if wflat is not None:
                                yy = trilinear(wflat, idx, yy, d).clamp(-1, 1)
                            rgba = trilinear(tflat, idx, yy, d)[0]
                            a = torch.minimum(1 - a_acc, rgba[3] * dt)
                            c = c + rgba[:3] * a
                            a_acc = a_acc + a
                    step += 1
                out[b, i, j, :3], out[b, i, j, 3] = c, a_acc
    return out


@pytest.mark.parametrize("warp", [False, True])
def test_reference_matches_naive_loop(warp):
    scene = random_scene(1, 6, 5, k=5, d=3, warp=warp, alpha_max=6.0, seed=3)
    dt = 0.07
    got = raymarch_reference(*scene.args(), dt=dt, termination=0.9)
    want = _naive(scene, dt, 0.9)
    assert (want[..., 3] > 0).sum() > 5, "scene too sparse to test anything"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_reference_chunking_does_not_change_result():
    scene = random_scene(2, 9, 7, k=6, d=4, seed=5)
    a = raymarch_reference(*scene.args(), dt=0.05)
    b = raymarch_reference(*scene.args(), dt=0.05, chunk_elems=13)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _axis_box_scene(alpha: float, rgb=(0.2, 0.5, 0.9), half=0.5, d=2, res=9):
    """One axis-aligned cube [-half, half]^3 of constant RGBA; parallel rays along +z over [-1,1]^2."""
    lin = torch.linspace(-0.95, 0.95, res)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    raypos = torch.stack([xx, yy, torch.full_like(xx, -2.0)], -1)[None]
    raydir = torch.zeros_like(raypos)
    raydir[..., 2] = 1.0
    tminmax = torch.zeros(1, res, res, 2)
    tminmax[..., 0], tminmax[..., 1] = 0.0, 4.0
    pos = torch.zeros(1, 1, 3)
    rot = torch.eye(3)[None, None]
    scale = torch.full((1, 1, 3), 1.0 / half)
    template = torch.empty(1, 1, 4, d, d, d)
    for ch, v in enumerate(rgb):
        template[:, :, ch] = v
    template[:, :, 3] = alpha
    inside = (xx.abs() <= half) & (yy.abs() <= half)
    return (raypos, raydir, tminmax, pos, rot, scale, template), inside


def test_opaque_primitive_silhouette_and_misses():
    args, inside = _axis_box_scene(alpha=1e4)
    out = raymarch(*args, dt=0.01, backend="reference")[0]
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(out[..., 3][inside], torch.ones(int(inside.sum())))
    assert (out[~inside] == 0).all(), "rays missing every primitive must stay exactly 0"
    torch.testing.assert_close(
        out[..., :3][inside], torch.tensor([0.2, 0.5, 0.9]).expand(int(inside.sum()), 3)
    )


def test_constant_density_closed_form():
    """A = min(1, n * alpha * dt) with n the number of samples inside the cube, C = rgb * A."""
    dt, alpha = 0.01, 0.8
    args, inside = _axis_box_scene(alpha=alpha)
    out = raymarch(*args, dt=dt, backend="reference")[0]
    z = torch.tensor(-2.0) + torch.arange(400, dtype=torch.float32) * torch.tensor(dt)
    n = int(((z - 0.0).abs() * 2.0 <= 1.0).sum())  # samples with |z| <= 0.5
    want = min(1.0, n * alpha * dt)
    assert want < 1.0
    torch.testing.assert_close(
        out[..., 3][inside], torch.full((int(inside.sum()),), want), rtol=1e-4, atol=1e-5
    )


def test_termination_stops_accumulating():
    scene = random_scene(1, 10, 10, k=6, d=3, alpha_max=40.0, seed=7)
    dt = 0.02
    full = raymarch_reference(*scene.args(), dt=dt, termination=1.0 - 1e-4)
    early = raymarch_reference(*scene.args(), dt=dt, termination=0.3)
    a_full, a_early = full[..., 3], early[..., 3]
    reached = a_full >= 0.3
    assert reached.sum() > 3
    # a terminated ray overshoots the threshold by at most one sample's opacity (alpha_max * dt)
    assert (a_early[reached] >= 0.3).all()
    assert (a_early[reached] <= 0.3 + 40.0 * dt + 1e-6).all()
    assert (a_early[reached] < a_full[reached]).any()
    torch.testing.assert_close(a_early[~reached], a_full[~reached])
    assert (full[..., 3] <= 1.0 + 1e-6).all()


def test_missing_rays_and_empty_intervals_are_zero():
    scene = random_scene(1, 6, 6, k=4, d=3, seed=1)
    scene.tminmax[..., 1] = scene.tminmax[..., 0]  # empty intervals
    out = raymarch_reference(*scene.args(), dt=0.05)
    assert (out == 0).all()


@pytest.mark.parametrize("warp", [False, True])
def test_gradcheck_float64(warp):
    scene = random_scene(1, 3, 3, k=3, d=2, warp=warp, alpha_max=12.0, seed=11).to(dtype=torch.float64)
    dt = 0.1
    ins = [scene.primpos, scene.primrot, scene.primscale, scene.template] + ([scene.warp] if warp else [])
    ins = [t.clone().requires_grad_(True) for t in ins]

    def fn(*xs):
        pos, rot, scale, tmpl = xs[:4]
        wp = xs[4] if warp else None
        return raymarch_reference(
            scene.raypos, scene.raydir, scene.tminmax, pos, rot, scale, tmpl, wp, dt=dt, termination=0.95
        )

    out = fn(*ins)
    assert (out[..., 3] > 0).sum() >= 3
    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-5, rtol=1e-4)
