"""CUDA raymarcher vs. the PyTorch reference (values and gradients), plus the CPU-side acceleration grid."""

from __future__ import annotations

import pytest
import torch

from ava256.kernels import function, raymarch
from ava256.kernels.function import build_grid
from ava256.kernels.reference import local_coords, raymarch_reference
from ava256.kernels.scenes import Scene, head_scene, random_scene

CASES = {
    # name: (scene factory, dt)
    "small": (lambda: random_scene(1, 16, 12, k=8, d=4, seed=1), 0.02),
    "batch_warp": (lambda: random_scene(2, 20, 17, k=32, d=5, warp=True, seed=2), 0.02),
    "overlapping": (lambda: random_scene(1, 18, 18, k=16, d=3, spread=0.05, alpha_max=4.0, seed=3), 0.02),
    "opaque": (lambda: random_scene(2, 16, 16, k=12, d=4, alpha_max=1e4, seed=4), 0.02),
    "opaque_warp": (lambda: random_scene(1, 16, 16, k=12, d=4, alpha_max=1e4, warp=True, seed=5), 0.02),
    "head": (lambda: head_scene(1, 24, 32, k=512, d=4, alpha_max=64.0, seed=6), 1.0 / 256),
}

#: Border fade settings (raymarch keywords): MVP's defaults (fadescale 8, fadeexp 8: the kernel's squaring
#: path), off (hard-edged), a non-integer exponent (the kernel's powf path), and an early termination.
FADES = {
    "mvp": {},
    "hard": {"fadescale": 0.0},
    "soft": {"fadescale": 3.0, "fadeexp": 2.5},
    "mvp_term0.5": {"termination": 0.5},
}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_grid_lists_every_primitive_containing_a_point(device):
    """The acceleration structure (built on CPU or GPU): the cell of any point lists all primitives containing
    it, in ascending k."""
    scene = random_scene(2, 2, 2, k=40, d=2, spread=0.6, seed=8)
    s = scene.to(device)
    grid = build_grid(s.primpos, s.primrot, s.primscale, cell_factor=0.5)
    grid = type(grid)(grid.gridinfo.cpu(), grid.cell_start.cpu(), grid.cell_prims.cpu(), grid.res)
    gx, gy, gz = grid.res
    assert gx * gy * gz > 8
    g = torch.Generator().manual_seed(0)
    for n in range(2):
        x = torch.rand(4000, 3, generator=g) * 2.4 - 1.2
        y = local_coords(x[:, None], scene.primpos[n][None], scene.primrot[n][None], scene.primscale[n][None])
        inside = (y.abs() <= 1).all(-1)  # (P, K)
        assert inside.any(1).sum() > 200
        lo, inv = grid.gridinfo[n, 0:3], grid.gridinfo[n, 6:9]
        c = torch.floor((x - lo) * inv).long()
        for p in torch.nonzero(inside.any(1)).flatten().tolist():
            cx, cy, cz = c[p].tolist()
            assert 0 <= cx < gx and 0 <= cy < gy and 0 <= cz < gz
            cell = ((n * gz + cz) * gy + cy) * gx + cx
            listed = grid.cell_prims[grid.cell_start[cell] : grid.cell_start[cell + 1]].tolist()
            assert listed == sorted(listed)
            assert set(torch.nonzero(inside[p]).flatten().tolist()) <= set(listed)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _run(scene: Scene, dt: float, backend: str, device: str, grad_out: torch.Tensor, **fade):
    s = scene.to(device)
    leaves = [s.primpos, s.primrot, s.primscale, s.template] + ([s.warp] if s.warp is not None else [])
    leaves = [t.clone().requires_grad_(True) for t in leaves]
    pos, rot, scale, tmpl = leaves[:4]
    warp = leaves[4] if s.warp is not None else None
    out = raymarch(s.raypos, s.raydir, s.tminmax, pos, rot, scale, tmpl, warp, dt=dt, backend=backend, **fade)
    (out * grad_out.to(device)).sum().backward()
    return out.detach().cpu(), [t.grad.detach().cpu() for t in leaves]


def _check_cuda_against_reference(case: str, fade: dict) -> None:
    scene, dt = CASES[case][0](), CASES[case][1]
    g = torch.Generator().manual_seed(123)
    grad_out = torch.randn(*scene.raypos.shape[:3], 4, generator=g)
    ref, ref_grads = _run(scene, dt, "reference", "cpu", grad_out, **fade)
    got, got_grads = _run(scene, dt, "cuda", "cuda", grad_out, **fade)
    assert (ref[..., 3] > 0).float().mean() > 0.05, "scene too sparse"
    assert torch.isfinite(got).all()
    # Containment decisions are bit-exact; only rounding of sums (and of the fade's exp/pow) may differ, and,
    # rarely, a termination decision right at the threshold.
    assert _rel(got, ref) < 1e-5
    assert ((got - ref).abs() > 1e-4).float().mean() < 2e-3
    names = ["primpos", "primrot", "primscale", "template", "warp"]
    for name, a, b in zip(names, got_grads, ref_grads):
        assert b.abs().max() > 0, f"reference gradient of {name} is zero: the case tests nothing"
        assert _rel(a, b) < 1e-3, f"{case}: gradient of {name} differs: rel {_rel(a, b):.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "flags",
    [(0, 0), (4, 0), (4, 8), (4, 16)],
    ids=["atomics", "warp_aggregated", "aggregated_8x16_tiles", "aggregated_capped_registers"],
)
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_matches_reference(case, flags, monkeypatch):
    """Every kernel variant, at the default border fade (MVP's) and termination."""
    monkeypatch.setattr(function, "BACKWARD_FLAGS", flags[0])
    monkeypatch.setattr(function, "LAUNCH_FLAGS", flags[1])
    _check_cuda_against_reference(case, FADES["mvp"])


@pytest.mark.gpu
@pytest.mark.parametrize("fade", [f for f in FADES if f != "mvp"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_matches_reference_fade_settings(case, fade):
    """The default kernel variant with the fade off, with a non-integer exponent and an early termination."""
    _check_cuda_against_reference(case, FADES[fade])


@pytest.mark.gpu
def test_cuda_fade_gives_transform_gradients_on_a_constant_template():
    """A constant template: the transforms' gradients come only through the fade (zero with fadescale=0)."""
    scene = random_scene(1, 16, 16, k=12, d=3, seed=13)
    scene.template[:, :, :3] = 0.5
    scene.template[:, :, 3] = 2.0
    g = torch.randn(*scene.raypos.shape[:3], 4, generator=torch.Generator().manual_seed(1))
    runs = {}
    for fadescale in (0.0, 8.0):
        ref, ref_grads = _run(scene, 0.02, "reference", "cpu", g, fadescale=fadescale)
        got, got_grads = _run(scene, 0.02, "cuda", "cuda", g, fadescale=fadescale)
        assert _rel(got, ref) < 1e-5
        runs[fadescale] = (got_grads[:3], ref_grads[:3])  # primpos, primrot, primscale
    for (hard_cuda, hard_ref), (cuda, ref) in zip(zip(*runs[0.0]), zip(*runs[8.0])):
        scale = float(ref.abs().max())
        assert scale > 0 and _rel(cuda, ref) < 1e-3
        # hard-edged: zero up to the rounding of the cancelling trilinear corner terms
        assert float(hard_cuda.abs().max()) < 1e-4 * scale and float(hard_ref.abs().max()) < 1e-4 * scale


@pytest.mark.gpu
def test_cuda_rays_missing_everything_are_zero():
    scene = random_scene(1, 12, 12, k=8, d=3, seed=9)
    scene.raydir = -scene.raydir  # look away from the volume
    scene.tminmax[..., 0], scene.tminmax[..., 1] = 0.0, 5.0
    out = raymarch(*scene.to("cuda").args(), dt=0.02)
    assert out.is_cuda and (out == 0).all()


@pytest.mark.gpu
def test_cuda_is_default_for_cuda_tensors_and_env_forces_reference(monkeypatch):
    scene = random_scene(1, 10, 10, k=6, d=3, seed=10).to("cuda")
    monkeypatch.setenv("AVA256_RAYMARCH", "reference")
    forced = raymarch(*scene.args(), dt=0.03)
    monkeypatch.delenv("AVA256_RAYMARCH")
    auto = raymarch(*scene.args(), dt=0.03)
    direct = raymarch_reference(*scene.args(), dt=0.03)
    torch.testing.assert_close(forced, direct, rtol=0, atol=0)
    torch.testing.assert_close(auto, direct, rtol=1e-4, atol=1e-5)
