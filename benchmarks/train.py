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
- ``ddp``: (``--ddp N``) the zarr mode under ``torchrun --nproc_per_node N`` (batch per GPU unchanged).

Each mode runs in its own fresh process.

Figures: it/s and samples/s over the iterations after the warm-up (wall clock, the loss is read back every
iteration, so the GPU is synchronised), peak GPU memory (``torch.cuda.max_memory_allocated``), and the
ratio zarr / memory (target >= 0.95) and, with ``--ddp``, the scaling samples/s(N GPUs) / samples/s(1).

Run: ``python benchmarks/train.py [--quick] [--config reference] [--ddp 2]``; ``--quick`` is a CPU-sized
smoke run (tiny config, small data).
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
        dev = "cuda" if torch.cuda.is_available() else None
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
    ap.add_argument("--ddp", type=int, default=0, help="also run zarr under torchrun on this many GPUs")
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("override", nargs="*", help="config overrides, e.g. --train.amp=false (after --)")
    args = ap.parse_args()
    if args.quick:
        args.config = args.config or "tiny"
        args.cameras, args.frames, args.image_size, args.texture_size = 3, 8, [24, 32], 32
        args.warmup, args.iters, args.workers, args.batch_size, args.memory_samples = 2, 6, 1, 2, 8
        args.workdir = args.workdir + "-quick"
    args.config = args.config or "reference"

    if args.child:  # a torchrun rank
        store, split = _store(args.store), args.split
        row = run_mode(args.child, store, split, args)
        if int(os.environ.get("RANK", "0")) == 0 and args.json:
            Path(args.json).write_text(json.dumps(row))
        return

    store, split = prepare(args)

    def spawn(mode: str, nproc: int) -> dict:
        """One mode in a fresh process (torchrun for nproc > 1), so no run inherits another's threads,
        worker processes or allocator state."""
        out = Path(args.workdir) / f"row-{mode}-{nproc}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable]
        if nproc > 1:
            cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
        cmd += [__file__, "--child", mode, "--store", str(store), "--split", split, "--json", str(out)]
        cmd += ["--config", args.config, "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
        cmd += [
            "--warmup",
            str(args.warmup),
            "--iters",
            str(args.iters),
            "--memory-samples",
            str(args.memory_samples),
        ]
        if args.override:
            cmd += ["--", *args.override]
        subprocess.run(cmd, check=True)
        row = json.loads(out.read_text())
        if nproc > 1:
            row["mode"] = f"{mode}-ddp{nproc}"
        print(json.dumps(row), flush=True)
        return row

    rows = [spawn(mode, 1) for mode in args.modes.split(",")]
    if args.ddp > 1:
        rows.append(spawn("zarr", args.ddp))

    def best(mode: str) -> dict | None:
        c = [r for r in rows if r["mode"] == mode]
        return max(c, key=lambda r: r["samples_s"]) if c else None

    base = best("memory")
    one = best("zarr")
    print(
        f"\nconfig {args.config}, device {rows[0]['device']}, batch {args.batch_size}/GPU, {args.iters} timed iterations"
    )
    print(
        f"{'mode':<12} {'GPUs':>4} {'it/s':>8} {'samples/s':>10} {'GPU mem GiB':>12} {'vs memory':>10} {'scaling':>8}"
    )
    for r in rows:
        ratio = r["samples_s"] / base["samples_s"] if base else float("nan")
        scale = r["samples_s"] / one["samples_s"] if (one and r["gpus"] > 1) else float("nan")
        print(
            f"{r['mode']:<12} {r['gpus']:>4} {r['it_s']:>8.2f} {r['samples_s']:>10.2f} {r['gpu_mem_gib']:>12.2f} "
            f"{ratio:>10.3f} {scale:>8.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
