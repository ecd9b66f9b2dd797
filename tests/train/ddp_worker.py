"""One rank of tests/train/test_ddp.py under torchrun (gloo, CPU): an uninterrupted run, a run stopped after
a checkpoint and its resume, then a replica check on deliberately different parameters. Writes
``OUT/rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ava256.train.config import apply_overrides, load_config
from ava256.train.ddp import ReplicaDivergence, check_replicas
from ava256.train.trainer import shutdown_distributed, train


def main(store: str, split: str, out: str) -> None:
    over = ["--train.iters=6", "--train.ckpt_every=3", "--train.guide_iters=2", "--train.val_every=0"]
    over += ["--train.image_every=0", "--model.voxels=2", "--data.num_workers=0"]
    over += ["--train.lr_scaling=linear", "--train.lr_ref_batch=2"]  # global batch 2 x 2: lr x 2
    cfg = apply_overrides(load_config("tiny"), over)
    root = Path(out)
    straight = train(store, split, cfg, root / "a", progress=False)
    stopped = train(store, split, cfg, root / "b", progress=False, stop_after=4)
    resumed = train(store, split, cfg, root / "b", progress=False)
    rank = dist.get_rank()
    torch.manual_seed(rank)  # a different initialisation on each rank, never synchronised
    try:
        check_replicas(torch.nn.Linear(3, 2))
        diverged = ""
    except ReplicaDivergence as e:
        diverged = str(e)
    row = {
        "rank": rank,
        "straight": straight.losses,
        "stopped": stopped.losses,
        "resumed_from": resumed.start_iteration,
        "resumed": resumed.losses,
        "diverged": diverged,
    }
    (root / f"rank{rank}.json").write_text(json.dumps(row))
    shutdown_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:4])
