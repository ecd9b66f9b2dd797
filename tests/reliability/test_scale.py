"""Scale-out: the fetch and repack graphs run unchanged on a ``dask.distributed`` cluster given by
``--scheduler`` (a ``dask scheduler`` and two ``dask worker`` processes started as separate processes on
loopback), and a store may live at an fsspec URL (``s3://`` on the local S3 server, configured by the standard
``AWS_ENDPOINT_URL`` / credentials environment variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from rel_helpers import run_cli, sha256, store_digest, tree_digest

from ava256.manifests.samples import read_samples
from ava256.store import layout as L
from ava256.synth.server import s3_client

STORE_BUCKET = "ava256-stores"


@pytest.fixture(scope="module")
def s3_env(chaos_server):
    """Environment pointing s3fs/boto at the local S3 server, with a bucket for stores."""
    client = s3_client(chaos_server.endpoint_url)
    try:
        client.create_bucket(Bucket=STORE_BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return {
        "AWS_ENDPOINT_URL": chaos_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory, s3_env):
    """``dask scheduler`` + 2 ``dask worker`` processes (1 thread each) on 127.0.0.1; yields the address."""
    d = tmp_path_factory.mktemp("dask")
    sched_file = d / "scheduler.json"
    env = {**os.environ, **s3_env}
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs = [
        subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                          "--scheduler-file", str(sched_file)], env=env, cwd=d,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            procs.append(
                subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                  "--nworkers", "1", "--no-dashboard", "--memory-limit", "2GiB", "--name", f"w{i}",
                                  "--host", "127.0.0.1"], env=env, cwd=d, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            )  # fmt: skip
        from distributed import Client

        with Client(address, timeout=30) as c:
            c.wait_for_workers(2, timeout=60)
            pids = set(c.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
def test_fetch_on_a_scheduler_with_two_worker_processes(dask_cluster, chaos_bucket, chaos, tmp_path):
    out = tmp_path / "raw"
    res = run_cli("fetch", out, "--captures", chaos_bucket.capture.folder, "--source", chaos_bucket.source,
                  "--endpoint-url", chaos_bucket.endpoint_url, "--scheduler", dask_cluster, "--no-progress")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    want = {f"{chaos_bucket.capture.folder}/{k}": sha256(v) for k, v in chaos_bucket.contents.items()}
    assert tree_digest(out) == want


@pytest.mark.slow
def test_repack_on_a_scheduler_into_an_s3_store(dask_cluster, s3_env, raw_tree, clean_store, tmp_path):
    clean, _ = clean_store
    cap = L.list_capture_stores(clean)[0]  # one capture keeps the (slow, moto-served) S3 writes few
    url = f"s3://{STORE_BUCKET}/{tmp_path.name}/store"
    args = ["repack", raw_tree, url, "--captures", cap, "--scheduler", dask_cluster, "--no-progress"]
    res = run_cli(*args, env=s3_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 failed" in res.stdout

    os.environ.update(s3_env)  # s3fs in this process reads the same variables
    try:
        import fsspec

        fs, root = fsspec.core.url_to_fs(url)
        assert L.list_capture_stores(url) == [cap]
        want = {k: v for k, v in store_digest(clean).items() if k.startswith(f"{cap}/")}
        assert store_digest(url) == want
        samples = read_samples(L.manifests_path(url, "samples.parquet"))
        ref = read_samples(L.manifests_path(clean, "samples.parquet"))
        assert len(samples) == (ref["capture"] == cap).sum() > 0
        workers = set(pd_workers(url))
        assert len(workers) == 2, workers  # both worker processes took tasks
        assert not fs.exists(f"{root}/_manifests/repack.lock")  # released
        assert not fs.exists(f"{root}/_manifests/repack.parts")

        # a re-run skips everything (resume works against the object store too)
        res = run_cli(*args, env=s3_env)
        assert res.returncode == 0 and " 0 run," in res.stdout, res.stdout + res.stderr

        # `ava256 info` reads the S3 store: same captures, counts and sizes as the local store's capture
        from ava256.store.info import capture_info

        res = run_cli("info", url, "--json", env=s3_env)
        assert res.returncode == 0, res.stdout + res.stderr
        got = json.loads(res.stdout)
        assert got["store"] == url and got["tasks_failed"] == 0
        assert got["captures"] == [{**capture_info(clean, cap), "complete": True}]
        assert got["captures"][0]["bytes"] > 0 and got["captures"][0]["assets"]["image"]["bytes"] > 0
    finally:
        for k in s3_env:
            os.environ.pop(k, None)


def pd_workers(url: str) -> list[str]:
    from ava256.manifests.repack import read_repack_manifest

    m = read_repack_manifest(L.manifests_path(url, "repack.parquet"))
    return [w for w in m["worker"] if w != "driver"]
