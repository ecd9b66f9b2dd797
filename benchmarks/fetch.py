"""Fetch throughput on a local S3 server (moto server mode, in its own process on loopback).

Three ways to download the same objects with the same number of workers, side by side in one run:

- ``ava256 fetch``: our Dask graph end to end (cluster start-up, listing, calibration, sha256 + MD5 while
  streaming, fsync, ETag check, atomic rename, manifest), and the same with ``--no-fsync``;
- plain parallel GET: a ThreadPool of boto3 ``get_object`` -> file (no hashing, no checks): the floor; and the
  same computing the hashes ours computes (sha256 and MD5 of every byte), to separate the cost of hashing from
  the cost of everything else we do;
- release script: a re-implementation of the release's approach: a process pool of ``urllib`` downloads of
  known URLs, skip-if-exists, no verification.

Objects are random bytes under the real key layout (content does not matter to a transfer); sizes are scaled
from the 4TB release (image zips dominate). Each round runs every method once into a fresh directory, the order
rotating between rounds; the table gives the median, and the client CPU seconds (this process and its reaped
children; the server runs in its own process). Run: ``python benchmarks/fetch.py [--quick]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from ava256.capture import (
    ASSETS,
    CALIBRATION_KEY,
    ENCODER_CAMERAS,
    capture_keys,
    release_capture_ids,
)
from ava256.formats import Calibration, write_calibration
from ava256.pipeline.fetch import fetch
from ava256.synth.server import LOCAL_BUCKET, s3_client, upload_tree

MB = 1e6


def object_size(key: str, scale: float) -> int:
    """Bytes of a synthetic object, ~ the 4TB release's proportions scaled down by ``scale``."""
    if key.startswith("decoder/image/"):
        base = 24e6
    elif key.startswith("decoder/segmentation_parts/"):
        base = 3e6
    elif key.endswith(("color.zip", "registration_vertices.zip")):
        base = 16e6
    elif key.startswith("encoder/image/"):
        base = 4e6
    elif key.endswith(".zip"):
        base = 2e6
    else:
        base = 60e3
    return max(1000, int(base * scale))


def write_bucket(root: Path, captures: int, cameras: int, scale: float) -> tuple[list[str], int]:
    """Random objects under ``root/ava-256/4TB/<capture>/...``; returns (capture folders, total bytes)."""
    rng = np.random.default_rng(0)
    cams = [str(400000 + 17 * i) for i in range(cameras)]
    c = len(cams)
    cal = write_calibration(
        Calibration(
            cams,
            np.tile(np.array([[5000.0, 0, 1334], [0, 5000.0, 2048], [0, 0, 1]]), (c, 1, 1)),
            np.tile(np.hstack([np.eye(3), [[0.0], [0.0], [1000.0]]]), (c, 1, 1)),
            np.zeros((c, 4)),
        )
    )
    total, folders = 0, []
    for capture in release_capture_ids()[:captures]:
        folders.append(capture.folder)
        for key in capture_keys(ASSETS, cams):
            data = cal if key == CALIBRATION_KEY else rng.bytes(object_size(key, scale))
            p = root / "ava-256" / "4TB" / capture.folder / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            total += len(data)
    assert len(ENCODER_CAMERAS) == 5
    return folders, total


def keys_of(endpoint: str) -> list[tuple[str, int]]:
    client = s3_client(endpoint)
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=LOCAL_BUCKET, Prefix="ava-256/4TB/"):
        out += [(o["Key"], o["Size"]) for o in page.get("Contents", ())]
    return out


# --- the three methods ---------------------------------------------------------------------------------------


def run_ours(endpoint: str, out: Path, folders: list[str], workers: int, fsync: bool = True) -> int:
    s = fetch(out, size="4TB", captures=folders, source=f"s3://{LOCAL_BUCKET}", endpoint_url=endpoint,
              workers=workers, progress=False, fsync=fsync)  # fmt: skip
    assert s.ok, s.lines()
    return s.bytes_transferred


def run_plain(
    endpoint: str, out: Path, keys: list[tuple[str, int]], workers: int, hashes: bool = False
) -> int:
    """ThreadPool of get_object -> file; with ``hashes``, also sha256 + MD5 of every byte (what ours computes
    to check single-part and multipart ETags), but no checks, no resume, no manifest."""
    client = s3_client(endpoint, max_pool_connections=workers)

    def get(key: str) -> int:
        dest = out / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        r = client.get_object(Bucket=LOCAL_BUCKET, Key=key)
        body = r["Body"]
        if not hashes:
            with open(dest, "wb") as f:
                shutil.copyfileobj(body, f, 1 << 20)
            return dest.stat().st_size
        sha, md5 = hashlib.sha256(), hashlib.md5()  # ours: MD5 of the whole object or of each part
        with open(dest, "wb") as f:
            while data := body.read(1 << 20):
                f.write(data)
                sha.update(data)
                md5.update(data)
        return dest.stat().st_size

    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(get, [k for k, _ in keys]))


def _release_download(job: tuple[str, str]) -> int:
    url, dest = job
    if os.path.exists(dest):  # the release script's only resume logic
        return 0
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    urllib.request.urlretrieve(url, dest)
    return os.path.getsize(dest)


def run_release(endpoint: str, out: Path, keys: list[tuple[str, int]], workers: int) -> int:
    jobs = [(f"{endpoint}/{LOCAL_BUCKET}/{k}", str(out / k)) for k, _ in keys]
    with Pool(workers) as pool:
        return sum(pool.map(_release_download, jobs, chunksize=1))


def client_cpu() -> float:
    """CPU seconds (user + system) of this process and its reaped children (the release script's pool)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def hash_rate() -> tuple[float, float]:
    data = os.urandom(1 << 20)
    rates = []
    for name in ("sha256", "md5"):
        h, t0 = hashlib.new(name), time.perf_counter()
        for _ in range(128):
            h.update(data)
        rates.append(128 * len(data) / MB / (time.perf_counter() - t0))
    return rates[0], rates[1]


# --- driver --------------------------------------------------------------------------------------------------


def start_server(link_mbps: float | None) -> subprocess.Popen:
    """The local S3 server in its own process (so it does not share a GIL with the clients under test)."""
    cmd = [sys.executable, "-m", "ava256.synth.server"]
    if link_mbps:
        cmd += ["--link-mbps", str(link_mbps)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


def run_scenario(
    server: subprocess.Popen,
    work: Path,
    folders: list[str],
    total: int,
    w: int,
    rounds: int,
    link_mbps: float | None,
) -> None:
    """Every method ``rounds`` times (rotated order) against one server; prints the table."""
    endpoint = server.stdout.readline().strip()
    upload_tree(endpoint, LOCAL_BUCKET, work / "bucket")
    keys = keys_of(endpoint)
    where = f"link capped at {link_mbps:g} MB/s per connection" if link_mbps else "bare loopback"
    print(f"\n== {where}: {len(keys)} objects, server {endpoint}")
    methods = {
        "ava256 fetch": lambda out: run_ours(endpoint, out, folders, w),
        "ava256 fetch --no-fsync": lambda out: run_ours(endpoint, out, folders, w, fsync=False),
        "plain parallel GET (boto3 threads)": lambda out: run_plain(endpoint, out, keys, w),
        "plain parallel GET + same hashes": lambda out: run_plain(endpoint, out, keys, w, hashes=True),
        "release script (urllib + processes)": lambda out: run_release(endpoint, out, keys, w),
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out = work / f"out-{r}-{names.index(name)}"
            c0, t0 = client_cpu(), time.perf_counter()
            moved = methods[name](out)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(client_cpu() - c0)
            assert moved == total, f"{name}: moved {moved} bytes, expected {total}"
            shutil.rmtree(out)
    base = statistics.median(times["plain parallel GET (boto3 threads)"])
    print(f"{'method':<38}{'seconds':>9}{'MB/s':>9}{'vs plain GET':>14}{'client CPU s':>14}")
    for name in names:
        t = statistics.median(times[name])
        c = statistics.median(cpu[name])
        print(f"{name:<38}{t:>9.2f}{total / MB / t:>9.1f}{base / t:>13.2f}x{c:>14.2f}")
    print(f"(median of {rounds} round(s); each round runs every method once, into a fresh directory)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data, one round (~1 min)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--captures", type=int, default=2)
    ap.add_argument("--cameras", type=int, default=None)
    ap.add_argument("--scale", type=float, default=None, help="object size scale vs. the 4TB release")
    ap.add_argument(
        "--link-mbps", type=float, default=25.0, help="per-connection cap of the second scenario (MB/s)"
    )
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    cameras = args.cameras or (4 if args.quick else 8)
    scale = args.scale or (0.1 if args.quick else 1.5)

    import distributed  # noqa: F401  - imported once up front: import time is not throughput

    work = Path(tempfile.mkdtemp(prefix="ava256-bench-fetch-"))
    try:
        folders, total = write_bucket(work / "bucket", args.captures, cameras, scale)
        print(f"{len(folders)} captures x {cameras} cameras: {total / MB:.0f} MB, workers={args.workers}, "
              f"rounds={rounds}, cpus={os.cpu_count()}")  # fmt: skip
        # Two scenarios, one run: the bare loopback (the network costs nothing, so the clients' CPU is the
        # limit) and a link of --link-mbps per connection (like a remote bucket: the network is the limit).
        for link in (None, args.link_mbps):
            server = start_server(link)
            try:
                run_scenario(server, work, folders, total, args.workers, rounds, link)
            finally:
                server.terminate()
                server.wait()
        sha, md5 = hash_rate()
        print(f"\nhashing on this machine, 1 thread, in memory: sha256 {sha:.0f} MB/s, md5 {md5:.0f} MB/s; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
