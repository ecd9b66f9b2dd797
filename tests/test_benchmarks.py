"""Every script under benchmarks/ runs its --quick mode on the CPU (each prints its table).

They take minutes together on 2 cores, so they run as their own step of .ci/run
(``AVA256_BENCH_QUICK=1 pytest tests/test_benchmarks.py``), outside the main suite's time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))

pytestmark = pytest.mark.skipif(
    os.environ.get("AVA256_BENCH_QUICK") != "1", reason="set AVA256_BENCH_QUICK=1 (a step of .ci/run)"
)


def test_every_benchmark_is_covered():
    assert {p.stem for p in SCRIPTS} >= {"fetch", "loader", "raymarch", "repack", "scale", "synth", "train"}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_quick_mode_runs_on_the_cpu(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path, also on a GPU machine
    r = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.strip(), "a benchmark prints its table"
