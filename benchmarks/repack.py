"""Repack benchmark: (1) image codec table: store size vs. write and random-read throughput, incl. keeping the
AVIF bytes; (2) repack vs. pure decode of the same AVIF files, same Dask LocalCluster (worker processes),
one run, images/s; plus peak RSS per worker.

    python benchmarks/repack.py [--quick] [--workers 2] [--cameras 8] [--frames 256] [--io direct,buffered]

The default workload is 8 cameras x 256 frames (2,048 images): one task per camera of repack's real task size
(``TASK_TARGET_FRAMES`` = 256 frames = 8 shards of 32 images), four per worker of a 2-core machine. Real
captures have ~80 cameras and ~5,000 frames per camera, so real tasks are full-size and a run's fixed driver
cost (probe, array creation, manifests: ~80 ms) is spread over 10^5 images. In a small run it is not: the
former 64-frame default made every task a quarter of the real size and that fixed cost ~10 % of the timed run,
and with 4 cameras (two tasks per worker) the fixed cost plus the two workers' uneven finish still took ~3-5 %.
The pure-decode baseline is the same task code with ``write=False`` (same decoder, same malloc settings, same
workers). The 'before' row decodes the same files as the code before the AVIF fast path
and the malloc tuning did (Pillow ``Image`` path, Dask's default worker malloc settings), on a separate
cluster of the same size, for the absolute speed-up.

Images are 1024 x 667 (the 4TB/8TB release size). With the real reference image beside the repo
(../shared/reference/021924.png) the frames are shifted/jittered crops of it, AVIF-encoded at the release's
quality 63 (so the pixels carry real AVIF artefacts); without it, smooth synthetic noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import zarr

from ava256 import capture as cat
from ava256.formats.calibration import Calibration, write_calibration
from ava256.formats.frame_list import FrameList, write_frame_list
from ava256.formats.images import decode_rgb, encode_avif
from ava256.formats.zips import write_stored_zip
from ava256.store import layout as L
from ava256.store.shards import shard_encoder

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "021924.png"
H, W = 1024, 667


def source_images(n: int, seed: int = 0, reference: Path = REFERENCE) -> tuple[list[bytes], str]:
    """``n`` distinct AVIF blobs (q63) of 1024 x 667 RGB images and a description of their origin."""
    rng = np.random.default_rng(seed)
    if reference.is_file():
        from PIL import Image

        big = np.asarray(Image.open(reference).convert("RGB").resize((W + 16, H + 16), Image.Resampling.BOX))
        origin = "real reference image (shifted crops, AVIF q63)"
    else:
        yy, xx = np.mgrid[0 : H + 16, 0 : W + 16]
        big = np.stack([128 + 100 * np.sin(xx / (17 + 5 * c) + yy / (23 + 3 * c)) for c in range(3)], -1)
        big = (big + rng.normal(0, 6, big.shape)).clip(0, 255).astype(np.uint8)
        origin = "synthetic smooth noise (AVIF q63)"
    out = []
    for _ in range(n):
        dy, dx = rng.integers(0, 16, 2)
        img = big[dy : dy + H, dx : dx + W].astype(np.int16) + int(rng.integers(-8, 8))
        out.append(encode_avif(img.clip(0, 255).astype(np.uint8), 63))
    return out, origin


def make_raw(raw: Path, blobs: list[bytes], cameras: int, frames: int) -> cat.CaptureId:
    """A raw capture with calibration, frame list and image zips only (the image asset)."""
    cap = cat.release_capture_ids()[0]
    base = raw / cap.folder
    (base / "decoder").mkdir(parents=True)
    cams = [f"{400000 + i}" for i in range(cameras)]
    k = np.tile(np.array([[5000.0, 0, 1334], [0, 5000.0, 2048], [0, 0, 1]]), (cameras, 1, 1))
    rt = np.tile(np.hstack([np.eye(3), [[0.0], [0.0], [1000.0]]]), (cameras, 1, 1))
    (base / cat.CALIBRATION_KEY).write_bytes(
        write_calibration(Calibration(cams, k, rt, np.zeros((cameras, 4))))
    )
    fids = np.arange(frames)
    (base / cat.FRAME_LIST_KEY).write_bytes(
        write_frame_list(FrameList(np.array(["EXP_free_face"] * frames), fids))
    )
    for ci, c in enumerate(cams):
        members = [(cat.image_member(c, int(f)), blobs[(ci * frames + int(f)) % len(blobs)]) for f in fids]
        write_stored_zip(base / cat.image_key(c), members)
    return cap


def takes_direct_io(folder: Path) -> bool:
    """Whether the file system of ``folder`` accepts an aligned ``O_DIRECT`` write (else shard files are written
    through the page cache whatever ``--io`` says)."""
    import mmap

    if not hasattr(os, "O_DIRECT"):
        return False
    buf = mmap.mmap(-1, 4096)
    path = folder / "direct-io-probe"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            os.write(fd, buf)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False
    finally:
        path.unlink(missing_ok=True)
        buf.close()


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def best_of(fn, reps: int = 3) -> float:
    """Shortest wall time of ``reps`` calls of ``fn`` (seconds): robust to a shared machine's bursts."""
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def codec_table(blobs: list[bytes], tmp: Path, n_read: int) -> list[dict]:
    """Write the decoded images with each codec (chunk = 1 image, shard = all), then read n_read random
    images; every time is the best of 3 runs."""
    imgs = np.stack([decode_rgb(b) for b in blobs])[:, None]  # (N, 1, H, W, 3)
    n = len(imgs)
    rows = []
    order = [random.Random(1).randrange(n) for _ in range(n_read)]
    raw_mb = imgs[0].nbytes / 2**20
    for codec in L.CODECS:
        kw = dict(
            shape=imgs.shape, dtype="uint8", chunks=(1, 1, H, W, 3), shards=(n, 1, H, W, 3), fill_value=0
        )
        kw["compressors"] = L.picture_compressors(codec)
        ref = zarr.create_array(str(tmp / f"zarr-{codec}.zarr"), config={"write_empty_chunks": True}, **kw)

        def zarr_write(ref=ref):
            ref[...] = imgs  # zarr's generic write path

        t_zarr = best_of(zarr_write)
        shutil.rmtree(tmp / f"zarr-{codec}.zarr")
        path = tmp / f"codec-{codec}.zarr"
        enc = shard_encoder(zarr.create_array(str(path), **kw))

        def our_write(enc=enc):
            enc.write((0, 0, 0, 0, 0), [enc.encode(x) for x in imgs[:, 0]])  # the bytes repack streams

        t_write = best_of(our_write)
        r = zarr.open_array(str(path), mode="r")

        def read(r=r):
            for i in order:
                r[i, 0]

        t_read = best_of(read)
        assert np.array_equal(r[order[-1], 0], imgs[order[-1], 0])
        rows.append(dict(codec=codec, mb=du(path) / n / 2**20, write=n / t_write, zarr_write=n / t_zarr,
                         read=n_read / t_read, raw_mb=raw_mb))  # fmt: skip
        shutil.rmtree(path)
    # keep the AVIF bytes: a variable-length bytes array, decoded on every read
    # (zarr warns that VariableLengthBytes has no Zarr v3 specification yet: another cost of this layout)
    warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
    path = tmp / "avif-bytes.zarr"
    a = zarr.create_array(str(path), shape=(n,), dtype="bytes", chunks=(1,), shards=(n,))
    objs = np.array(blobs, dtype=object)

    def avif_write():
        a[...] = objs

    t_write = best_of(avif_write)
    r = zarr.open_array(str(path), mode="r")

    def avif_read():
        for i in order:
            decode_rgb(bytes(r[i : i + 1][0]))

    t_read = best_of(avif_read)
    assert np.array_equal(decode_rgb(bytes(r[order[-1] : order[-1] + 1][0])), imgs[order[-1], 0])
    rows.append(dict(codec="avif-bytes (source kept)", mb=du(path) / n / 2**20, write=n / t_write,
                     zarr_write=n / t_write, read=n_read / t_read, raw_mb=raw_mb))  # fmt: skip
    return rows


def _legacy_decode_task(task) -> float:
    """Decode every frame of ``task`` as repack did before its AVIF fast path (``decode_rgb``: Pillow
    ``Image.open`` + ``load`` + ``np.asarray``); returns the CPU seconds. Runs in worker processes that never
    ran ``run_task`` (so Dask's default malloc settings)."""
    from ava256 import capture as cat
    from ava256.formats.images import decode_rgb
    from ava256.formats.zips import ZipReader
    from ava256.pipeline import repack_tasks as rt

    rt._set_decode_threads(task.decode_threads)
    c0 = time.process_time()
    with ZipReader(Path(task.raw_root) / task.source_key) as z:
        for fid in task.frame_ids:
            x = decode_rgb(z.read(cat.image_member(task.camera_id, int(fid))))
            if x.shape != (*task.source_hw, 3):
                raise ValueError(f"decoded shape {x.shape}")
    return time.process_time() - c0


def legacy_decode(tasks: list, workers: int, reps: int = 2) -> tuple[float, float]:
    """images/s (best of ``reps`` after a warm-up) and CPU ms/image of :func:`_legacy_decode_task` over
    ``tasks`` on a fresh LocalCluster of ``workers`` single-threaded worker processes."""
    from distributed import Client, LocalCluster

    n_img = sum(t.frame_stop - t.frame_start for t in tasks)
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as lc,
        Client(lc) as client,
    ):
        client.gather(client.map(_legacy_decode_task, tasks[:workers], pure=False))  # warm-up
        best, cpu = float("inf"), []
        for _ in range(reps):
            t0 = time.perf_counter()
            cpu.append(sum(client.gather(client.map(_legacy_decode_task, tasks, pure=False))))
            best = min(best, time.perf_counter() - t0)
    return n_img / best, 1000 * float(np.median(cpu)) / n_img


def _set_io(mode: str) -> str:
    """Set this process's shard-file I/O mode (``direct``: the default, ``O_DIRECT`` where the file system takes
    it; ``buffered``: through the page cache); runs in the driver and, via ``client.run``, in every worker."""
    from ava256.store.shards import DIRECT_IO_ENV

    os.environ[DIRECT_IO_ENV] = {"direct": "1", "buffered": "0"}[mode]
    return mode


def throughput(
    raw: Path,
    tmp: Path,
    workers: int,
    codecs: list[str],
    warm_raw: Path | None = None,
    repeats: int = 1,
    ios: tuple[str, ...] = ("direct",),
) -> tuple[list[dict], float, float, int, float, float, tuple[float, float]]:
    """Pure decode vs. full repack of the same image zips on one LocalCluster of worker processes, for each
    codec and shard-file I/O mode (``ios``: ``direct`` and/or ``buffered``).
    ``warm_raw``: a tiny capture repacked once per codec before timing, so that no timed run pays the
    one-time imports and first calls (zarr codecs, pyarrow writers) of the driver and workers."""
    from distributed import Client, LocalCluster

    from ava256.pipeline import repack as rp
    from ava256.pipeline import repack_tasks as rt

    src = rp.discover_captures(raw)[0]
    rows = []
    plan = rt.probe_capture(src, 1)
    # same AVIF threads per decode as the repack driver gives a local cluster (cores / workers)
    dthreads = max(1, (os.cpu_count() or 1) // workers)
    tasks = [
        dataclasses.replace(t, decode_threads=dthreads)
        for t in rt.plan_tasks(plan, str(tmp / "unused.zarr"), L.array_specs(plan.geometry))
    ]
    n_img = sum(t.frame_stop - t.frame_start for t in tasks)
    before = legacy_decode(tasks, workers)
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as lc,
        Client(lc) as client,
    ):

        def idle_rss_mb() -> float:
            """Largest current RSS of a worker between passes; resets each worker's peak RSS."""
            rss = client.run(rt.current_rss_mb)
            client.run(rt.reset_peak_rss)
            return max(rss.values())

        def use_io(io: str) -> None:
            """The shard-file I/O mode of the next repack, in every worker and in the driver."""
            client.run(_set_io, io)
            _set_io(io)

        client.gather(client.map(rt.run_task, tasks[: workers * 2], write=False, pure=False))  # warm-up
        combos = [(c, io) for c in codecs for io in ios]
        for codec, io in combos if warm_raw is not None else []:  # warm-up of the whole repack path
            use_io(io)
            rp.repack(
                warm_raw, tmp / "warm", codec=codec, client=client, progress=False, decode_threads=dthreads
            )
            shutil.rmtree(tmp / "warm")
        idle: list[float] = []

        def decode_pass() -> tuple[float, float, float]:
            idle.append(idle_rss_mb())
            t0 = time.perf_counter()
            res = client.gather(client.map(rt.run_task, tasks, write=False, pure=False))
            dt = time.perf_counter() - t0
            assert all(r["n_valid"] == r["n_frames"] for r in res)
            cpu_ms = 1000 * sum(r["cpu_seconds"] for r in res) / n_img
            return n_img / dt, max(r["peak_rss_mb"] for r in res), cpu_ms

        # decode and repack runs alternate (d0 r1 d1 r2 d2 ...): each repack is compared with the mean of the
        # decode runs just before and after it, which cancels slow drifts of a shared machine's load
        # with repeats > 1 the codecs are cycled (r(c1) d r(c2) d ... r(c1) d ...) and each codec's row holds
        # the medians of its runs (ratio: the median of its per-run ratios)
        dec, rss_dec, cpu = decode_pass()
        decs, cpus = [dec], [cpu]
        runs: list[dict] = []
        for codec, io in [c for _ in range(repeats) for c in combos]:
            use_io(io)
            store = tmp / f"store-{codec}"
            idle.append(idle_rss_mb())
            t0 = time.perf_counter()
            s = rp.repack(raw, store, codec=codec, client=client, progress=False, decode_threads=dthreads)
            dt = time.perf_counter() - t0
            assert s.tasks_failed == 0 and s.frames_invalid == 0
            man = rp.read_repack_results(store)
            cpu_ms = 1000 * man[man.asset == "image"].cpu_seconds.sum() / n_img
            after, rss, cpu_after = decode_pass()
            rss_dec = max(rss_dec, rss)
            ref, ref_cpu = (decs[-1] + after) / 2, (cpus[-1] + cpu_after) / 2
            decs.append(after)
            cpus.append(cpu_after)
            runs.append(dict(codec=codec, io=io, ips=n_img / dt, ref=ref, rss=s.peak_rss_mb, mb=du(store) / n_img / 2**20,
                             tasks=s.tasks_run, cpu=cpu_ms, ref_cpu=ref_cpu, ratio=n_img / dt / ref,
                             cpu_ratio=ref_cpu / cpu_ms))  # fmt: skip
            shutil.rmtree(store)
        for codec, io in combos:
            mine = [r for r in runs if (r["codec"], r["io"]) == (codec, io)]
            row = {k: float(np.median([r[k] for r in mine])) for k in mine[0] if k not in ("codec", "io")}
            row["rss"] = max(r["rss"] for r in mine)
            rows.append(dict(row, codec=codec, io=io, ratios=[r["ratio"] for r in mine]))
    return rows, float(np.mean(decs)), rss_dec, n_img, max(idle), float(np.mean(cpus)), before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (2 cameras x 24 frames)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="Dask worker processes")
    ap.add_argument("--cameras", type=int, default=8, help="cameras (one 256-frame task each)")
    ap.add_argument("--frames", type=int, default=256, help="frames per camera (256 = one real-size task)")
    ap.add_argument("--distinct", type=int, default=24, help="distinct AVIF images (reused cyclically)")
    ap.add_argument("--codecs", default=",".join(L.CODECS), help="codecs to run the full repack with")
    ap.add_argument("--repeats", type=int, default=3, help="repack runs per codec (medians; quick: 1)")
    ap.add_argument(
        "--io",
        default="direct",
        help="shard-file I/O: direct (the default), buffered, or both "
        "(direct,buffered: alternating runs, a row each)",
    )
    ap.add_argument("--reference", type=Path, default=REFERENCE, help="a real RGB image to crop frames from")
    args = ap.parse_args(argv)
    if args.quick:
        args.cameras, args.frames, args.distinct, args.repeats = 2, 24, 8, 1
    codecs = [c for c in args.codecs.split(",") if c]
    ios = tuple(m for m in args.io.split(",") if m)
    if not ios or set(ios) - {"direct", "buffered"}:
        ap.error(f"--io: expected direct and/or buffered, got {args.io!r}")

    with tempfile.TemporaryDirectory(prefix="ava256-bench-repack-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        blobs, origin = source_images(args.distinct, reference=args.reference)
        print(f"source: {len(blobs)} distinct {W}x{H} images, {origin}, "
              f"mean AVIF {np.mean([len(b) for b in blobs]) / 1024:.0f} KiB ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        print(f"machine: {os.cpu_count()} CPU(s); zarr {zarr.__version__}; python {sys.version.split()[0]}; "
              f"{tmp} takes O_DIRECT: {'yes' if takes_direct_io(tmp) else 'no (direct runs fall back to buffered)'}\n")  # fmt: skip

        rows = codec_table(blobs, tmp, n_read=3 * len(blobs))
        print(
            "1) image codec: chunk = one 667x1024 image, shard = all; one thread; best of 3. write = encode + store the"
        )
        print(
            "   shard with repack's one-pass shard encoder ('zarr write': arr[...] = x); read = random single images"
        )
        hdr = ["codec", "MiB/image", "vs raw", "vs AVIF", "write img/s", "zarr write", "read img/s"]
        print(f"{hdr[0]:<28}{hdr[1]:>10}{hdr[2]:>8}{hdr[3]:>9}{hdr[4]:>13}{hdr[5]:>12}{hdr[6]:>12}")
        avif_mb = rows[-1]["mb"]
        for r in rows:
            print(f"{r['codec']:<28}{r['mb']:>10.3f}{r['mb'] / r['raw_mb']:>8.2f}{r['mb'] / avif_mb:>8.1f}x"
                  f"{r['write']:>13.1f}{r['zarr_write']:>12.1f}{r['read']:>12.1f}")  # fmt: skip

        raw = tmp / "raw"
        make_raw(raw, blobs, args.cameras, args.frames)
        make_raw(tmp / "warm-raw", blobs[:2], 1, 2)
        trows, dec, rss_dec, n_img, idle_rss, dec_cpu, before = throughput(
            raw, tmp, args.workers, codecs, tmp / "warm-raw", args.repeats, ios
        )
        print(f"\n2) repack vs pure decode: {n_img} images ({args.cameras} cameras x {args.frames} frames), "
              f"LocalCluster of {args.workers} worker processes x 1 thread, one run; per codec the median of "
              f"{args.repeats} repacks (each ratio vs the decode runs just before and after it)")  # fmt: skip
        hdr = [
            "pipeline",
            "images/s",
            "decode img/s",
            "ratio",
            "CPU ms/img",
            "CPU ratio",
            "peak RSS/worker",
            "MiB/img",
            "   ratio of each run",
        ]
        print(
            f"{hdr[0]:<37}{hdr[1]:>9}{hdr[2]:>13}{hdr[3]:>7}{hdr[4]:>11}{hdr[5]:>10}{hdr[6]:>16}{hdr[7]:>9}{hdr[8]}"
        )
        print(f"{'pure decode (zip read + AVIF)':<37}{dec:>9.1f}{dec:>13.1f}{1.0:>7.2f}{dec_cpu:>11.1f}{1.0:>10.2f}"
              f"{rss_dec:>12.0f} MiB{'-':>9}")  # fmt: skip
        print(f"{'pure decode, before (*)':<37}{before[0]:>9.1f}{dec:>13.1f}{before[0] / dec:>7.2f}{before[1]:>11.1f}"
              f"{dec_cpu / before[1]:>10.2f}{'-':>16}{'-':>9}")  # fmt: skip
        for r in trows:
            name = f"repack --codec {r['codec']}" + (f" ({r['io']})" if len(ios) > 1 else "")
            print(f"{name:<37}{r['ips']:>9.1f}{r['ref']:>13.1f}{r['ratio']:>7.2f}{r['cpu']:>11.1f}"
                  f"{r['cpu_ratio']:>10.2f}{r['rss']:>12.0f} MiB{r['mb']:>9.3f}   "
                  + " ".join(f"{x:.2f}" for x in r["ratios"]))  # fmt: skip
        rep = [r for r in trows if r["codec"] == L.DEFAULT_CODEC] or trows
        print(f"\n(*) decode as before the AVIF fast path and malloc tuning (Pillow Image path, Dask's default "
              f"malloc), fresh cluster of the same size; repack --codec {rep[0]['codec']} runs at "
              f"{rep[0]['ips'] / before[0]:.2f} x its images/s, using {rep[0]['cpu'] / before[1]:.2f} x its CPU "
              "per image")  # fmt: skip
        print(
            "peak RSS/worker = VmHWM of the worker process during that run (reset before each run; between runs"
        )
        print(
            f"an idle worker holds {idle_rss:.0f} MiB: Python, Dask, zarr, numpy, Pillow, pyarrow, pandas)."
        )
        print(
            "CPU ms/img = worker-process CPU time per image of the tasks (repack: its image tasks, not the driver);"
        )
        print(
            "CPU ratio = decode CPU / repack CPU per image: the throughput ratio on dedicated cores, insensitive to"
        )
        print(
            "other load on a shared machine (SMT/cache contention between decode and encode threads remains)."
        )
        print("ratio = repack images/s / pure-decode images/s of the decode runs just before and after it (they "
              "alternate); repack is end to end: probe, create arrays, decode, encode, write shards, masks, manifests.")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
