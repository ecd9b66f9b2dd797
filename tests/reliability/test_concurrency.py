"""Two repacks on one store: the second is refused (lock file with owner pid/host, stale-lock take-over), and
the store stays equal to a clean run's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from rel_helpers import assert_same_store, cli_cmd

from ava256.store.lock import StoreLock, StoreLockedError, lock_path


@pytest.mark.slow
def test_two_repack_processes_on_one_store(raw_tree, clean_store, tmp_path):
    clean, _ = clean_store
    store = tmp_path / "store"
    cmd = cli_cmd("repack", raw_tree, store, "--workers", "1", "--no-progress")
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    loser = next(r for r in results if r[0] == 1)
    assert "refusing to run a second repack" in loser[2] and "Traceback" not in loser[2]
    winner_pid = next(p.pid for p, r in zip(procs, results) if r[0] == 0)
    assert f"pid {winner_pid} on {socket.gethostname()}" in loser[2]
    assert not os.path.exists(lock_path(store))
    assert_same_store(store, clean)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_lock(store, **owner) -> str:
    path = lock_path(store)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"pid": 1, "host": socket.gethostname(), "started": "then", "token": "x", **owner}, f)
    return path


def test_lock_refuses_a_live_owner_and_releases(tmp_path):
    with StoreLock(tmp_path) as lock:
        owner = json.loads(open(lock_path(tmp_path)).read())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            StoreLock(tmp_path).acquire()
        assert lock.held
    assert not os.path.exists(lock_path(tmp_path))
    with StoreLock(tmp_path):  # free again
        pass


def test_stale_locks_are_taken_over(tmp_path):
    # this host, pid gone (a kill -9)
    write_lock(tmp_path, pid=dead_pid())
    with StoreLock(tmp_path) as lock:
        assert json.loads(open(lock_path(tmp_path)).read())["token"] == lock.token
    # this host, pid alive but another process now (pid reuse): start time differs
    write_lock(tmp_path, pid=os.getppid(), proc_start="1")
    with StoreLock(tmp_path):
        pass
    # another host, not refreshed for longer than stale_after
    path = write_lock(tmp_path, host="elsewhere.example", pid=4242)
    os.utime(path, (time.time() - 1000, time.time() - 1000))
    with StoreLock(tmp_path, stale_after=300):
        pass
    # another host, fresh: refused (we cannot see its pid)
    write_lock(tmp_path, host="elsewhere.example", pid=4242)
    with pytest.raises(StoreLockedError, match="elsewhere.example"):
        StoreLock(tmp_path, stale_after=300).acquire()
    os.unlink(lock_path(tmp_path))


def test_lock_is_released_when_the_run_fails(tmp_path):
    from ava256.pipeline.repack import repack

    with pytest.raises(FileNotFoundError):
        repack(tmp_path / "no-such-raw", tmp_path / "store", workers=1, progress=False)
    assert not os.path.exists(lock_path(tmp_path / "store"))


def test_heartbeat_refreshes_the_lock(tmp_path):
    with StoreLock(tmp_path, heartbeat=0.05):
        path = lock_path(tmp_path)
        os.utime(path, (time.time() - 1000, time.time() - 1000))
        deadline = time.monotonic() + 10
        while time.time() - os.stat(path).st_mtime > 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert time.time() - os.stat(path).st_mtime < 100
