"""SIGINT and SIGTERM sent to real `ava256 train` processes (single process, and torchrun with 2 gloo ranks):
a checkpoint at the iteration the run stopped at, the resume command, exit 130 / 143."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ava256.train.checkpoint import list_checkpoints, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--config", "tiny", "--train.iters=2000", "--train.ckpt_every=1000", "--train.val_every=0"]
ARGS += ["--train.image_every=0", "--model.voxels=2", "--no-progress"]


def _env():
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _wait_iterations(metrics: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} iterations in {timeout} s")


def _stopped_at(text: str) -> int:
    line = next(ln for ln in text.splitlines() if ln.startswith("stopped by"))
    return int(line.split("at iteration ")[1].split()[0])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_current_iteration_and_the_printed_command_resumes(small_store, tmp_path, sig):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ava256.cli", "train", str(small_store.store), "--split", small_store.split]
    cmd += ["--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_iterations(out / "metrics.jsonl", 2, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    n = _stopped_at(stdout)
    assert f"stopped by {sig.name} at iteration {n} of 2000" in stdout and "Traceback" not in stderr
    assert "arning" not in stderr, stderr  # no warning on the documented install (TensorBoard included)
    assert "train: device cpu" in stderr and "world size 1" in stderr
    ckpt = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpt] == [f"ckpt_{n:08d}.pt"] and f"checkpoint {ckpt[0]}" in stdout
    assert load_checkpoint(ckpt[0])["iteration"] == n
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == n  # nothing trained after the saved iteration
    if sig == signal.SIGTERM:  # the printed command resumes (here for two more iterations)
        resume = next(ln for ln in stdout.splitlines() if ln.startswith("resume with: "))
        argv = resume.removeprefix("resume with: ").split()
        assert argv[:2] == ["ava256", "train"] and f"--out {out}" in resume
        argv = [sys.executable, "-m", "ava256.cli", *argv[1:], f"--train.iters={n + 2}"]
        r = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"resuming {out} from iteration {n}" in r.stderr
        assert load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["iteration"] == n + 2


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_torchrun_a_signal_to_one_rank_stops_both_at_one_iteration(small_store, tmp_path):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [
        "-m",
        "ava256.cli",
        "train",
        str(small_store.store),
        "--split",
        small_store.split,
        "--out",
        str(out),
    ]
    env = _env() | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd + ARGS, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_iterations(out / "metrics.jsonl", 2, proc)
        ranks = {}
        for child in psutil.Process(proc.pid).children(recursive=True):
            rank = child.environ().get("RANK")
            if rank is not None and "ava256.cli" in " ".join(child.cmdline()):
                ranks[rank] = child
        assert set(ranks) == {"0", "1"}
        ranks["1"].send_signal(signal.SIGTERM)  # only one rank hears it
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    n = _stopped_at(stdout)
    assert f"stopped by SIGTERM at iteration {n}" in stdout, stderr
    assert "resume with: torchrun --nproc_per_node=2 -m ava256.cli train" in stdout
    ckpt = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpt] == [f"ckpt_{n:08d}.pt"]
    state = load_checkpoint(ckpt[0])
    assert state["iteration"] == n and len(state["rng"]) == 2  # both ranks' states, saved at the same step
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == n
