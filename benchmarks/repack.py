"""Repack benchmark, one run, side by side:

1. image codecs: store size, write and random-read throughput of one shard of decoded images (one thread),
   through the shard writer / chunk reader of ``ava256.store`` and through zarr's own ``arr[...]``;
2. repack vs pure decode of the same AVIF files on one Dask LocalCluster of worker processes (images/s, the
   ratio, CPU per image, peak RSS), for the default and each ``--codecs`` codec, and for the variants that
   measure what each fast path earns: without the chunk checksum, with zarr's write path instead of the shard
   writer, with compression in a helper thread (what repack does on a local cluster with spare cores: run it
   with ``--workers`` at most half the cores).

    python benchmarks/repack.py [--quick] [--workers 2] [--cameras 8] [--frames 256] [--codecs blosclz,lz4]
                                [--variants default,no-checksum,zarr-write,encode-thread] [--repeats 3]

The default workload is 8 cameras x 256 frames (2,048 images): one task per camera of repack's real task size
(``TASK_TARGET_FRAMES`` = 256 frames = 8 shards of 32 images), four per worker of a 2-core machine, so the run's
fixed driver cost (probe, array creation, manifests) weighs little. Decode and repack runs alternate and each
repack is compared with the mean of the decode runs just before and after it (a shared machine's load
drifts); each row holds the medians of its ``--repeats`` runs. The pure-decode baseline is the same task code
with ``write=False`` (same decoder, same workers).

Images are 1024 x 667 (the 4TB/8TB release size). With the real reference image beside the repo
(../shared/reference/021924.png) the frames are shifted/jittered crops of it, AVIF-encoded at the release's
quality 63 (so the pixels carry real AVIF artefacts); without it, smooth synthetic noise. ``--quick``: 2
cameras x 24 frames, one repeat, on the CPU in well under a minute.
"""

from __future__ import annotations

import argparse
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
from ava256.store.codecs import JpegCodec

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "021924.png"
H, W = 1024, 667

#: variant name -> (what it changes, worker environment, chunk checksum, compress in a helper thread)
VARIANTS: dict[str, tuple[str, dict[str, str], bool, bool]] = {
    "default": ("", {}, True, False),
    "no-checksum": ("without the chunk crc32c", {}, False, False),
    "zarr-write": ("zarr's arr[s0:s1, c] = shard write", {"AVA256_SHARD_WRITER": "0"}, True, False),
    "encode-thread": ("compressing in a helper thread", {}, True, True),
}


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


def codec_table(blobs: list[bytes], tmp: Path, n_read: int, codecs: list[str]) -> list[dict]:
    """Write the decoded images with each codec (chunk = 1 image, shard = all, crc32c), then read ``n_read``
    random images, each through ava256.store and through zarr; every time is the best of 3 runs."""
    from ava256.store.fastread import ChunkReader
    from ava256.store.shards import shard_writer

    imgs = np.stack([decode_rgb(b) for b in blobs])[:, None]  # (N, 1, H, W, 3)
    n = len(imgs)
    rows = []
    order = [random.Random(1).randrange(n) for _ in range(n_read)]
    raw_mb = imgs[0].nbytes / 2**20
    for codec in codecs:
        lossy = codec in L.LOSSY_CODECS
        kw = dict(shape=imgs.shape, dtype="uint8", chunks=(1, 1, H, W, 3), shards=(n, 1, H, W, 3), fill_value=0,
                  compressors=([] if lossy else L.picture_compressors(codec)) + [zarr.codecs.Crc32cCodec()])  # fmt: skip
        if lossy:
            kw["serializer"] = JpegCodec(quality=L.JPEG_QUALITY, subsampling=L.JPEG_SUBSAMPLING)
        ref = zarr.create_array(str(tmp / f"zarr-{codec}.zarr"), config={"write_empty_chunks": True}, **kw)

        def zarr_write(ref=ref):
            ref[...] = imgs

        t_zarr = best_of(zarr_write)
        shutil.rmtree(tmp / f"zarr-{codec}.zarr")
        path = tmp / f"codec-{codec}.zarr"
        arr = zarr.create_array(str(path), **kw)

        def our_write(arr=arr):
            with shard_writer(arr) as w:
                f = w.open_shard((0, 0, 0, 0, 0))
                for x in imgs[:, 0]:
                    f.append(x)
                f.close()

        t_write = best_of(our_write)
        r = zarr.open_array(str(path), mode="r")
        reader = ChunkReader.for_array(r)
        out = np.empty((1, 1, H, W, 3), np.uint8)

        def zarr_read(r=r):
            for i in order:
                r[i, 0]

        def our_read(reader=reader, out=out):
            for i in order:
                reader.read((i, 0, 0, 0, 0), out=out)

        t_zread, t_read = best_of(zarr_read), best_of(our_read)
        got = reader.read((order[-1], 0, 0, 0, 0))[0, 0]
        assert np.array_equal(r[order[-1], 0], got)
        assert lossy or np.array_equal(got, imgs[order[-1], 0])
        rows.append(dict(codec=codec, mb=du(path) / n / 2**20, write=n / t_write, zarr_write=n / t_zarr,
                         read=n_read / t_read, zarr_read=n_read / t_zread, raw_mb=raw_mb))  # fmt: skip
        shutil.rmtree(path)
    # keep the AVIF bytes: a variable-length bytes array, decoded on every read; zarr warns that
    # VariableLengthBytes has no Zarr v3 specification yet (another cost of this layout): silenced here only
    path = tmp / "avif-bytes.zarr"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
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
    rows.append(dict(codec="avif-bytes (source kept)", mb=du(path) / n / 2**20, write=n / t_write,
                     zarr_write=n / t_write, read=n_read / t_read, zarr_read=n_read / t_read, raw_mb=raw_mb))  # fmt: skip
    return rows


def _set_env(env: dict[str, str | None]) -> None:
    """Set (None: remove) environment variables of this process (runs in the workers via ``client.run``)."""
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _cluster(workers: int):
    """A LocalCluster of ``workers`` single-threaded worker processes, set up as ``ava256``'s ``dask_client``."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")


def throughput(
    raw: Path, tmp: Path, workers: int, runs: list[tuple[str, str]], warm_raw: Path, repeats: int
) -> tuple[list[dict], dict]:
    """Pure decode vs full repack of the same image zips on one LocalCluster, for each (codec, variant) of
    ``runs``; returns the rows and the pure-decode figures."""
    from distributed import Client

    from ava256.pipeline import repack as rp
    from ava256.pipeline import repack_tasks as rt

    src = rp.discover_captures(raw)[0]
    plan = rt.probe_capture(src, 1)
    # same AVIF threads per decode as the repack driver gives a local cluster (cores / workers)
    dthreads = max(1, (os.cpu_count() or 1) // workers)
    tasks = [
        t.__class__(**{**t.__dict__, "decode_threads": dthreads})
        for t in rt.plan_tasks(plan, str(tmp / "unused.zarr"), L.array_specs(plan.geometry))
    ]
    n_img = sum(t.frame_stop - t.frame_start for t in tasks)
    with _cluster(workers) as lc, Client(lc) as client:

        def decode_pass() -> tuple[float, float, float]:
            client.run(rt.reset_peak_rss)
            t0 = time.perf_counter()
            res = client.gather(client.map(rt.run_task, tasks, write=False, pure=False))
            dt = time.perf_counter() - t0
            rows = [r.row for r in res]
            assert all(r.n_valid == r.n_frames for r in rows)
            return (
                n_img / dt,
                max(r.peak_rss_mb for r in rows),
                1000 * sum(r.cpu_seconds for r in rows) / n_img,
            )

        def repack_once(codec: str, variant: str, store: Path) -> rp.RepackSummary:
            _, env, checksum, ethread = VARIANTS[variant]
            client.run(_set_env, env)
            try:
                return rp.repack(raw if store.name != "warm" else warm_raw, store, codec=codec, client=client,
                                 progress=False, decode_threads=dthreads, checksum=checksum, encode_thread=ethread)  # fmt: skip
            finally:
                client.run(_set_env, dict.fromkeys(env))

        client.gather(client.map(rt.run_task, tasks[: workers * 2], write=False, pure=False))  # warm-up
        for codec, variant in runs:  # warm-up of the whole repack path (imports, first calls)
            repack_once(codec, variant, tmp / "warm")
            shutil.rmtree(tmp / "warm")
        idle = max(client.run(rt.current_rss_mb).values())
        dec, rss_dec, cpu = decode_pass()
        decs, cpus, out = [dec], [cpu], []
        for codec, variant in [r for _ in range(repeats) for r in runs]:
            store = tmp / f"store-{codec}-{variant}"
            client.run(rt.reset_peak_rss)
            t0 = time.perf_counter()
            s = repack_once(codec, variant, store)
            dt = time.perf_counter() - t0
            assert s.tasks_failed == 0 and s.frames_invalid == 0
            man = rp.read_repack_results(store)
            cpu_ms = 1000 * man[man.asset == "image"].cpu_seconds.sum() / n_img
            after, rss, cpu_after = decode_pass()
            rss_dec = max(rss_dec, rss)
            ref, ref_cpu = (decs[-1] + after) / 2, (cpus[-1] + cpu_after) / 2
            decs.append(after)
            cpus.append(cpu_after)
            out.append(dict(codec=codec, variant=variant, ips=n_img / dt, ref=ref, rss=s.peak_rss_mb,
                            mb=du(store) / n_img / 2**20, cpu=cpu_ms, ratio=n_img / dt / ref,
                            cpu_ratio=ref_cpu / cpu_ms))  # fmt: skip
            shutil.rmtree(store)
    rows = []
    for codec, variant in runs:
        mine = [r for r in out if (r["codec"], r["variant"]) == (codec, variant)]
        row = {k: float(np.median([r[k] for r in mine])) for k in mine[0] if k not in ("codec", "variant")}
        rows.append(dict(row, codec=codec, variant=variant, rss=max(r["rss"] for r in mine),
                         ratios=[r["ratio"] for r in mine]))  # fmt: skip
    decode = dict(ips=float(np.mean(decs)), rss=rss_dec, cpu=float(np.mean(cpus)), idle=idle, n=n_img)
    return rows, decode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (2 cameras x 24 frames, one repeat)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="Dask worker processes")
    ap.add_argument("--cameras", type=int, default=8, help="cameras (one 256-frame task each)")
    ap.add_argument("--frames", type=int, default=256, help="frames per camera (256 = one real-size task)")
    ap.add_argument("--distinct", type=int, default=24, help="distinct AVIF images (reused cyclically)")
    ap.add_argument("--codecs", default=",".join(L.CODECS), help="codecs of the codec table and repack rows")
    ap.add_argument("--variants", default="default,no-checksum,zarr-write",
                    help=f"repack variants ({', '.join(VARIANTS)}) of the default codec, or VARIANT@CODEC")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="repack runs per row (medians; quick: 1)")
    ap.add_argument("--reference", type=Path, default=REFERENCE, help="a real RGB image to crop frames from")
    args = ap.parse_args(argv)
    if args.quick:
        args.cameras, args.frames, args.distinct, args.repeats = 2, 24, 4, 1
    codecs = [c for c in args.codecs.split(",") if c]
    runs = [(c, "default") for c in codecs]
    for v in filter(None, args.variants.split(",")):
        variant, _, codec = v.partition("@")
        if (codec or L.DEFAULT_CODEC, variant) not in runs:
            runs.append((codec or L.DEFAULT_CODEC, variant))
    if (
        set(codecs) - set(L.STORE_CODECS)
        or {v for _, v in runs} - set(VARIANTS)
        or {c for c, _ in runs} - set(L.STORE_CODECS)
    ):
        ap.error(f"--codecs from {L.STORE_CODECS}, --variants from {tuple(VARIANTS)} (@ one of the codecs)")

    with tempfile.TemporaryDirectory(prefix="ava256-bench-repack-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        blobs, origin = source_images(args.distinct, reference=args.reference)
        print(f"source: {len(blobs)} distinct {W}x{H} images, {origin}, "
              f"mean AVIF {np.mean([len(b) for b in blobs]) / 1024:.0f} KiB ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        print(f"machine: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; zarr {zarr.__version__}; "
              f"python {sys.version.split()[0]}\n")  # fmt: skip

        rows = codec_table(blobs, tmp, 3 * len(blobs), codecs)
        print("1) image codecs: chunk = one 667x1024 image + crc32c, shard = all; one thread; best of 3")
        hdr = [
            "codec",
            "MiB/image",
            "vs raw",
            "vs AVIF",
            "write img/s",
            "zarr write",
            "read img/s",
            "zarr read",
        ]
        print(
            f"{hdr[0]:<28}{hdr[1]:>10}{hdr[2]:>8}{hdr[3]:>9}{hdr[4]:>13}{hdr[5]:>12}{hdr[6]:>12}{hdr[7]:>11}"
        )
        avif_mb = rows[-1]["mb"]
        for r in rows:
            print(f"{r['codec']:<28}{r['mb']:>10.3f}{r['mb'] / r['raw_mb']:>8.2f}{r['mb'] / avif_mb:>8.1f}x"
                  f"{r['write']:>13.1f}{r['zarr_write']:>12.1f}{r['read']:>12.1f}{r['zarr_read']:>11.1f}")  # fmt: skip
        print(
            "write img/s: ava256.store.shards.shard_writer (encode, crc32c, one shard file); zarr write: arr[...] = x"
        )
        print("read img/s: ava256.store.fastread.ChunkReader, one random image each; zarr read: arr[i, 0]")

        raw = tmp / "raw"
        make_raw(raw, blobs, args.cameras, args.frames)
        make_raw(tmp / "warm-raw", blobs[:2], 1, 2)
        trows, dec = throughput(raw, tmp, args.workers, runs, tmp / "warm-raw", args.repeats)
        print(f"\n2) repack vs pure decode: {dec['n']} images ({args.cameras} cameras x {args.frames} frames), "
              f"LocalCluster of {args.workers} worker processes x 1 thread; per row the median of "
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
        ]
        print(f"{hdr[0]:<58}{hdr[1]:>9}{hdr[2]:>13}{hdr[3]:>7}{hdr[4]:>11}{hdr[5]:>10}{hdr[6]:>16}{hdr[7]:>9}"
              "   ratio of each run")  # fmt: skip
        print(f"{'pure decode (zip read + AVIF)':<58}{dec['ips']:>9.1f}{dec['ips']:>13.1f}{1.0:>7.2f}{dec['cpu']:>11.1f}"
              f"{1.0:>10.2f}{dec['rss']:>12.0f} MiB{'-':>9}")  # fmt: skip
        for r in trows:
            what = VARIANTS[r["variant"]][0]
            name = f"repack --codec {r['codec']}" + (f", {what}" if what else "")
            if r["codec"] == L.DEFAULT_CODEC and not what:
                name += " (default)"
            print(f"{name:<58}{r['ips']:>9.1f}{r['ref']:>13.1f}{r['ratio']:>7.2f}{r['cpu']:>11.1f}"
                  f"{r['cpu_ratio']:>10.2f}{r['rss']:>12.0f} MiB{r['mb']:>9.3f}   "
                  + " ".join(f"{x:.2f}" for x in r["ratios"]))  # fmt: skip
        by = {(r["codec"], r["variant"]): r for r in trows}
        base = by.get((L.DEFAULT_CODEC, "default"))
        for r in trows:  # each variant vs its codec's default row
            ref = by.get((r["codec"], "default"))
            if ref is not None and ref is not r:
                print(f"  {r['variant']}@{r['codec']} vs {ref['variant']}@{ref['codec']}: {r['ips'] / ref['ips'] - 1:+.1%} "
                      f"images/s, {r['cpu'] / ref['cpu'] - 1:+.1%} CPU per image")  # fmt: skip
            elif r["variant"] == "default" and base is not None and r is not base:
                print(f"  --codec {r['codec']} vs {L.DEFAULT_CODEC}: {r['ips'] / base['ips'] - 1:+.1%} images/s, "
                      f"{r['cpu'] / base['cpu'] - 1:+.1%} CPU per image, {r['mb'] / base['mb']:.2f} x the bytes")  # fmt: skip
        print(
            f"peak RSS/worker = VmHWM of a worker process during the run; an idle worker holds {dec['idle']:.0f} MiB."
        )
        print(
            "CPU ms/img = worker CPU per image of the image tasks; CPU ratio = decode CPU / repack CPU per image,"
        )
        print("the throughput ratio on dedicated cores (insensitive to other load on a shared machine).")

    return 0


if __name__ == "__main__":
    raise SystemExit(main())
