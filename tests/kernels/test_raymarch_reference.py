"""The pure-PyTorch raymarcher: exact small cases, a brute-force oracle, and float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from ava256.kernels import raymarch
from ava256.kernels.reference import local_coords, raymarch_reference, trilinear
from ava256.kernels.scenes import random_scene

#: Border fade settings: off (hard-edged primitives), MVP's defaults, and a non-integer exponent.
FADES = {"hard": (0.0, 8.0), "mvp": (8.0, 8.0), "soft": (3.0, 2.5)}


def _naive(scene, dt: float, termination: float, fadescale: float, fadeexp: float) -> torch.Tensor:
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
                            fade = math.exp(-fadescale * sum(abs(float(v)) ** fadeexp for v in y))
                            if wflat is not None:
                                yy = trilinear(wflat, idx, yy, d).clamp(-1, 1)
                            rgba = trilinear(tflat, idx, yy, d)[0]
                            a = torch.minimum(1 - a_acc, rgba[3] * fade * dt)
                            c = c + rgba[:3] * a
                            a_acc = a_acc + a
                    step += 1
                out[b, i, j, :3], out[b, i, j, 3] = c, a_acc
    return out


@pytest.mark.parametrize(("warp", "fade"), [(False, "hard"), (False, "mvp"), (False, "soft"), (True, "mvp")])
def test_reference_matches_naive_loop(warp, fade):
    scene = random_scene(1, 6, 5, k=5, d=3, warp=warp, alpha_max=6.0, seed=3)
    dt = 0.07
    fs, fe = FADES[fade]
    got = raymarch_reference(*scene.args(), dt=dt, fadescale=fs, fadeexp=fe, termination=0.9)
    want = _naive(scene, dt, 0.9, fs, fe)
    assert (want[..., 3] > 0).sum() > 5, "scene too sparse to test anything"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fade", ["hard", "mvp"])
def test_reference_chunking_does_not_change_result(fade):
    scene = random_scene(2, 9, 7, k=6, d=4, seed=5)
    fs, fe = FADES[fade]
    a = raymarch_reference(*scene.args(), dt=0.05, fadescale=fs, fadeexp=fe)
    b = raymarch_reference(*scene.args(), dt=0.05, fadescale=fs, fadeexp=fe, chunk_elems=13)
    assert (a[..., 3] > 0).sum() > 10
    # torch's CPU exp/pow round a SIMD batch and a scalar tail differently (last ulp): exact only without fade
    tol = 0.0 if fs == 0 else 1e-6
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


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
    out = raymarch(*args, dt=0.01, fadescale=0.0, backend="reference")[0]
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
    out = raymarch(*args, dt=dt, fadescale=0.0, backend="reference")[0]
    z = torch.tensor(-2.0) + torch.arange(400, dtype=torch.float32) * torch.tensor(dt)
    n = int(((z - 0.0).abs() * 2.0 <= 1.0).sum())  # samples with |z| <= 0.5
    want = min(1.0, n * alpha * dt)
    assert want < 1.0
    torch.testing.assert_close(
        out[..., 3][inside], torch.full((int(inside.sum()),), want), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("fade", ["mvp", "soft"])
def test_constant_density_with_fade_closed_form(fade):
    """A = sum_i alpha * dt * fade(y_i) over the samples in the cube, y_i = (x, y, z_i) / half, C = rgb * A;
    the fade makes the silhouette soft: rays near the cube's edge get much less than the centre ray."""
    fs, fe = FADES[fade]
    dt, alpha, half = 0.01, 0.8, 0.5
    args, inside = _axis_box_scene(alpha=alpha, half=half)
    out = raymarch(*args, dt=dt, fadescale=fs, fadeexp=fe, backend="reference")[0]
    z = torch.tensor(-2.0) + torch.arange(400, dtype=torch.float32) * torch.tensor(dt)
    zs = [float(v) / half for v in z if abs(float(v)) / half <= 1.0]
    px, py = args[0][0, ..., 0], args[0][0, ..., 1]
    want = torch.zeros_like(px)
    for i, j in inside.nonzero().tolist():
        u, v = float(px[i, j]) / half, float(py[i, j]) / half
        fades = [math.exp(-fs * (abs(u) ** fe + abs(v) ** fe + abs(w) ** fe)) for w in zs]
        want[i, j] = alpha * dt * sum(fades)
    assert float(want.max()) < 1.0
    torch.testing.assert_close(out[..., 3], want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        out[..., :3], torch.tensor([0.2, 0.5, 0.9]) * want[..., None], rtol=1e-4, atol=1e-6
    )
    hard = raymarch(*args, dt=dt, fadescale=0.0, backend="reference")[0, ..., 3]
    assert (out[..., 3][inside] < hard[inside]).all()
    assert float(out[..., 3][inside].min()) < 0.5 * float(out[..., 3][inside].max())


def test_fade_gives_transform_gradients_on_a_constant_template():
    """With a constant template the sampled values do not depend on y, so hard-edged primitives give the
    transforms no gradient; with the fade they get one, equal to a finite difference."""
    args, inside = _axis_box_scene(alpha=0.8, half=0.5, res=5)
    raypos, raydir, tminmax, pos, rot, scale, template = (t.double() for t in args)

    def alpha_sum(p: torch.Tensor, fadescale: float) -> torch.Tensor:
        out = raymarch_reference(
            raypos, raydir, tminmax, p, rot, scale, template, dt=0.01, fadescale=fadescale
        )
        return out[..., 3].sum()

    shift = torch.tensor([[[0.013, -0.021, 0.0]]], dtype=torch.float64)
    for fadescale in (0.0, 8.0):
        p = shift.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(alpha_sum(p, fadescale), p)
        if fadescale == 0:
            assert (g == 0).all()
            continue
        assert float(g[0, 0, :2].abs().min()) > 1e-3
        eps = 1e-6
        for j in range(2):
            e = torch.zeros_like(shift)
            e[0, 0, j] = eps
            fd = (alpha_sum(shift + e, fadescale) - alpha_sum(shift - e, fadescale)) / (2 * eps)
            torch.testing.assert_close(g[0, 0, j], fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"dt": 0.0}, "dt"),
        ({"fadescale": -1.0}, "fadescale"),
        ({"fadeexp": 0.5}, "fadeexp"),
        ({"fadeexp": float("nan")}, "fadeexp"),
        ({"termination": 0.0}, "termination"),
        ({"termination": 1.5}, "termination"),
    ],
)
def test_bad_march_parameters_are_refused(kw, name):
    scene = random_scene(1, 2, 2, k=2, d=2, seed=1)
    for backend in ("reference", "vectorized"):
        with pytest.raises(ValueError, match=name):
            raymarch(*scene.args(), **({"dt": 0.05} | kw), backend=backend)


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
    """With the border fade on (the default): gradients through the fade to the transforms included."""
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
