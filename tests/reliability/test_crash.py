"""Crash tests: ``kill -9`` (the whole process group: CLI, Dask scheduler and worker processes) of a fetch and
of a repack at random points, several times, then a re-run; the result must equal a clean run's exactly (content
hashes of every file / of every array), with no lost, duplicated or corrupted frame."""

from __future__ import annotations

import os
import random
import time

import pandas as pd
import pytest
from rel_helpers import kill9, run_cli, sha256, start_cli, store_digest, tree_digest, write_raw_captures

from ava256.manifests.fetch import read_fetch_manifest
from ava256.manifests.repack import read_repack_manifest
from ava256.manifests.samples import read_samples
from ava256.store import layout as L
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
        time.sleep(rng.uniform(1.8, 3.0))  # interpreter + imports take ~1.5 s of it
        killed_running += kill9(proc)
    assert killed_running >= 2, "the fetch finished before it could be killed: slow the link down"
    chaos.clear()
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr

    want = {f"{chaos_bucket.capture.folder}/{k}": sha256(v) for k, v in chaos_bucket.contents.items()}
    assert tree_digest(out) == want
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.etag"))
    rows = read_fetch_manifest(out)
    assert len(rows) == len(want) and all(r["status"] == "ok" for r in rows.values())
    assert {r["path"]: r["sha256"] for r in rows.values()} == want
    assert run_cli("verify", out, "--no-progress").returncode == 0


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory):
    raw = tmp_path_factory.mktemp("crash-raw")
    write_raw_captures(raw, n=2, cameras=3, frames=12)
    return raw


@pytest.fixture(scope="module")
def clean_store(raw_tree, tmp_path_factory, threads_client):
    """A clean, uninterrupted repack (same options as the CLI's defaults) and its number of store files."""
    from ava256.pipeline.repack import repack

    store = tmp_path_factory.mktemp("clean") / "store"
    summary = repack(raw_tree, store, client=threads_client, progress=False)
    assert summary.tasks_failed == 0 and not summary.failed_captures
    return store, count_files(store)


def count_files(store, since: float = 0.0) -> int:
    """Files under ``store`` (written at or after ``since``, a time.time())."""
    n = 0
    for dirpath, _dirs, files in os.walk(store):  # tolerant of folders vanishing (a group being recreated)
        for name in files:
            try:
                n += os.stat(os.path.join(dirpath, name)).st_mtime >= since
            except FileNotFoundError:
                pass
    return n


def assert_same_store(store, clean) -> None:
    got, want = store_digest(store), store_digest(clean)
    assert set(got) == set(want), set(got) ^ set(want)
    bad = sorted(k for k in want if got[k] != want[k])
    assert not bad, f"arrays differ from the clean run: {bad}"
    cols = ["capture", "frame_index", "camera_index", "frame_id", "segment", "valid", "valid_image"]
    a = read_samples(L.manifests_path(store, "samples.parquet"))[cols].reset_index(drop=True)
    b = read_samples(L.manifests_path(clean, "samples.parquet"))[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    m = read_repack_manifest(L.manifests_path(store, "repack.parquet"))
    assert m["task_id"].is_unique and (m["status"] == "done").all()
    ref = read_repack_manifest(L.manifests_path(clean, "repack.parquet"))
    assert sorted(m["task_id"]) == sorted(ref["task_id"])
    cmp = ["task_id", "n_frames", "n_valid", "n_missing", "n_corrupt"]
    pd.testing.assert_frame_equal(
        m[cmp].sort_values("task_id").reset_index(drop=True),
        ref[cmp].sort_values("task_id").reset_index(drop=True),
    )


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
        target = max(1, int(rng.uniform(0.02, 0.6) * n_files))
        t0 = time.time()
        proc = start_cli(*args)
        deadline = time.monotonic() + 90
        while proc.poll() is None and count_files(store, since=t0) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        kill9(proc)
        at_kill.append((target, count_files(store, since=t0)))
    # the killed runs left a lock behind whose pid is gone: the next run takes it over
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "skipped" in res.stdout
    assert_same_store(store, clean)
    assert not os.path.exists(lock_path(store))
    print("files written by each killed run (target, found):", at_kill, "of", n_files)
