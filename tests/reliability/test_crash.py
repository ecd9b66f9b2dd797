"""Crash tests: ``kill -9`` (the whole process group: CLI, Dask scheduler and worker processes) of a fetch and
of a repack at random points, several times, then a re-run; the result must equal a clean run's exactly (content
hashes of every file / of every array), with no lost, duplicated or corrupted frame."""

from __future__ import annotations

import os
import random
import time

import pytest
from rel_helpers import assert_same_store, count_files, kill9, run_cli, sha256, start_cli, tree_digest

from ava256.manifests.fetch import read_fetch_manifest
from ava256.store.lock import lock_path

KILLS = 3


@pytest.mark.slow
def test_fetch_killed_at_random_points_then_rerun_equals_the_bucket(chaos_bucket, chaos, tmp_path):
    out = tmp_path / "raw"
    # a slow link: every object crawls (the 6 MB multipart one takes ~4 s), so kills land mid-object
    chaos.add("throttle", match=chaos_bucket.capture.folder, times=None, after_bytes=64 * 1024, delay=0.04)
    args = ["fetch", out, "--captures", chaos_bucket.capture.folder, "--source", chaos_bucket.source,
            "--endpoint-url", chaos_bucket.endpoint_url, "-j", "3", "--no-progress"]  # fmt: skip
    rng = random.Random(1234)
    killed_running = 0
    for _ in range(KILLS):
        proc = start_cli(*args)
        time.sleep(rng.uniform(1.6, 2.6))  # interpreter + imports take ~1.5 s of it
        killed_running += kill9(proc)
    assert killed_running >= 2, "the fetch finished before it could be killed: slow the link down"
    chaos.clear()
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr

    want = {f"{chaos_bucket.capture.folder}/{k}": sha256(v) for k, v in chaos_bucket.contents.items()}
    assert tree_digest(out) == want
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.etag"))
    rows = read_fetch_manifest(out)
    assert len(rows) == len(want) and all(r.status == "ok" for r in rows.values())
    assert {r.path: r.sha256 for r in rows.values()} == want
    assert run_cli("verify", out, "--no-progress").returncode == 0


@pytest.mark.slow
def test_repack_killed_at_random_points_then_rerun_equals_a_clean_run(raw_tree, clean_store, tmp_path):
    """Kill points are drawn over the run's progress (files in the store): group creation, shard writes, mask
    and manifest flushes, the final consolidation."""
    clean, n_files = clean_store
    store = tmp_path / "store"
    args = ["repack", raw_tree, store, "--workers", "2", "--no-progress"]
    rng = random.Random(99)
    at_kill = []
    for _ in range(KILLS):
        target = max(1, int(rng.uniform(0.02, 0.45) * n_files))
        t0 = time.time()
        proc = start_cli(*args)
        deadline = time.monotonic() + 90
        while proc.poll() is None and count_files(store, since=t0) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kill9(proc), f"the repack ended (rc {proc.returncode}) before it was killed"
        at_kill.append((target, count_files(store, since=t0)))
    # the killed runs left a lock behind whose pid is gone: the next run takes it over
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_same_store(store, clean)
    assert not os.path.exists(lock_path(store))
    print("files written by each killed run (target, found):", at_kill, "of", n_files)
