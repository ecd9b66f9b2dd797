"""Scale benchmark: per-task figures of fetch and repack measured on this machine, and their extrapolation to
the 8TB release (256 captures x ~10,000 frames x 80 cameras at 1024 x 667).

    python benchmarks/scale.py [--quick] [--cameras 2] [--frames 16]

One run, side by side:
1. fetch of a synthetic capture from the local S3 server (moto, loopback) with 1 and 4 download threads:
   seconds per object and MB/s (ratio vs. 1 thread);
2. repack of the same raw tree on a LocalCluster of 1 and 2 worker processes: wall time, CPU-seconds per item
   of each asset (camera image, label map, uv texture, ...), peak RSS per worker (ratio vs. 1 worker);
3. the extrapolation: Dask tasks of the 8TB release (from the store layout's real chunk/shard policy), CPU-hours
   per asset, memory per worker, wall time on N worker cores, and fetch time at a given link bandwidth.

Images are rendered by ``ava256.synth.generate`` at the release's 1024 x 667 (``--quick``: 256 x 167, so the
per-image figures are then scaled by pixel count, a rough bound). Loopback fetch speed is not the internet's: the
fetch extrapolation uses the link bandwidth (``--link-gbit``), with the measured per-object overhead on top.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ava256 import capture as cat
from ava256.store import layout as L

# 8TB release facts (the datasheet)
RELEASE = dict(captures=256, frames=10_000, cameras=80, hw=(1024, 667), texture=1024, encoder_hw=(400, 400))
RELEASE_BYTES = 8e12
PER_CAMERA = ("image", "segmentation")


def _print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def make_raw(root: Path, cameras: int, frames: int, image_wh: tuple[int, int], texture: int) -> str:
    from ava256.synth.generate import generate_capture

    cap = cat.release_capture_ids()[0]
    generate_capture(root, cap, cameras=cameras, frames=frames, seed=0, image_size=image_wh,
                     texture_size=texture, encoder_size=max(64, texture * 400 // 1024))  # fmt: skip
    return cap.folder


def bench_fetch(raw: Path, work: Path, threads: list[int]) -> list[dict]:
    from ava256.pipeline.fetch import fetch
    from ava256.synth.server import LOCAL_BUCKET, LocalS3Server, upload_tree

    bucket_root = work / "bucket"
    shutil.copytree(raw, bucket_root / "ava-256" / "4TB")
    out = []
    from ava256.pipeline.cluster import dask_client

    with LocalS3Server() as server:
        upload_tree(server.endpoint_url, LOCAL_BUCKET, bucket_root)
        for j in threads:
            dest = work / f"fetched-{j}"
            with dask_client(j) as client:  # started outside the timed fetch
                s = fetch(dest, size="4TB", captures=[p.name for p in raw.iterdir() if p.is_dir()],
                          source=f"s3://{LOCAL_BUCKET}/ava-256", endpoint_url=server.endpoint_url, client=client,
                          progress=False)  # fmt: skip
            assert s.ok, s.lines()
            out.append(dict(threads=j, objects=s.objects, mb=s.bytes_transferred / 1e6, seconds=s.seconds))
            shutil.rmtree(dest)
    return out


def bench_repack(raw: Path, work: Path, workers: list[int]) -> list[dict]:
    import pandas as pd

    from ava256.manifests.repack import read_repack_manifest
    from ava256.pipeline.repack import repack

    out = []
    for w in workers:
        store = work / f"store-{w}"
        t0 = time.perf_counter()
        s = repack(raw, store, workers=w, progress=False)
        wall = time.perf_counter() - t0
        assert not s.failed_captures and not s.tasks_failed, s.line()
        m = read_repack_manifest(L.manifests_path(store, "repack.parquet"))
        m = m[m["asset"] != "meta"]
        per_asset = {}
        for asset, g in m.groupby("asset"):
            items = int(g["n_frames"].sum())
            per_asset[asset] = dict(
                tasks=len(g),
                items=items,
                cpu_s=float(g["cpu_seconds"].sum()),
                wall_s=float(g["seconds"].sum()),
            )
        start = (m["finished_at"] - m["seconds"].map(lambda x: pd.Timedelta(seconds=x))).min()
        phase = (m["finished_at"].max() - start).total_seconds()  # first task start -> last task end
        out.append(dict(workers=w, wall=wall, phase=phase, tasks=len(m), peak_rss=float(m["peak_rss_mb"].max()),
                        per_asset=per_asset, store_bytes=_du(store)))  # fmt: skip
        shutil.rmtree(store)
    return out


def _du(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def release_tasks() -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
    """Per capture of the 8TB release, from the store layout: tasks per asset, items per asset, and the bytes of
    one uncompressed shard buffer per asset (what a task holds in memory, twice while it overlaps writing)."""
    from ava256.pipeline.repack_tasks import TASK_TARGET_FRAMES

    F, C = RELEASE["frames"], RELEASE["cameras"]
    geom = L.CaptureGeometry(
        n_frames=F, camera_ids=tuple(str(400000 + i) for i in range(C)), image_hw=RELEASE["hw"],
        texture_size=RELEASE["texture"], n_vertices=7306, n_encoder_frames=F, encoder_hw=RELEASE["encoder_hw"],
        assets=tuple(L.ASSET_ARRAYS),
    )  # fmt: skip
    specs = L.array_specs(geom)
    tasks, items, shard_bytes = {}, {}, {}
    for asset, name in L.ASSET_ARRAYS.items():
        spec = specs[name]
        s = spec.frames_per_shard
        span = s * max(1, TASK_TARGET_FRAMES // s)
        n = spec.shape[0]
        per = C if asset in PER_CAMERA else (len(cat.ENCODER_CAMERAS) if asset == "encoder_image" else 1)
        tasks[asset] = per * math.ceil(n / span)
        items[asset] = per * n
        frame_shape = spec.shape[2:] if spec.per in ("camera", "encoder") else spec.shape[1:]
        shard_bytes[asset] = s * int(np.prod(frame_shape)) * np.dtype(spec.dtype).itemsize
    return tasks, items, shard_bytes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small images (256 x 167), few frames: ~1 minute")
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--link-gbit", type=float, default=10.0, help="download bandwidth for the fetch estimate")
    ap.add_argument(
        "--cores", type=int, nargs="+", default=[16, 128, 1024], help="worker cores to extrapolate to"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.frames = min(args.frames, 8)
    wh = (167, 256) if args.quick else (RELEASE["hw"][1], RELEASE["hw"][0])
    texture = 256 if args.quick else RELEASE["texture"]
    pixel_scale = (RELEASE["hw"][0] * RELEASE["hw"][1]) / (wh[0] * wh[1])
    tex_scale = (RELEASE["texture"] / texture) ** 2

    work = Path(tempfile.mkdtemp(prefix="ava256-scale-"))
    try:
        t0 = time.perf_counter()
        raw = work / "raw"
        make_raw(raw, args.cameras, args.frames, wh, texture)
        print(f"synthetic capture: {args.cameras} cameras x {args.frames} frames at {wh[1]} x {wh[0]}, "
              f"texture {texture}^2, {_du(raw) / 1e6:.1f} MB, generated in {time.perf_counter() - t0:.0f} s; "
              f"{os.cpu_count()} CPU cores here")  # fmt: skip
        fetch_rows = bench_fetch(raw, work, [1, 4])
        repack_rows = bench_repack(raw, work, [1, 2])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # --- measured, side by side ---------------------------------------------------------------------------
    b = fetch_rows[0]
    _print_table(
        "fetch (local S3 server on loopback, Dask client started beforehand; ratio vs. 1 thread)",
        ["threads", "objects", "MB", "seconds", "ms/object", "MB/s", "speed-up"],
        [[r["threads"], r["objects"], f"{r['mb']:.1f}", f"{r['seconds']:.2f}",
          f"{1000 * r['seconds'] / r['objects']:.1f}", f"{r['mb'] / r['seconds']:.1f}",
          f"{b['seconds'] / r['seconds']:.2f}x"] for r in fetch_rows],
    )  # fmt: skip
    b = repack_rows[0]
    _print_table(
        "repack (LocalCluster worker processes; speed-up of the task phase vs. 1 worker)",
        ["workers", "tasks", "wall s (incl. cluster start)", "task phase s", "speed-up", "peak RSS/worker MiB",
         "store MB"],
        [[r["workers"], r["tasks"], f"{r['wall']:.1f}", f"{r['phase']:.1f}", f"{b['phase'] / r['phase']:.2f}x",
          f"{r['peak_rss']:.0f}", f"{r['store_bytes'] / 1e6:.1f}"] for r in repack_rows],
    )  # fmt: skip
    per = repack_rows[-1]["per_asset"]
    rows = []
    for asset, a in sorted(per.items()):
        cpu = a["cpu_s"] / max(1, a["items"])
        rows.append(
            [
                asset,
                a["tasks"],
                a["items"],
                f"{1000 * cpu:.2f}",
                f"{1000 * a['wall_s'] / max(1, a['items']):.2f}",
            ]
        )
    _print_table("repack per-task figures (the 2-worker run)", ["asset", "tasks", "items", "CPU ms/item",
                 "wall ms/item"], rows)  # fmt: skip

    # --- extrapolation to the 8TB release -----------------------------------------------------------------
    tasks, items, shard_bytes = release_tasks()
    n_cap = RELEASE["captures"]
    cpu_total = 0.0
    rows = []
    for asset in L.ASSET_ARRAYS:
        a = per.get(asset)
        if a is None or not a["items"]:
            continue
        cpu_item = a["cpu_s"] / a["items"]
        if asset in PER_CAMERA:
            cpu_item *= pixel_scale
        elif asset == "uv_texture":
            cpu_item *= tex_scale
        hours = cpu_item * items[asset] * n_cap / 3600
        cpu_total += hours
        rows.append([asset, f"{tasks[asset] * n_cap:,}", f"{items[asset] * n_cap:,}", f"{1000 * cpu_item:.2f}",
                     f"{hours:,.0f}", f"{shard_bytes[asset] / 2**20:.0f}"])  # fmt: skip
    _print_table(
        f"8TB release: {n_cap} captures x {RELEASE['frames']:,} frames x {RELEASE['cameras']} cameras at "
        f"{RELEASE['hw'][1]} x {RELEASE['hw'][0]}" + (" (per-item CPU scaled by pixel count from --quick)" if args.quick else ""),
        ["asset", "tasks", "items", "CPU ms/item", "CPU hours", "shard buffer MiB"],
        rows,
    )  # fmt: skip
    base_rss = repack_rows[-1]["peak_rss"]
    mem = base_rss + 2 * max(shard_bytes.values()) / 2**20  # two shard buffers alive while writing overlaps
    n_tasks = sum(tasks.values()) * n_cap
    print(f"\n  repack: {n_tasks:,} Dask tasks, {cpu_total:,.0f} CPU-hours in total; memory per single-threaded "
          f"worker <= ~{mem:.0f} MiB (measured peak {base_rss:.0f} MiB here + 2 full image shard buffers)")  # fmt: skip
    fb = fetch_rows[-1]
    objects = len(cat.capture_keys(cat.ASSETS, [str(i) for i in range(RELEASE["cameras"])])) * n_cap
    overhead = (
        fb["seconds"] / fb["objects"] * fb["threads"]
    )  # seconds of one thread per object (small objects)
    link = args.link_gbit * 1e9 / 8
    print(f"  fetch: {objects:,} objects, {RELEASE_BYTES / 1e12:.0f} TB: {RELEASE_BYTES / link / 3600:.1f} h at "
          f"{args.link_gbit:g} Gbit/s (+ {objects * overhead / 64 / 3600:.2f} h of per-object overhead at -j 64)")  # fmt: skip
    for cores in args.cores:
        print(f"  repack wall time on {cores:>5} worker cores: {cpu_total / cores:8.1f} h "
              f"(CPU-bound; needs ~{cores * mem / 1024:.0f} GiB RAM in total)")  # fmt: skip
    print("  (the measured 1 -> 2 worker speed-up above bounds how well that division holds on this machine)")


if __name__ == "__main__":
    sys.exit(main())
