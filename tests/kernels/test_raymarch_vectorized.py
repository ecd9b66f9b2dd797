"""The vectorised PyTorch raymarcher (the default CPU path) against the step-by-step reference."""

from __future__ import annotations

import pytest
import torch

import ava256.kernels as kernels
from ava256.kernels import raymarch
from ava256.kernels import vectorized as vec
from ava256.kernels.reference import ray_box_intervals, raymarch_reference
from ava256.kernels.scenes import Scene, head_scene, random_scene
from ava256.kernels.vectorized import raymarch_vectorized, sphere_cull

#: Border fade settings: off (hard-edged), MVP's defaults (fadescale 8, fadeexp 8), a non-integer exponent.
HARD = {"fadescale": 0.0}
MVP: dict = {}
SOFT = {"fadescale": 3.0, "fadeexp": 2.5}

CASES = {
    # name: (scene factory, dt, termination, fade keywords)
    "small": (lambda: random_scene(1, 16, 12, k=8, d=4, seed=1), 0.02, 1.0, MVP),
    "small_hard": (lambda: random_scene(1, 16, 12, k=8, d=4, seed=1), 0.02, 1.0, HARD),
    "batch_warp": (lambda: random_scene(2, 14, 11, k=24, d=5, warp=True, seed=2), 0.02, 1.0, MVP),
    "overlapping": (
        lambda: random_scene(1, 14, 14, k=16, d=3, spread=0.05, alpha_max=4.0, seed=3),
        0.02,
        1.0,
        SOFT,
    ),
    "opaque": (lambda: random_scene(2, 12, 12, k=12, d=4, alpha_max=1e4, seed=4), 0.02, 1.0 - 1e-4, HARD),
    "opaque_warp": (
        lambda: random_scene(1, 12, 12, k=12, d=4, alpha_max=1e4, warp=True, seed=5),
        0.02,
        1.0,
        MVP,
    ),
    "early_termination": (
        lambda: random_scene(1, 12, 12, k=10, d=3, alpha_max=30.0, seed=6),
        0.02,
        0.5,
        MVP,
    ),
    "head": (lambda: head_scene(1, 20, 24, k=512, d=4, alpha_max=64.0, seed=7), 1.0 / 256, 1.0, MVP),
}


def _run(fn, scene: Scene, dt: float, termination: float, fade: dict, **kw):
    """Output and the gradients of a fixed random projection of it w.r.t. every differentiable input."""
    leaves = [t.clone().requires_grad_(True) for t in scene.args()[3:] if t is not None]
    args = list(scene.args()[:3]) + leaves + ([None] if scene.warp is None else [])
    out = fn(*args, dt=dt, termination=termination, **fade, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    return out.detach(), [
        torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads, strict=True)
    ]


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_float64(name):
    make, dt, term, fade = CASES[name]
    scene = make().to(dtype=torch.float64)
    want, want_g = _run(raymarch_reference, scene, dt, term, fade)
    got, got_g = _run(raymarch_vectorized, scene, dt, term, fade)
    alpha = want[..., 3]
    assert (alpha > 0).sum() >= 10 and (alpha == 0).sum() >= 1, "scene must have hits and misses"
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for a, b in zip(got_g, want_g, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10 * float(b.abs().max()))


@pytest.mark.parametrize("name", ["batch_warp", "opaque", "head"])
def test_matches_reference_float32(name):
    make, dt, term, fade = CASES[name]
    scene = make()
    want, want_g = _run(raymarch_reference, scene, dt, term, fade)
    got, got_g = _run(raymarch_vectorized, scene, dt, term, fade)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5)
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


@pytest.mark.parametrize("fade", [HARD, MVP], ids=["hard", "mvp"])
def test_opaque_scene_terminates_and_saturates(fade):
    make, dt, _, _ = CASES["opaque"]
    out = raymarch_vectorized(*make().args(), dt=dt, **fade)
    alpha = out[..., 3]
    assert (alpha > 0.999).sum() >= 20
    assert (alpha <= 1.0 + 1e-6).all()


def test_grouping_and_chunking_do_not_change_result():
    """Tiny ray chunks and sample groups (several windows, groups of one ray) give the same result."""
    scene = random_scene(2, 9, 7, k=6, d=4, warp=True, seed=5).to(dtype=torch.float64)
    a = raymarch_vectorized(*scene.args(), dt=0.03)
    b = raymarch_vectorized(*scene.args(), dt=0.03, chunk_elems=13, max_samples=7)
    assert (a[..., 3] > 0).sum() > 10
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_one_step_windows(monkeypatch):
    """The termination-aware enumeration gives the same result with windows of 1, 2, 4, ... steps."""
    make, dt, term, fade = CASES["overlapping"]
    scene = make().to(dtype=torch.float64)
    want = raymarch_vectorized(*scene.args(), dt=dt, termination=term, **fade)
    monkeypatch.setattr(vec, "_FIRST_WINDOW", 1)
    got = raymarch_vectorized(*scene.args(), dt=dt, termination=term, **fade)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_rays_missing_everything_are_exactly_zero():
    scene = random_scene(1, 10, 10, k=8, d=3, seed=9)
    scene.raydir = -scene.raydir  # look away from the primitives
    scene.tminmax[..., 0], scene.tminmax[..., 1] = 0.0, 5.0
    assert (raymarch_vectorized(*scene.args(), dt=0.02) == 0).all()
    scene = random_scene(1, 6, 6, k=4, d=3, seed=1)
    scene.tminmax[..., 1] = scene.tminmax[..., 0]  # empty intervals
    assert (raymarch_vectorized(*scene.args(), dt=0.05) == 0).all()


def test_sphere_cull_keeps_every_pair_the_slab_test_hits():
    """The float32 bounding-sphere cull is conservative: every (ray, primitive) pair whose box the ray's
    interval enters (the reference's slab test) is a candidate."""
    scenes = [
        random_scene(2, 24, 20, k=40, seed=3),
        random_scene(1, 24, 20, k=30, spread=0.05, half_size=(0.02, 0.6), seed=4),
        head_scene(1, 40, 32, k=2048, d=2, seed=5),
    ]
    for s in scenes:
        for b in range(s.raypos.shape[0]):
            o, d, tmm = s.raypos[b].reshape(-1, 3), s.raydir[b].reshape(-1, 3), s.tminmax[b].reshape(-1, 2)
            pos, rot, scale = s.primpos[b], s.primrot[b], s.primscale[b]
            ray_idx, prim_idx = sphere_cull(o, d, tmm[:, 0], tmm[:, 1], pos, rot, scale)
            tn, tf = ray_box_intervals(o[:, None], d[:, None], pos[None], rot[None], scale[None])
            hit = torch.maximum(tn, tmm[:, :1]) <= torch.minimum(tf, tmm[:, 1:])
            cand = torch.zeros_like(hit)
            cand[ray_idx, prim_idx] = True
            assert hit.sum() > 20
            assert not (hit & ~cand).any()
            assert cand.sum() < 4 * hit.sum(), "the cull should not be much looser than the slab test"


def test_negative_alpha_falls_back_to_reference():
    scene = random_scene(1, 8, 8, k=5, d=3, seed=2).to(dtype=torch.float64)
    scene.template[:, :, 3] -= 2.0  # some negative opacities: the closed form does not apply
    want = raymarch_reference(*scene.args(), dt=0.05, fadeexp=3.0, termination=0.9)
    got = raymarch_vectorized(*scene.args(), dt=0.05, fadeexp=3.0, termination=0.9)
    assert (want != 0).any()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("warp", [False, True])
def test_gradcheck_float64(warp):
    """With the border fade on (the default): gradients through the fade to the transforms included."""
    scene = random_scene(1, 3, 3, k=3, d=2, warp=warp, alpha_max=12.0, seed=11).to(dtype=torch.float64)
    ins = [scene.primpos, scene.primrot, scene.primscale, scene.template] + ([scene.warp] if warp else [])
    ins = [t.clone().requires_grad_(True) for t in ins]

    def fn(*xs):
        wp = xs[4] if warp else None
        return raymarch_vectorized(
            scene.raypos, scene.raydir, scene.tminmax, *xs[:4], wp, dt=0.1, termination=0.95
        )

    assert (fn(*ins)[..., 3] > 0).sum() >= 3
    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_raymarch_picks_vectorized_on_cpu(monkeypatch):
    """Backend selection on CPU: auto -> vectorized; backend= and AVA256_RAYMARCH pick either by name."""
    calls = []

    def spy(name, fn):
        def wrapped(*a, **kw):
            calls.append(name)
            return fn(*a, **kw)

        return wrapped

    monkeypatch.setattr(kernels, "raymarch_vectorized", spy("vectorized", raymarch_vectorized))
    monkeypatch.setattr(kernels, "raymarch_reference", spy("reference", raymarch_reference))
    monkeypatch.delenv("AVA256_RAYMARCH", raising=False)
    scene = random_scene(1, 6, 6, k=4, d=3, seed=10)
    auto = raymarch(*scene.args(), dt=0.05)
    ref = raymarch(*scene.args(), dt=0.05, backend="reference")
    assert calls == ["vectorized", "reference"]
    monkeypatch.setenv("AVA256_RAYMARCH", "reference")
    raymarch(*scene.args(), dt=0.05)
    monkeypatch.setenv("AVA256_RAYMARCH", "vectorized")
    raymarch(*scene.args(), dt=0.05)
    assert calls[2:] == ["reference", "vectorized"]
    torch.testing.assert_close(auto, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="backend"):
        raymarch(*scene.args(), dt=0.05, backend="bogus")


@pytest.mark.parametrize("backend", ["vectorized", "reference"])
def test_raymarch_passes_fade_and_termination_through(backend):
    """``raymarch``'s fadescale, fadeexp and termination reach the implementation (defaults: MVP's 8, 8, 1)."""
    scene = random_scene(1, 8, 8, k=6, d=3, alpha_max=30.0, seed=12).to(dtype=torch.float64)
    impl = raymarch_vectorized if backend == "vectorized" else raymarch_reference
    kw = {"fadescale": 2.0, "fadeexp": 3.0, "termination": 0.6}
    got = raymarch(*scene.args(), dt=0.04, backend=backend, **kw)
    torch.testing.assert_close(got, impl(*scene.args(), dt=0.04, **kw), rtol=0, atol=0)
    default = raymarch(*scene.args(), dt=0.04, backend=backend)
    mvp = impl(*scene.args(), dt=0.04, fadescale=8.0, fadeexp=8.0, termination=1.0)
    torch.testing.assert_close(default, mvp, rtol=0, atol=0)
    for other in ({"fadescale": 0.0}, {"fadeexp": 3.0}, {"termination": 0.6}):
        assert not torch.equal(default, raymarch(*scene.args(), dt=0.04, backend=backend, **other)), other
