"""Training throughput: the real Zarr loader vs. in-memory tensors, same model, same config, one run.

Data: synthetic format-exact captures (``ava256.synth``) generated into ``--workdir``, repacked
(``ava256.pipeline.repack``) and split (free-face), unless ``--store``/``--split`` name an existing one
(a folder or an ``s3://`` URL; the endpoint and credentials from the AWS_* environment variables).
Default image size 334 x 512 (W x H: the reference training's 512 x 333 resolution) and 1024 x 1024 uv
textures, so every sample moves what a real one does.

Modes, each a fresh ``ava256.train.trainer.train`` run of ``--warmup + --iters`` iterations:

- ``memory``: the first ``--memory-samples`` samples of the training set decoded once and held as tensors
  on the GPU (``InMemoryDataset``, no DataLoader workers): no I/O, no decoding, no host->device copies; the
  model-bound ceiling;
- ``zarr``: :class:`ava256.data.ZarrSampleDataset` on the store with ``--workers`` DataLoader workers and
  pinned memory: what ``ava256 train`` does.
- ``jpeg``: the zarr mode on a copy of the store repacked with ``--codec jpeg``: workers ship JPEG bytes and
  the GPU decodes them (nvJPEG; on a CPU the workers decode).
- multi-GPU: (``--gpus 1,2,4``) every mode again under ``torchrun --nproc_per_node N`` for each N > 1 (batch
  per GPU unchanged); counts above ``torch.cuda.device_count()`` are skipped with a note. ``--ddp N`` is
  ``--gpus 1,N``. ``--batch-sizes 4,8`` repeats everything per batch size (per GPU).

Each mode runs in its own fresh process.

``--profile``: instead of the table, one ``--modes`` mode (first listed; on ``--gpus`` max lent count, rank 0
reports) runs the trainer's step (``prepare_batch``, forward + losses, backward, clip + Adam) in its own loop:
per-phase times with the device synchronised at each phase boundary (data wait, to device, forward,
backward incl. the DDP all-reduce, optimizer), then a ``torch.profiler`` window without extra
synchronisation and its top operators / kernels by device time (CPU time without a GPU).

Figures: it/s and samples/s over the iterations after the warm-up (wall clock, the loss is read back every
iteration, so the GPU is synchronised), peak GPU memory (``torch.cuda.max_memory_allocated``), and the
ratio zarr / memory (target >= 0.95) and the scaling samples/s(N GPUs) / samples/s(1 GPU) of the same mode
and batch (targets >= 1.9 on 2 GPUs, >= 3.6 on 4).

Run: ``python benchmarks/train.py [--quick] [--config reference] [--gpus 1,2,4] [--profile]``; ``--quick`` is
a CPU-sized smoke run (tiny config, small data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _store(text: str) -> Path | str:
    """A local store folder, or an fsspec URL (``s3://bucket/store``: endpoint and credentials from AWS_*)."""
    return text if "://" in text else Path(text)


def prepare(args: argparse.Namespace) -> tuple[Path | str, str]:
    """Generate + repack + split the benchmark store once into ``--workdir`` (reused if present)."""
    if args.store:
        return _store(args.store), args.split
    from ava256.pipeline.repack import repack
    from ava256.pipeline.split import run_split
    from ava256.synth.generate import generate_bucket

    work = Path(args.workdir)
    store = work / "store"
    if not (store / "_splits" / "free-face" / "split.json").exists():
        t = time.perf_counter()
        generate_bucket(
            work / "bucket",
            captures=args.captures,
            cameras=args.cameras,
            frames=args.frames,
            image_size=tuple(args.image_size),
            texture_size=args.texture_size,
            seed=0,
            workers=min(args.captures, os.cpu_count() or 1),
            assets=["image", "vertices", "uv_texture", "head_pose"],
        )
        t1 = time.perf_counter()
        repack(
            work / "bucket" / "ava-256" / "4TB",
            store,
            downsample=1,
            workers=min(8, os.cpu_count() or 1),
            processes=True,
            progress=False,
        )
        run_split(store, "free-face")
        print(
            f"data: generated in {t1 - t:.1f} s, repacked + split in {time.perf_counter() - t1:.1f} s",
            flush=True,
        )
    jpeg = work / "store-jpeg"
    if "jpeg" in args.modes.split(",") and not (jpeg / "_splits" / "free-face" / "split.json").exists():
        repack(work / "bucket" / "ava-256" / "4TB", jpeg, downsample=1, codec="jpeg",
               workers=min(8, os.cpu_count() or 1), processes=True, progress=False)  # fmt: skip
        run_split(jpeg, "free-face")
    return store, "free-face"


def run_mode(mode: str, store: Path | str, split: str, args: argparse.Namespace) -> dict:
    """One training run; returns its figures (rank 0)."""
    import torch

    from ava256.train.config import apply_overrides, load_config
    from ava256.train.data import InMemoryDataset, open_datasets
    from ava256.train.trainer import train

    total = args.warmup + args.iters
    over = [
        f"--train.iters={total}",
        "--train.ckpt_every=1000000",
        "--train.val_every=1000000",
        "--train.log_every=50",
        "--train.image_every=1000000",
        f"--data.num_workers={args.workers if mode != 'memory' else 0}",
        f"--data.batch_size={args.batch_size}",
    ] + list(args.override)
    cfg = apply_overrides(load_config(args.config), over)
    if mode == "memory":  # held samples must be complete (float, normalised): a compact one needs its store
        cfg["data"]["compact"] = False
    train_ds, _, info = open_datasets(store, split, cfg["data"])
    if mode == "memory":  # samples already on the GPU: no I/O, no decoding, no host->device copies
        dev = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else None
        train_ds = InMemoryDataset.from_dataset(train_ds, args.memory_samples, device=dev)
        cfg["data"]["pin_memory"] = False
    stamps: list[float] = []

    def tick(it: int, loss: float) -> None:
        stamps.append(time.perf_counter())

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        res = train(None, None, cfg, out, datasets=(train_ds, None, info), on_iteration=tick, progress=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    span = stamps[-1] - stamps[args.warmup - 1]
    its = args.iters / span
    mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {
        "mode": mode,
        "gpus": world,
        "batch_per_gpu": args.batch_size,
        "it_s": its,
        "samples_s": its * args.batch_size * world,
        "gpu_mem_gib": mem,
        "first_loss": res.losses[0],
        "last_loss": res.losses[-1],
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def profile_mode(mode: str, store: Path, split: str, args: argparse.Namespace) -> dict:
    """The trainer's step in a loop of its own: synchronised per-phase times, then a ``torch.profiler``
    window; rank 0 prints both. Returns the phase means (ms)."""
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile, record_function

    from ava256.data import ResumableSampler, make_loader
    from ava256.models import losses
    from ava256.train.config import apply_overrides, load_config
    from ava256.train.data import InMemoryDataset, open_datasets
    from ava256.train.ddp import parameter_table, scaled_lr, wrap
    from ava256.train.trainer import _setup_distributed, build_model, prepare_batch, seed_everything

    dd = _setup_distributed()
    cfg = apply_overrides(load_config(args.config), [f"--data.batch_size={args.batch_size}", *args.override])
    tc, dc = cfg["train"], cfg["data"]
    if mode == "memory":
        dc["compact"], dc["pin_memory"] = False, False
    train_ds, _, info = open_datasets(store, split, dc)
    if mode == "memory":
        dev = str(dd.device) if dd.device.type == "cuda" else None
        train_ds = InMemoryDataset.from_dataset(train_ds, args.memory_samples, device=dev)
    seed_everything(int(tc["seed"]))
    model = build_model(cfg["model"], info).to(dd.device)
    opt = torch.optim.Adam(model.param_groups(scaled_lr(cfg, dd.world)))
    net = wrap(model, dd.device, dd.local_rank, tc) if dd.world > 1 else model
    amp = bool(tc["amp"]) and dd.device.type == "cuda"
    weights = {k: float(v) for k, v in cfg["loss"].items()}
    sampler = ResumableSampler(len(train_ds), seed=0, rank=dd.rank, world=dd.world)
    loader = make_loader(
        train_ds, batch_size=args.batch_size, sampler=sampler, drop_last=True,
        num_workers=args.workers if mode != "memory" else 0, workers=str(dc["workers"]),
        pin_memory=bool(dc["pin_memory"]) and dd.device.type == "cuda",
        prefetch_factor=int(dc["prefetch_factor"]), generator=torch.Generator().manual_seed(dd.rank),
    )  # fmt: skip
    cuda = dd.device.type == "cuda"

    def batches():
        while True:
            yield from loader
            sampler.next_epoch()

    it = batches()
    phases = ("data wait", "to device", "forward + loss", "backward", "clip + optimizer")

    def step(i: int, times: dict[str, float] | None) -> None:
        marks = [time.perf_counter()]

        def mark() -> None:
            if times is not None:
                if cuda:
                    torch.cuda.synchronize()
                marks.append(time.perf_counter())

        with record_function("phase: data wait"):
            batch = next(it)
        mark()
        with record_function("phase: to device"):
            batch = prepare_batch(batch, dd.device, train_ds)
        mark()
        with record_function("phase: forward + loss"):
            with torch.autocast(device_type=dd.device.type, dtype=torch.bfloat16, enabled=amp):
                outs = net(batch, guide=i < int(tc["guide_iters"]))
            terms = losses(outs, batch, weights)
        mark()
        with record_function("phase: backward"):
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
        mark()
        with record_function("phase: clip + optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"]))
            opt.step()
        float(terms["total"].detach())  # the trainer reads the loss back every iteration
        mark()
        if times is not None:
            for name, a, b in zip(phases, marks, marks[1:]):
                times[name] = times.get(name, 0.0) + (b - a)

    for i in range(args.warmup):
        step(i, None)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(args.iters):
        step(args.warmup + i, times)
    synced = (time.perf_counter() - t0) / args.iters
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = args.profile_iters
    with profile(activities=acts) as prof:
        t1 = time.perf_counter()
        for i in range(n):
            step(args.warmup + args.iters + i, None)
        if cuda:
            torch.cuda.synchronize()
        free = (time.perf_counter() - t1) / n
    row = {"mode": mode, "gpus": dd.world, "batch_per_gpu": args.batch_size, "profile": True}
    row |= {f"{k} ms": 1e3 * v / args.iters for k, v in times.items()}
    row |= {"step ms (synchronised phases)": 1e3 * synced, "step ms (profiler window)": 1e3 * free}
    if dd.main:
        where = torch.cuda.get_device_name() if cuda else "cpu"
        print(f"\nprofile: {mode}, {dd.world} x {where}, batch {args.batch_size}/GPU, config {args.config}")
        print(f"{'phase':<20} {'ms/iter':>8} {'share':>7}   ({args.iters} iterations, device synchronised)")
        for k in phases:
            ms = 1e3 * times[k] / args.iters
            print(f"{k:<20} {ms:>8.2f} {ms / (1e3 * synced):>7.1%}")
        print(f"{'step':<20} {1e3 * synced:>8.2f}   without the phase syncs: {1e3 * free:.2f} ms")
        total = sum(p.numel() for p in model.parameters())
        print(f"\ngradients all-reduced per step: {total:,} parameters, {total * 4 / 2**20:.1f} MiB fp32")
        for name, count, trainable in parameter_table(model)[:6]:
            print(f"  {name:<24} {count:>10,} {'' if trainable else '(frozen)'}")
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(f"\ntop operators/kernels by {key} over {n} iterations:")
        print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))
    if dd.world > 1:
        dist.barrier()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized smoke run (tiny config, tiny data).")
    ap.add_argument("--config", default=None, help="config name or file [reference; tiny with --quick]")
    ap.add_argument(
        "--store",
        default=None,
        help="existing store: a folder or an s3:// URL (AWS_* environment) [synthetic data in --workdir]",
    )
    ap.add_argument("--split", default="free-face")
    ap.add_argument("--workdir", default="bench-out/train")
    ap.add_argument("--captures", type=int, default=2)
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--image-size", type=int, nargs=2, default=[334, 512], metavar=("W", "H"))
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers of the zarr mode")
    ap.add_argument("--memory-samples", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--modes", default="memory,zarr,memory,zarr", help="modes to run, in order")
    ap.add_argument("--ddp", type=int, default=0, help="same as --gpus 1,N")
    ap.add_argument("--gpus", default="1", help="GPU counts, e.g. 1,2,4 (torchrun for N > 1)")
    ap.add_argument("--batch-sizes", default=None, help="batch sizes per GPU to run, e.g. 4,8 [--batch-size]")
    ap.add_argument(
        "--cpu-ranks", action="store_true", help="no GPU: run N > 1 as gloo CPU ranks (a check, no figure)"
    )
    ap.add_argument("--profile", action="store_true", help="phase times + torch.profiler top kernels")
    ap.add_argument("--profile-iters", type=int, default=20, help="iterations under torch.profiler")
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("override", nargs="*", help="config overrides, e.g. --train.amp=false (after --)")
    args = ap.parse_args()
    if args.quick:
        args.config = args.config or "tiny"
        args.cameras, args.frames, args.image_size, args.texture_size = 3, 8, [24, 32], 32
        args.warmup, args.iters, args.workers, args.batch_size, args.memory_samples = 2, 6, 1, 2, 8
        args.profile_iters = 3
        args.workdir = args.workdir + "-quick"
    args.config = args.config or "reference"

    if args.child:  # a torchrun rank
        store, split = _store(args.store), args.split
        if args.profile:
            row = profile_mode(args.child, store, split, args)
        else:
            row = run_mode(args.child, store, split, args)
        if int(os.environ.get("RANK", "0")) == 0 and args.json:
            Path(args.json).write_text(json.dumps(row))
        return

    store, split = prepare(args)
    counts = sorted({int(g) for g in args.gpus.split(",")} | ({1, args.ddp} if args.ddp > 1 else set()))
    import torch

    lent = torch.cuda.device_count() or (max(counts) if args.cpu_ranks else 0)
    for n in [n for n in counts if n > 1 and n > lent]:
        print(f"note: skipping {n} GPUs: torch.cuda.device_count() is {lent}", flush=True)
    counts = [n for n in counts if n == 1 or n <= lent]
    batches = [int(b) for b in (args.batch_sizes or str(args.batch_size)).split(",")]
    modes = args.modes.split(",")

    def spawn(mode: str, nproc: int, batch: int) -> dict:
        """One mode in a fresh process (torchrun for nproc > 1), so no run inherits another's threads,
        worker processes or allocator state."""
        out = Path(args.workdir) / f"row-{mode}-{nproc}-{batch}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable]
        if nproc > 1:
            cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        st = Path(args.workdir) / "store-jpeg" if mode == "jpeg" and not args.store else store
        cmd += [__file__, "--child", mode, "--store", str(st), "--split", split, "--json", str(out)]
        cmd += ["--config", args.config, "--batch-size", str(batch), "--workers", str(args.workers)]
        cmd += ["--warmup", str(args.warmup), "--iters", str(args.iters)]
        cmd += ["--memory-samples", str(args.memory_samples), "--profile-iters", str(args.profile_iters)]
        cmd += ["--profile"] if args.profile else []
        if args.override:
            cmd += ["--", *args.override]
        subprocess.run(cmd, check=True)
        row = json.loads(out.read_text())
        if nproc > 1:
            row["mode"] = f"{mode}-ddp{nproc}"
        print(json.dumps(row), flush=True)
        return row

    if args.profile:  # one profiled run: the first mode, on the most GPUs asked for and lent
        spawn(modes[0], max(counts), batches[0])
        return

    rows = []
    for batch in batches:
        rows += [spawn(mode, 1, batch) for mode in modes]
        for n in counts[1:]:
            rows += [spawn(mode, n, batch) for mode in dict.fromkeys(modes)]

    def best(mode: str, gpus: int, batch: int) -> dict | None:
        c = [r for r in rows if r["mode"].split("-ddp")[0] == mode and r["gpus"] == gpus]
        c = [r for r in c if r["batch_per_gpu"] == batch]
        return max(c, key=lambda r: r["samples_s"]) if c else None

    print(f"\nconfig {args.config}, device {rows[0]['device']}, {args.iters} timed iterations")
    head = f"{'mode':<12} {'GPUs':>4} {'batch/GPU':>9} {'it/s':>8} {'samples/s':>10} {'GPU mem GiB':>12}"
    print(head + f" {'vs memory':>10} {'scaling':>8}")
    for r in rows:
        mode = r["mode"].split("-ddp")[0]
        base = best("memory", r["gpus"], r["batch_per_gpu"])
        one = best(mode, 1, r["batch_per_gpu"])
        ratio = r["samples_s"] / base["samples_s"] if base else float("nan")
        scale = r["samples_s"] / one["samples_s"] if (one and r["gpus"] > 1) else float("nan")
        print(
            f"{r['mode']:<12} {r['gpus']:>4} {r['batch_per_gpu']:>9} {r['it_s']:>8.2f} {r['samples_s']:>10.2f} "
            f"{r['gpu_mem_gib']:>12.2f} {ratio:>10.3f} {scale:>8.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
