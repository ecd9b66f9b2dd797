"""The trainer on in-memory contract-shaped data: runs, logs, checkpoints, resumes exactly after a crash."""

from __future__ import annotations

import json

import pytest

from ava256.train.checkpoint import list_checkpoints
from ava256.train.config import apply_overrides, load_config
from ava256.train.trainer import train


class Crash(RuntimeError):
    pass


def _cfg(iters: int, **kw):
    args = [
        f"--train.iters={iters}",
        "--train.ckpt_every=3",
        "--train.val_every=100",
        "--train.image_every=2",
    ]
    return apply_overrides(load_config("tiny"), args + [f"--{k}={v}" for k, v in kw.items()])


def test_crash_and_resume_gives_identical_losses(fake_datasets, tmp_path):
    iters = 7
    straight = train(None, None, _cfg(iters), tmp_path / "a", datasets=fake_datasets, progress=False)
    assert straight.iteration == iters and len(straight.losses) == iters

    def crash_at_5(it, loss):
        if it == 5:
            raise Crash("simulated kill")

    with pytest.raises(Crash):
        train(
            None,
            None,
            _cfg(iters),
            tmp_path / "b",
            datasets=fake_datasets,
            on_iteration=crash_at_5,
            progress=False,
        )
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["ckpt_00000003.pt"]
    resumed = train(None, None, _cfg(iters), tmp_path / "b", datasets=fake_datasets, progress=False)
    assert resumed.start_iteration == 3
    assert resumed.losses == straight.losses[3:]  # bit-identical continuation
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss/total" in r]
    assert [r["iter"] for r in train_rows] == list(range(1, iters + 1))  # the crashed run's 4, 5 were dropped
    assert [r["loss/total"] for r in train_rows] == straight.losses
    val = json.loads((tmp_path / "b" / "val.json").read_text())
    assert val["iter"] == iters and 0 < val["psnr"] < 100 and -1 <= val["ssim"] <= 1
    assert list((tmp_path / "b" / "tb").glob("events.out.tfevents.*"))
    # a finished run is not retrained
    again = train(None, None, _cfg(iters), tmp_path / "b", datasets=fake_datasets, progress=False)
    assert again.start_iteration == iters and again.losses == []
