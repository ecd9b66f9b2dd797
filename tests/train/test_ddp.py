"""Data-parallel training under torchrun with 2 gloo ranks on the CPU: the replicas stay bitwise identical
and a stopped run resumes exactly; every parameter gets a gradient in both training phases (what
``train.ddp_static_graph`` relies on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ava256.data import collate_samples
from ava256.models import Autoencoder, ModelConfig, losses
from ava256.models.uvmap import load_topology
from ava256.train.checkpoint import list_checkpoints, load_checkpoint
from ava256.train.config import load_config
from ava256.train.ddp import ddp_options, lr_factor, parameter_digest
from ava256.train.trainer import build_model, prepare_batch, seed_everything

ROOT = Path(__file__).resolve().parents[2]


def same_losses(a: list[float], b: list[float]) -> bool:
    return a == b  # the CPU: bit-identical


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_torchrun_two_ranks_stay_identical_and_resume_exactly(small_store, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(ROOT / "tests" / "train" / "ddp_worker.py"), str(small_store.store), small_store.split]
    r = subprocess.run(cmd + [str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]

    # (a) each rank trains on its own share of the data (other losses) yet holds the same parameters
    assert len(rows[0]["straight"]) == 6 and rows[0]["straight"] != rows[1]["straight"]
    final = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[-1])
    assert final["iteration"] == 6
    digests = final["replicas"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # the digest of what rank 0 saved is the digest both ranks reported
    info = final["info"]
    net = Autoencoder(
        ModelConfig.from_dict(final["model_config"]), load_topology(), info["vertmean"], info["vertstd"]
    )
    net.load_state_dict(final["model"])
    assert parameter_digest(net) == digests[0]
    # linear lr scaling: global batch 2 ranks x 2 against lr_ref_batch 2
    assert final["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(2 * 0.001)

    # (b) stopped after 4 iterations (checkpoint at 3), resumed: the uninterrupted run's losses on both ranks
    for row in rows:
        assert len(row["stopped"]) == 4 and row["resumed_from"] == 3
        assert same_losses(row["stopped"], row["straight"][:4])
        assert same_losses(row["resumed"], row["straight"][3:])

    # the replica check names the rank whose parameters differ
    assert all("rank(s) [1]" in row["diverged"] for row in rows), rows


@pytest.mark.parametrize("guide", [True, False], ids=["guide", "free"])
def test_every_parameter_gets_a_gradient_in_both_phases(fake_datasets, guide):
    train_ds, _, info = fake_datasets
    cfg = load_config("tiny")
    seed_everything(0)
    model = build_model({**cfg["model"], "voxels": 2}, info)
    batch = prepare_batch(collate_samples([train_ds[i] for i in range(2)]), torch.device("cpu"))
    out = model(batch, guide=guide)
    losses(out, batch, cfg["loss"])["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # static_graph: the same parameters take part in every iteration
    assert [n for n, _ in model.named_buffers() if n.startswith("uv.")]  # constants: no per-step broadcast


def test_ddp_options_and_lr_factor():
    tc = load_config()["train"]
    opts = ddp_options(tc)
    sync = opts.pop("forward_sync_buffers", opts.pop("broadcast_buffers", None))
    assert sync is False and opts == {
        "bucket_cap_mb": 4.0,
        "static_graph": True,
        "gradient_as_bucket_view": True,
    }
    with pytest.raises(ValueError, match="ddp_bucket_mb"):
        ddp_options({**tc, "ddp_bucket_mb": 0})
    assert lr_factor("none", 16, 4) == 1.0
    assert lr_factor("linear", 16, 4) == 4.0
    assert lr_factor("sqrt", 16, 4) == 2.0
    with pytest.raises(ValueError, match="lr_scaling"):
        lr_factor("cubic", 16, 4)


def _skip_rank(rank: int, port: int, n_oks: list[tuple[int, int]], out: str) -> None:
    import torch.distributed as dist

    from ava256.train.trainer import all_ranks_have_samples, shutdown_distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    got = [all_ranks_have_samples(pair[rank], torch.device("cpu")) for pair in n_oks]
    Path(out, f"rank{rank}.json").write_text(json.dumps(got))
    shutdown_distributed()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_a_batch_of_unreadable_samples_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    """Where one rank's batch is all unreadable, both ranks agree to skip (a rank that trained alone would
    wait forever in the gradient all-reduce)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    n_oks = [(2, 2), (0, 2), (2, 0), (0, 0), (1, 2)]
    ctx = mp.start_processes(_skip_rank, args=(port, n_oks, str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")  # fmt: skip
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):  # True once both ranks exited (raises if one failed)
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks did not finish: a collective is hanging")
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == [True, False, False, False, True]
