"""Training-loader throughput: the Zarr loader vs. the seed's per-sample raw-zip approach, same data.

Data: synthetic format-exact captures at the 4TB release's resolution (1024 x 667 AVIF camera images, 1024 x
1024 AVIF uv textures, 7306-vertex PLY meshes), generated once into ``--workdir`` and repacked with
``--downsample 2`` (stored images 512 x 333, the reference training's default resolution). All loaders read
the same samples in the same seeded random order through ``make_loader`` (same batch size, same number of
workers, same collate) and deliver the same contract batch (tests/data/test_equivalence.py,
tests/data/test_dataset.py).

Loaders compared side by side, each in its own fresh process (so peak memory is its own), in rotating order,
all with ``--workers`` workers (threads or processes, as named) and ``make_loader``'s sampler and collate:

- ``zarr``: what ``ava256 train`` uses. :class:`ava256.data.ZarrSampleDataset` with compact samples
  (``normalize=False``) read by a :class:`ava256.data.ThreadLoader`, and :func:`ava256.data.finish_batch` in
  the consuming loop on the GPU (counted in its samples/s). Without a GPU the finish would run on the CPU
  instead of the training GPU: its cost is then printed separately and not counted.
- ``zarr-processes``: the same through a torch DataLoader's worker processes (shared memory);
- ``zarr-no-checksum``: ``zarr`` on a store repacked without the chunk crc32c (what the checksum costs);
- ``zarr-via-zarr``: ``zarr`` with ``fast_reads=False``: chunks read by ``zarr.Array.__getitem__`` instead of
  :class:`ava256.store.fastread.ChunkReader` (what the chunk reader earns);
- ``zarr-s3``: ``zarr`` on the same store served from S3: uploaded to a local S3 server (moto, in its own
  process, on loopback) at ``s3://ava256-bench/store``, or ``--s3-store URL`` (an existing store; endpoint and
  credentials from the AWS_* environment variables). Chunks are ranged GETs, a batch's issued together;
  ``zarr-s3-via-zarr``: the same store read through ``zarr.Array.__getitem__`` (two GETs per chunk);
- ``zarr-float``: the full float contract dict built in the loader threads (``normalize=True``);
- ``legacy``: :class:`ava256.data.legacy.LegacySampleDataset` on the raw tree, in worker processes as the
  seed did; ``legacy-threads``: the same in threads;
- ``legacy-5k``: the same, on a copy of the raw tree whose zips carry ``--zip-members`` (default 5,000)
  entries like a real capture's (the extra members are empty and never read): the seed's approach re-reads
  a zip's central directory at every sample, and a real 4TB capture has ~5,000 frames per zip.

Figures: steady-state samples/s (after the first batch; the median of ``--rounds``), time to first batch,
per-sample bytes read (``/proc/self/io`` rchar over an in-process pass) and for Zarr the file reads per
sample (chunk + shard-index ``pread`` s or GETs; in the in-process pass, one sample at a time, and over the
threaded loader's run, where a batch's reads are issued together), in-process ms per sample, and peak RSS of the main process and of
the largest worker process. Run: ``python benchmarks/loader.py [--quick] [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

MB = 1e6


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> dict:
    """Generate + repack the benchmark data into ``args.workdir`` once (reused while parameters match)."""
    from ava256.pipeline.repack import repack
    from ava256.store import layout as L
    from ava256.synth.generate import generate_bucket

    work = Path(args.workdir)
    codec = args.codec or L.DEFAULT_CODEC
    params = {
        "captures": args.captures,
        "cameras": args.cameras,
        "frames": args.frames,
        "downsample": args.downsample,
        "zip_members": args.zip_members,
        "codec": codec,
        "seed": 0,
        "version": 3,
    }
    marker = work / "params.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return params
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t = time.perf_counter()
    generate_bucket(
        work / "bucket",
        captures=args.captures,
        cameras=args.cameras,
        frames=args.frames,
        seed=0,
        drop_rate=0.0,
        workers=min(args.captures, os.cpu_count() or 1),
        assets=("meta", "image", "head_pose", "vertices", "uv_texture"),
    )
    print(f"generated {args.captures} captures in {time.perf_counter() - t:.0f} s", flush=True)
    raw = work / "bucket" / "ava-256" / "4TB"
    t = time.perf_counter()
    for store, checksum in (("store", True), ("store-no-checksum", False)):
        repack(
            raw,
            work / store,
            downsample=args.downsample,
            workers=min(4, os.cpu_count() or 1),
            processes=False,
            progress=False,
            checksum=checksum,
            codec=codec,
        )
    print(f"repacked in {time.perf_counter() - t:.0f} s", flush=True)
    pad_zips(raw, work / "raw-5k", args.zip_members)
    marker.write_text(json.dumps(params))
    return params


def pad_zips(raw: Path, out: Path, members: int) -> None:
    """Copy the raw tree; every zip gets empty extra members up to ``members`` entries (names like the
    release's, frame ids beyond the frame list)."""
    shutil.copytree(raw, out)
    for path in sorted(out.rglob("*.zip")):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        prefix = names[0].rsplit("/", 1)[0] + "/" if "/" in names[0] else ""
        ext = names[0].rsplit(".", 1)[1]
        with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as z:
            for k in range(max(0, members - len(names))):
                z.writestr(f"{prefix}{900000 + k:06d}.{ext}", b"")


def serve_store(store: Path) -> subprocess.Popen:
    """A local S3 server (moto) in its own process, holding ``store`` at ``s3://ava256-bench/store``; sets
    the AWS_* variables the zarr-s3 child reads."""
    from ava256.synth.server import upload_tree

    proc = subprocess.Popen([sys.executable, "-m", "ava256.synth.server"], stdout=subprocess.PIPE, text=True)
    endpoint = proc.stdout.readline().strip()
    if not endpoint.startswith("http"):
        proc.terminate()
        raise SystemExit(f"local S3 server did not start (said {endpoint!r})")
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AVA256_BENCH_S3_STORE="s3://ava256-bench/store",
    )
    t = time.perf_counter()
    upload_tree(endpoint, "ava256-bench", store, prefix="store/")
    print(f"store uploaded to a local S3 server ({endpoint}) in {time.perf_counter() - t:.0f} s", flush=True)
    return proc


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------------
# one loader, in its own process
# --------------------------------------------------------------------------------------------------------


#: loader kind -> (data, sample form, workers)
KINDS = {
    "zarr": ("store", "compact", "threads"),
    "zarr-processes": ("store", "compact", "processes"),
    "zarr-no-checksum": ("store-no-checksum", "compact", "threads"),
    "zarr-via-zarr": ("store-via-zarr", "compact", "threads"),
    "zarr-s3": ("s3", "compact", "threads"),
    "zarr-s3-via-zarr": ("s3-via-zarr", "compact", "threads"),
    "zarr-float": ("store", "float", "threads"),
    "legacy": ("raw", "float", "processes"),
    "legacy-threads": ("raw", "float", "threads"),
    "legacy-5k": ("raw-5k", "float", "processes"),
}


def build_dataset(kind: str, work: Path, downsample: int):
    from ava256.data import ZarrSampleDataset
    from ava256.data.legacy import LegacySampleDataset
    from ava256.pipeline.split import read_samples

    data, form, _ = KINDS[kind]
    df = read_samples(work / "store")
    if data.startswith("s3"):
        url = os.environ["AVA256_BENCH_S3_STORE"]
        fast = data == "s3"
        return ZarrSampleDataset(
            url, read_samples(url), downsample=downsample, normalize=False, fast_reads=fast
        )
    if data.startswith("store"):
        store = work / ("store-no-checksum" if data == "store-no-checksum" else "store")
        fast = data != "store-via-zarr"
        return ZarrSampleDataset(store, df, downsample=downsample, normalize=form == "float", fast_reads=fast)
    raw = work / ("raw-5k" if data == "raw-5k" else "bucket/ava-256/4TB")
    return LegacySampleDataset(raw, df, downsample=downsample)


def _read_counts(ds) -> dict[str, dict[str, int]]:
    """The fast path's read tallies of a Zarr dataset in this process (empty for the legacy one)."""
    return ds.read_counts() if hasattr(ds, "read_counts") else {}


def child(args: argparse.Namespace) -> None:
    import torch

    from ava256.data import ResumableSampler, finish_batch, make_loader
    from ava256.data.iostats import process_read_bytes

    torch.set_num_threads(1)
    work = Path(args.workdir)
    _, form, workers = KINDS[args.child]
    t0 = time.perf_counter()
    ds = build_dataset(args.child, work, args.downsample)
    setup_s = time.perf_counter() - t0
    loader = make_loader(
        ds,
        batch_size=args.batch_size,
        num_workers=args.workers,
        workers=workers,
        seed=1,
        persistent_workers=False,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # With a GPU, finish_batch runs in the loop on it (counted). Without one it would run on the CPU instead of
    # the training GPU, competing with the loader for the cores: it is then timed separately afterwards.
    finish_in_loop = form == "compact" and device.type == "cuda"
    n, t_first, n_first = 0, None, 0
    t0 = time.perf_counter()
    finish_ms: list[float] = []
    kept = []
    for batch in loader:
        if finish_in_loop:  # the consumer's side: to the device, completed + normalised there
            t = time.perf_counter()
            done = finish_batch(batch, ds, device)
            torch.cuda.synchronize()
            finish_ms.append((time.perf_counter() - t) * 1000)
            del done
        elif form == "compact" and len(kept) < 8:
            kept.append(batch)
        n += int(batch["idindex"].shape[0])
        if t_first is None:
            t_first, n_first = time.perf_counter(), n
        if n >= args.samples:
            break
    t_end = time.perf_counter()
    del loader, batch  # joins the workers, so RUSAGE_CHILDREN covers them
    loop_counts = _read_counts(ds)
    loop_requests = sum(c["requests"] for c in loop_counts.values()) / n if loop_counts else None
    span = t_end - t_first
    for b in kept:  # CPU finish cost, measured on its own
        t = time.perf_counter()
        finish_batch(b, ds, device)
        finish_ms.append((time.perf_counter() - t) * 1000)
    steady = (n - n_first) / span if span > 0 else float("nan")
    worker_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    # In-process pass (no workers, same dataset): latency and bytes read per sample, same order of samples.
    order = list(ResumableSampler(len(ds), seed=1))
    m = min(args.inproc, len(order) - 1)
    ds2 = build_dataset(args.child, work, args.downsample)
    ds2[order[0]]
    c0 = sum(c["requests"] for c in _read_counts(ds2).values())
    r0, t1 = process_read_bytes(), time.perf_counter()
    for i in order[1 : m + 1]:
        ds2[i]
    ms = (time.perf_counter() - t1) / m * 1000
    r1 = process_read_bytes()
    counts = _read_counts(ds2)
    c1 = sum(c["requests"] for c in counts.values())
    out = {
        "kind": args.child,
        "workers": workers,
        "samples": n,
        "setup_s": setup_s,
        "first_batch_s": t_first - t0,
        "steady_sps": steady,
        "inproc_ms": ms,
        "read_bytes_per_sample": (r1 - r0) / m if r0 is not None else None,
        "reads_per_sample": (c1 - c0) / m if counts else None,
        "loop_reads_per_sample": loop_requests if workers == "threads" else None,
        "finish_ms_per_batch": statistics.median(finish_ms) if finish_ms else None,
        "finish_device": device.type if finish_ms else None,
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": worker_rss,
    }
    print("RESULT " + json.dumps(out), flush=True)


def run_child(kind: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--workdir",
        str(args.workdir),
        "--workers",
        str(args.workers),
    ]
    cmd += [
        "--batch-size",
        str(args.batch_size),
        "--samples",
        str(args.samples),
        "--inproc",
        str(args.inproc),
    ]
    cmd += ["--downsample", str(args.downsample)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not lines:
        raise SystemExit(
            f"{kind} run failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


# --------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data and few samples (a smoke run)")
    ap.add_argument("--workdir", default=os.environ.get("AVA256_BENCH_DIR", "/tmp/ava256-bench-loader"))
    ap.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers (both loaders)"
    )
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--samples", type=int, default=None, help="samples per run [default 200, quick 48]")
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="runs per loader; the table shows medians [default 3, quick 1]",
    )
    ap.add_argument("--inproc", type=int, default=24, help="samples of the in-process (no worker) pass")
    ap.add_argument("--captures", type=int, default=None)
    ap.add_argument("--cameras", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--downsample", type=int, default=2)
    ap.add_argument("--codec", default=None, help="picture codec of the store [default: repack's]")
    ap.add_argument("--zip-members", type=int, default=5000)
    ap.add_argument("--loaders", default=",".join(KINDS), help=f"comma-separated, from {', '.join(KINDS)}")
    ap.add_argument(
        "--s3-store",
        default=None,
        help="zarr-s3 reads this existing store (s3://bucket/prefix; AWS_* environment) instead of a copy of "
        "the benchmark store on a local S3 server",
    )
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    q = args.quick
    args.captures = args.captures or 2
    args.cameras = args.cameras or (2 if q else 4)
    args.frames = args.frames or (6 if q else 24)
    args.samples = args.samples or (48 if q else 200)
    args.rounds = args.rounds or (1 if q else 3)
    args.inproc = min(args.inproc, 12) if q else args.inproc
    work = Path(args.workdir)
    prepare(args)
    kinds = args.loaders.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown loader(s) {sorted(unknown)}; expected some of {', '.join(KINDS)}")
    server = None
    on_s3 = any(k.startswith("zarr-s3") for k in kinds)
    if on_s3 and args.s3_store:
        os.environ["AVA256_BENCH_S3_STORE"] = args.s3_store
    elif on_s3:
        server = serve_store(work / "store")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    try:
        for r in range(args.rounds):
            for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                runs[k].append(run_child(k, args))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    med = {
        k: {
            key: statistics.median(x[key] for x in v) if isinstance(v[0][key], (int, float)) else v[0][key]
            for key in v[0]
        }
        for k, v in runs.items()
    }

    raw_b, store_b = dir_bytes(work / "bucket"), dir_bytes(work / "store")
    print()
    print(
        f"loader benchmark: {args.captures} captures x {args.cameras} cameras x {args.frames} frames; camera images "
        f"1024x667 AVIF -> stored {'x'.join(map(str, _stored_hw(work)))} (downsample {args.downsample}); textures "
        f"1024x1024; 7306 vertices"
    )
    print(
        f"{args.samples} samples per run, batch {args.batch_size}, {args.workers} DataLoader workers (both), "
        f"{args.rounds} round(s), medians; cpus={os.cpu_count()}; raw {raw_b / MB:.0f} MB, store {store_b / MB:.0f} MB"
    )
    # the baseline is the faster way of running the legacy loader (its processes or its threads)
    legacy = [med[k]["steady_sps"] for k in ("legacy", "legacy-threads") if k in med]
    base = {"legacy": max(legacy)} if legacy else {}
    if "legacy-5k" in med:
        base["legacy-5k"] = med["legacy-5k"]["steady_sps"]
    hdr = (
        "| loader | workers | samples/s | vs best legacy | vs legacy-5k | first batch s | in-proc ms/sample | "
        "MB read/sample | reads/sample | reads/sample in loop | peak RSS main MB | peak RSS worker MB |"
    )
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for k in kinds:
        m = med[k]
        ratio = {
            b: f"{m['steady_sps'] / base[b]:.1f}x" if b in base else "-" for b in ("legacy", "legacy-5k")
        }
        reqs = f"{m['reads_per_sample']:.2f}" if m["reads_per_sample"] is not None else "-"
        loop = f"{m['loop_reads_per_sample']:.2f}" if m["loop_reads_per_sample"] is not None else "-"
        rb = f"{m['read_bytes_per_sample'] / MB:.2f}" if m["read_bytes_per_sample"] is not None else "-"
        wrss = f"{m['rss_worker_mb']:.0f}" if m["workers"] == "processes" else "-"
        print(
            f"| {k} | {m['workers']} | {m['steady_sps']:.1f} | {ratio['legacy']} | {ratio['legacy-5k']} | "
            f"{m['first_batch_s']:.2f} | {m['inproc_ms']:.2f} | {rb} | {reqs} | {loop} | {m['rss_main_mb']:.0f} | {wrss} |"
        )
    for k in kinds:
        m = med[k]
        if m["finish_ms_per_batch"] is None:
            continue
        how = (
            "included in its samples/s"
            if m["finish_device"] == "cuda"
            else "NOT included in its samples/s (no GPU here; it runs on the training GPU)"
        )
        print(
            f"{k}: finish_batch (neutral conditioning, uint8 -> float, normalise) on {m['finish_device']}: "
            f"{m['finish_ms_per_batch']:.1f} ms per batch of {args.batch_size}, {how}"
        )
    print(
        "rounds (samples/s): "
        + "; ".join(f"{k} " + ", ".join(f"{x['steady_sps']:.1f}" for x in v) for k, v in runs.items())
    )
    shared_alloc_row(args.batch_size)


def shared_alloc_row(batch: int, tex: int = 1024, reps: int = 5) -> None:
    """What a worker's allocation of one batch of float textures in shared memory costs: straight in shared
    memory (torch's private ``_new_shared``, the loader's fast path) vs the public ``share_memory_`` (a copy)."""
    import torch

    from ava256.data.dataset import direct_shared_alloc, shared_empty

    shape = (batch, 3, tex, tex)

    def best(fn) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1000 * min(times)

    public = best(lambda: torch.empty(shape).share_memory_())
    direct = best(lambda: shared_empty(shape, torch.float32)) if direct_shared_alloc() else float("nan")
    print(f"a batch's {batch} x 3 x {tex}^2 float32 textures in shared memory: {direct:.1f} ms allocated there "
          f"directly (the loader's path), {public:.1f} ms through share_memory_ ({public / direct:.1f} x)")  # fmt: skip


def _stored_hw(work: Path) -> tuple[int, int]:
    from ava256.store import layout as L

    cap = L.list_capture_stores(work / "store")[0]
    h, w = L.open_capture_group(L.capture_store_path(work / "store", cap)).attrs[L.ATTR_IMAGE_SIZE]
    return int(w), int(h)


if __name__ == "__main__":
    main()
