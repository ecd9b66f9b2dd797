"""Benchmark of the MVP raymarcher: CUDA forward and forward+backward vs. the PyTorch reference.

    python benchmarks/raymarch.py [--quick] [--cell-factor 0.5]
    python benchmarks/raymarch.py --cpu [--quick]     # CPU only: reference vs. vectorised PyTorch paths

Reference configuration (MVP): N=4 images of 512x333 rays, K=16384 primitives of 8^3 RGBA on a head-sized
surface, volume radius 256 mm (normalised volume [-1, 1]^3), dt = 1/256; also K/2 and 2K (and K with a warp).
All rows use raymarch's defaults (MVP's border fade 8/8, termination 1) except the fade table, which times the
reference configuration with the fade on and off (and both termination thresholds) against the hard-edged
raymarcher with termination 1 - 1e-4 ("hard, 0.9999": hard-edged primitives, the fade off).
Times are medians of CUDA-event-timed runs after warm-up, including the acceleration-grid build and all the glue
the autograd Function does. "Bytes" is the compulsory traffic (every input read once, every output
written once; for the backward also the gradients written once), so "achieved" is a lower bound on the
bandwidth actually used; it is compared with a device-to-device copy measured in the same run. The baseline
row runs the PyTorch reference and the CUDA path on one small configuration on the same GPU.

CPU table (``--cpu``, or when there is no CUDA device): the step-by-step reference vs. the vectorised path
(``ava256.kernels.vectorized``, the CPU default) at a tiny-training-like configuration (the ``tiny`` train
config: N=2 images of 96x144 rays, K=256 primitives of 4^3 on a head-sized surface, volume radius 160 mm,
dt = 0.05, the head filling most of the frame), wall-clock medians with torch's current CPU threads; the
vectorised path also with the fade off (fadescale=0, termination 1 - 1e-4) for the fade's cost on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ava256.kernels import function, raymarch  # noqa: E402
from ava256.kernels.reference import FADEEXP, FADESCALE, TERMINATION  # noqa: E402
from ava256.kernels.scenes import head_scene, pinhole_rays  # noqa: E402


def _time_ms(fn, warmup: int = 2, reps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.rand(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), warmup=3, reps=20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


#: Border fade / termination settings of the fade table: (name, raymarch keywords); the first is the baseline.
FADE_ROWS = (
    ("hard, 0.9999", {"fadescale": 0.0, "termination": 1.0 - 1e-4}),
    ("hard, 1", {"fadescale": 0.0, "termination": 1.0}),
    ("fade 8/8, 0.9999", {"termination": 1.0 - 1e-4}),
    ("fade 8/8, 1", {}),
    ("fade 8/7.5, 1", {"fadeexp": 7.5}),
)


def _scene(n, h, w, k, d, warp, seed=0):
    s = head_scene(n, h, w, k, d=2, warp=False, seed=seed).to("cuda")  # geometry and rays
    g = torch.Generator(device="cuda").manual_seed(seed)
    tmpl = torch.rand(n, k, 4, d, d, d, device="cuda", generator=g)
    tmpl[:, :, 3] *= 64.0
    s.template = tmpl
    if warp:
        lin = torch.linspace(-1, 1, d, device="cuda")
        zz, yy, xx = torch.meshgrid(lin, lin, lin, indexing="ij")
        ident = torch.stack([xx, yy, zz], 0)
        s.warp = ident[None, None] * 0.9 + 0.1 * (
            torch.rand(n, k, 3, d, d, d, device="cuda", generator=g) * 2 - 1
        )
    return s


def _bytes(s, backward: bool) -> int:
    n, h, w = s.raypos.shape[:3]
    grids = s.template.numel() + (0 if s.warp is None else s.warp.numel())
    prims = s.primpos.numel() + s.primrot.numel() + s.primscale.numel()
    fwd = 4 * (grids + prims + n * h * w * (3 + 3 + 2) + n * h * w * 4)
    if not backward:
        return fwd
    # backward: read grids, prims, rays and grad_rgba again; write grid and prim gradients
    return fwd + 4 * (2 * grids + 2 * prims + n * h * w * (8 + 4))


def bench_config(n, h, w, k, d, dt, warp, reps, **march):
    """Timings of one configuration; ``march``: raymarch's fadescale / fadeexp / termination keywords."""
    s = _scene(n, h, w, k, d, warp)
    args = s.args()
    leaves = [t.clone().requires_grad_(True) for t in args[3:] if t is not None]
    full = list(args[:3]) + leaves + ([None] if s.warp is None else [])

    def fwd():
        with torch.no_grad():
            return raymarch(*args, dt=dt, **march)

    grad = torch.randn(n, h, w, 4, device="cuda")

    def fwd_bwd():
        for t in leaves:  # fresh gradients each time, as for the decoder outputs in training
            t.grad = None
        out = raymarch(*full, dt=dt, **march)
        torch.autograd.backward(out, grad)

    out = fwd()
    grid_ms = _time_ms(lambda: function.build_grid(s.primpos, s.primrot, s.primscale), reps=reps)
    f_ms = _time_ms(fwd, reps=reps)
    fb_ms = _time_ms(fwd_bwd, reps=reps)
    alpha = out[..., 3]
    return {
        "K": k,
        "warp": warp,
        "hit": float((alpha > 0).float().mean()),
        "opaque": float((alpha > 0.99).float().mean()),
        "grid_ms": grid_ms,
        "fwd_ms": f_ms,
        "fb_ms": fb_ms,
        "fwd_gbs": _bytes(s, False) / (f_ms * 1e-3) / 1e9,
        "fb_gbs": _bytes(s, True) / (fb_ms * 1e-3) / 1e9,
    }


def breakdown(n, h, w, k, d, dt, reps):
    """Pieces of one forward+backward at one configuration: the grid build and the kernels alone (forward at
    several grid cell sizes and two launch shapes; backward variants, one with its atomics left out; the default
    variants with the border fade off: ``*_hard``)."""
    from ava256.kernels._build import load_extension

    ext = load_extension()
    s = _scene(n, h, w, k, d, False)
    stream = torch.cuda.current_stream().cuda_stream
    rays = [function._aligned(t) for t in (s.raypos, s.raydir, s.tminmax)]
    prim = function._pack_prims(s.primpos, s.primrot, s.primscale)
    tmpl = function._aligned(s.template)
    march = (dt, FADESCALE, FADEEXP, TERMINATION)
    out = {}
    for cf in (0.35, 0.5, 1.0):
        grid = function.build_grid(s.primpos, s.primrot, s.primscale, cell_factor=cf)
        gargs = (grid.gridinfo, grid.cell_start, grid.cell_prims, list(grid.res), *march)
        out[f"grid@cf{cf}"] = _time_ms(
            lambda cf=cf: function.build_grid(s.primpos, s.primrot, s.primscale, cell_factor=cf), reps=reps
        )
        out[f"fwd_kernel@cf{cf}"] = _time_ms(
            lambda gargs=gargs: ext.forward(*rays, prim, tmpl, None, *gargs, stream, 0), reps=reps
        )
    grid = function.build_grid(s.primpos, s.primrot, s.primscale, cell_factor=0.5)
    gargs = (grid.gridinfo, grid.cell_start, grid.cell_prims, list(grid.res), *march)
    out["fwd_kernel_8x16"] = _time_ms(
        lambda: ext.forward(*rays, prim, tmpl, None, *gargs, stream, 8), reps=reps
    )
    out["fwd_kernel_occ"] = _time_ms(
        lambda: ext.forward(*rays, prim, tmpl, None, *gargs, stream, 16), reps=reps
    )
    rgba, aux = ext.forward(*rays, prim, tmpl, None, *gargs, stream, 0)
    g = torch.randn_like(rgba)
    names = {0: "bwd_kernel_plain", 4: "bwd_kernel_aggregated", 12: "bwd_kernel_aggregated_8x16"}
    names[20] = "bwd_kernel_aggregated_occ"
    names[3] = "bwd_kernel_no_atomics"
    grads = {}
    for flags, name in names.items():
        out[name] = _time_ms(
            lambda flags=flags: ext.backward(*rays, prim, tmpl, None, *gargs, aux, g, stream, flags),
            reps=reps,
        )
        grads[flags] = ext.backward(*rays, prim, tmpl, None, *gargs, aux, g, stream, flags)
    out["aggregated_vs_plain_rel_err"] = float((grads[4][2] - grads[0][2]).norm() / grads[0][2].norm())
    # the default launch/backward variants with the fade on (as above) and off, same termination
    hard = (grid.gridinfo, grid.cell_start, grid.cell_prims, list(grid.res), dt, 0.0, FADEEXP, TERMINATION)
    lf, bf = function.LAUNCH_FLAGS, function.BACKWARD_FLAGS | function.LAUNCH_FLAGS
    for name, ga in (("", gargs), ("_hard", hard)):
        out[f"fwd_kernel_default{name}"] = _time_ms(
            lambda ga=ga: ext.forward(*rays, prim, tmpl, None, *ga, stream, lf), reps=reps
        )
        rgba, aux = ext.forward(*rays, prim, tmpl, None, *ga, stream, lf)
        out[f"bwd_kernel_default{name}"] = _time_ms(
            lambda ga=ga, aux=aux: ext.backward(*rays, prim, tmpl, None, *ga, aux, g, stream, bf), reps=reps
        )
    return out


def bench_reference(n, h, w, k, d, dt):
    s = _scene(n, h, w, k, d, False, seed=1)
    args = s.args()

    def run(backend):
        leaves = [t.clone().requires_grad_(True) for t in args[3:7]]
        out = raymarch(*args[:3], *leaves, None, dt=dt, backend=backend)
        out.sum().backward()
        return out.detach()

    t0 = time.perf_counter()
    ref = run("reference")
    torch.cuda.synchronize()
    ref_ms = (time.perf_counter() - t0) * 1e3
    cuda_ms = _time_ms(lambda: run("cuda"), reps=5)
    got = run("cuda")
    rel = float((got - ref).norm() / ref.norm())
    return ref_ms, cuda_ms, rel


def _cpu_scene(seed: int = 0):
    """Tiny-training-like CPU scene: 2 images of 96x144 rays, 256 primitives of 4^3, head filling the frame."""
    s = head_scene(2, 144, 96, k=256, d=4, volume_radius_mm=160.0, alpha_max=10.0, seed=seed)
    s.raypos, s.raydir, s.tminmax = pinhole_rays(s.raypos[:, 0, 0], 144, 96, fov_deg=11.0)
    return s


def _wall_ms(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def cpu_table(quick: bool) -> None:
    """Reference vs. vectorised raymarcher on the CPU: forward and forward+backward wall-clock ms."""
    s = _cpu_scene()
    dt = 0.05
    args = s.args()
    reps = 3 if quick else 7
    results, outs = {}, {}
    hard = FADE_ROWS[0][1]
    runs = (("reference", "reference", {}), ("vectorized", "vectorized", {}))
    runs += (("vectorized", "vectorized, " + FADE_ROWS[0][0], hard),)
    for backend, name, march in runs:

        def fwd(backend=backend, march=march):
            with torch.no_grad():
                return raymarch(*args, dt=dt, backend=backend, **march)

        def fwd_bwd(backend=backend, march=march):
            leaves = [t.clone().requires_grad_(True) for t in args[3:7]]
            out = raymarch(*args[:3], *leaves, None, dt=dt, backend=backend, **march)
            out.sum().backward()
            return out

        outs[name] = fwd()
        n_ref = 1 if backend == "reference" else 2
        results[name] = (
            _wall_ms(fwd, n_ref, max(2, reps // (4 if backend == "reference" else 1))),
            _wall_ms(fwd_bwd, n_ref, max(2, reps // (4 if backend == "reference" else 1))),
        )
    alpha = outs["reference"][..., 3]
    err = float((outs["vectorized"] - outs["reference"]).abs().max())
    n, h, w = s.raypos.shape[:3]
    print(
        f"CPU ({torch.get_num_threads()} torch threads): N={n}, {w}x{h} rays, K={s.primpos.shape[1]} prims of "
        f"{s.template.shape[-1]}^3, dt={dt}; {100 * float((alpha > 0).float().mean()):.0f}% rays hit, "
        f"{100 * float((alpha > 0.99).float().mean()):.0f}% opaque; max |vectorized - reference| = {err:.1e}"
    )
    print("rows: raymarch's defaults (fade 8/8, termination 1) unless named; x = speed-up vs the reference")
    print(f"{'backend':>24} {'fwd ms':>9} {'fwd+bwd ms':>11} {'fwd x':>7} {'fwd+bwd x':>10}")
    rf, rfb = results["reference"]
    for name, (f_ms, fb_ms) in results.items():
        print(f"{name:>24} {f_ms:>9.1f} {fb_ms:>11.1f} {rf / f_ms:>6.1f}x {rfb / fb_ms:>9.1f}x")
    (vf, vfb), (hf, hfb) = results["vectorized"], results["vectorized, " + FADE_ROWS[0][0]]
    print(
        f"vectorized time, defaults / {FADE_ROWS[0][0]} (hard-edged, the fade off): fwd {vf / hf:.2f}x, "
        f"fwd+bwd {vfb / hfb:.2f}x"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one image and fewer repeats")
    p.add_argument(
        "--cell-factor", type=float, default=function.CELL_FACTOR, help="grid cell / mean prim box edge"
    )
    p.add_argument(
        "--launch-flags",
        type=int,
        default=function.LAUNCH_FLAGS,
        help="launch variant (8: 8x16 blocks, 16: register-capped kernels)",
    )
    p.add_argument(
        "--backward-flags",
        type=int,
        default=function.BACKWARD_FLAGS,
        help="backward variant (4: warp-aggregated)",
    )
    p.add_argument("--cpu", action="store_true", help="only the CPU table (reference vs. vectorized)")
    args = p.parse_args(argv)
    if args.cpu or not torch.cuda.is_available():
        if not args.cpu:
            print("no CUDA device: CPU table only")
        cpu_table(args.quick)
        return 0
    function.CELL_FACTOR = args.cell_factor
    function.BACKWARD_FLAGS = args.backward_flags
    function.LAUNCH_FLAGS = args.launch_flags
    n, h, w, d, dt = (1 if args.quick else 4), 333, 512, 8, 1.0 / 256
    reps = 3 if args.quick else 10
    dev = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth_gbs()
    t0 = time.perf_counter()
    from ava256.kernels._build import load_extension

    load_extension()
    print(
        f"device: {dev}; extension load/build {time.perf_counter() - t0:.1f} s; cell factor {args.cell_factor}"
    )
    rows = []
    for k, warp in ((8192, False), (16384, False), (32768, False), (16384, True)):
        r = bench_config(n, h, w, k, d, dt, warp, reps)
        rows.append(r)
        print(r, flush=True)
    fade_rows = []
    for name, march in FADE_ROWS:
        r = bench_config(n, h, w, 16384, d, dt, False, reps, **march)
        fade_rows.append((name, r))
        print(name, r, flush=True)
    parts = breakdown(n, h, w, 16384, d, dt, reps)
    print(parts, flush=True)
    ref_ms, cuda_small_ms, rel = bench_reference(1, 84, 128, 1024, d, dt)

    print()
    print(f"N={n}, {w}x{h} rays, D={d}, dt=1/256; device-to-device copy {copy_gbs:.0f} GB/s (read+write)")
    hdr = f"{'K':>6} {'warp':>5} {'hit%':>5} {'grid ms':>8} {'fwd ms':>8} {'fwd GB/s':>9} {'%copy':>6} "
    hdr += f"{'fwd+bwd ms':>10} {'GB/s':>7} {'%copy':>6}"
    print(hdr)
    for r in rows:
        print(
            f"{r['K']:>6} {('yes' if r['warp'] else 'no'):>5} {100 * r['hit']:>5.1f} {r['grid_ms']:>8.2f} "
            f"{r['fwd_ms']:>8.2f} {r['fwd_gbs']:>9.0f} {100 * r['fwd_gbs'] / copy_gbs:>5.1f}% "
            f"{r['fb_ms']:>10.2f} {r['fb_gbs']:>7.0f} {100 * r['fb_gbs'] / copy_gbs:>5.1f}%"
        )
    print()
    print("border fade at K=16384, no warp (x = time / time of the first row: hard-edged, the fade off)")
    print(
        f"{'fade, termination':>18} {'hit%':>5} {'opaque%':>8} {'fwd ms':>8} {'fwd x':>6} {'fwd+bwd ms':>10} {'x':>6}"
    )
    base_f, base_fb = fade_rows[0][1]["fwd_ms"], fade_rows[0][1]["fb_ms"]
    for name, r in fade_rows:
        print(
            f"{name:>18} {100 * r['hit']:>5.1f} {100 * r['opaque']:>8.1f} {r['fwd_ms']:>8.2f} "
            f"{r['fwd_ms'] / base_f:>5.2f}x {r['fb_ms']:>10.2f} {r['fb_ms'] / base_fb:>5.2f}x"
        )
    kf = parts["fwd_kernel_default"] / parts["fwd_kernel_default_hard"]
    kb = parts["bwd_kernel_default"] / parts["bwd_kernel_default_hard"]
    print(f"kernels alone, fade 8/8 vs off (termination 1): forward {kf:.2f}x, backward {kb:.2f}x")
    print()
    print("breakdown at K=16384 (ms): " + ", ".join(f"{a}={b:.3g}" for a, b in parts.items()))
    print(
        f"baseline (N=1, 128x84 rays, K=1024, fwd+bwd): PyTorch reference {ref_ms:.0f} ms, CUDA "
        f"{cuda_small_ms:.2f} ms -> {ref_ms / cuda_small_ms:.0f}x; CUDA vs reference rel. error {rel:.1e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
