"""The trainer and render on a tiny store built through the real chain (synth -> repack -> split)."""

from __future__ import annotations

import json
import os
import re
import stat

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ava256.cli import cli
from ava256.data import collate_samples
from ava256.models import losses
from ava256.train.checkpoint import list_checkpoints, load_checkpoint
from ava256.train.config import apply_overrides, load_config
from ava256.train.data import open_datasets
from ava256.train.trainer import (
    build_model,
    prepare_batch,
    seed_everything,
    train,
)


class Crash(RuntimeError):
    pass


def _cfg(iters: int, *extra: str):
    args = [
        f"--train.iters={iters}",
        "--train.ckpt_every=3",
        "--train.val_every=100",
        "--train.image_every=2",
        "--data.val_batches=1",
        "--model.voxels=2",  # 2^3 voxels: the CPU reference raymarcher's backward is much cheaper
    ]
    return apply_overrides(load_config("tiny"), args + list(extra))


def same_losses(a: list[float], b: list[float]) -> bool:
    """Bit-identical on the CPU. On a GPU the raymarcher's backward accumulates gradients with atomicAdd (and
    cuDNN may pick non-deterministic kernels), so two identical runs differ in the last bits."""
    if torch.cuda.is_available():
        return len(a) == len(b) and all(abs(x - y) <= 1e-5 * abs(y) for x, y in zip(a, b))
    return a == b


def test_crash_and_resume_gives_identical_losses(small_store, tmp_path):
    iters = 6
    # a ThreadLoader (its batches come in sampler order); a validation at 4 falls between the checkpoint at 3
    # and the crash at 5, and images are logged at 2, 4, 6: neither may shift training's random draws
    cfg = _cfg(iters, "--data.num_workers=2", "--train.val_every=2")
    run = lambda out, **kw: train(small_store.store, small_store.split, cfg, out, progress=False, **kw)  # noqa: E731
    straight = run(tmp_path / "a")
    assert straight.iteration == iters and len(straight.losses) == iters

    def crash_at_5(it, loss):
        if it == 5:
            raise Crash("simulated kill")

    with pytest.raises(Crash):
        run(tmp_path / "b", on_iteration=crash_at_5)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["ckpt_00000003.pt"]
    resumed = run(tmp_path / "b")
    assert resumed.start_iteration == 3
    assert same_losses(resumed.losses, straight.losses[3:])  # the same continuation
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss/total" in r]
    assert [r["iter"] for r in train_rows] == list(range(1, iters + 1))  # the crashed run's 4, 5 were dropped
    assert same_losses([r["loss/total"] for r in train_rows], straight.losses)
    val = json.loads((tmp_path / "b" / "val.json").read_text())
    assert val["iter"] == iters and 0 < val["psnr"] < 100 and -1 <= val["ssim"] <= 1 and val["samples"] > 0
    assert list((tmp_path / "b" / "tb").glob("events.out.tfevents.*"))  # tensorboard is a dependency
    again = run(tmp_path / "b")  # a finished run is not retrained
    assert again.start_iteration == iters and again.losses == []


def test_cli_train_lowers_loss_and_render_writes_files(small_store, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        str(small_store.store),
        "--split",
        small_store.split,
        "--config",
        "tiny",
        "--out",
        str(out),
    ]
    args += [
        "--train.iters=10",
        "--train.lr=3e-3",
        "--train.ckpt_every=100",
        "--train.val_every=100",
        "--data.val_batches=1",
        "--model.voxels=2",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert ckpt["iteration"] == 10 and ckpt["split"] == small_store.split

    # the same fixed samples, scored by the initial model (same seed) and by the trained one
    cfg = ckpt["config"]
    ds, _, info = open_datasets(
        small_store.store, small_store.split, cfg["data"], info=ckpt["info"], parts=("train",)
    )
    batch = collate_samples([ds[i] for i in range(0, len(ds), max(1, len(ds) // 6))])
    batch = prepare_batch(batch, torch.device("cpu"), ds)
    seed_everything(cfg["train"]["seed"])
    before_model = build_model(cfg["model"], info)
    after_model = build_model(cfg["model"], info)
    after_model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        before = float(losses(before_model(batch, sample=False), batch, cfg["loss"])["image"])
        after = float(losses(after_model(batch, sample=False), batch, cfg["loss"])["image"])
    assert after < 0.95 * before, (before, after)

    r = CliRunner().invoke(
        cli, ["render", str(out), str(small_store.store), "--out", str(tmp_path / "r"), "--frames", "2"]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "r" / "render.json").read_text())
    assert summary["frames"] == 2 and len(summary["identities"]) == 2
    recon = iio.imread(tmp_path / "r" / "recon_000.png")
    gif = iio.imread(tmp_path / "r" / "transfer.gif", index=None)
    assert recon.dtype == np.uint8 and recon.shape[1] == 2 * recon.shape[0] * 24 // 32
    assert gif.shape[0] == 2 and gif.shape[2] == 3 * gif.shape[1] * 24 // 32  # driver, recon, 1 identity

    bad = CliRunner().invoke(
        cli,
        [
            "train",
            str(small_store.store),
            "--split",
            "nope",
            "--config",
            "tiny",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code == 1 and "nope" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x").exists()
    bad = CliRunner().invoke(
        cli, ["train", str(small_store.store), "--split", "free-face", "--config", "tiny", "--train.lrr=1"]
    )
    assert bad.exit_code == 2 and "lrr" in bad.output  # a usage error


def test_resume_refuses_a_changed_override_and_applies_a_run_length_change(small_store, tmp_path):
    old_umask = os.umask(0o002)  # a shared group folder: the run's files must be group-writable
    try:
        _resume_checks(small_store, tmp_path)
    finally:
        os.umask(old_umask)


def _resume_checks(small_store, tmp_path):
    out = tmp_path / "run"
    base = [
        "train",
        str(small_store.store),
        "--split",
        small_store.split,
        "--config",
        "tiny",
        "--out",
        str(out),
    ]
    base += ["--train.ckpt_every=100", "--train.val_every=0", "--model.voxels=2"]
    r = CliRunner().invoke(cli, base + ["--train.iters=2"])
    assert r.exit_code == 0, r.output
    assert "train: device cpu" in r.stderr and "world size 1" in r.stderr and "precision fp32" in r.stderr
    assert r.output.strip().splitlines()[-1].startswith("next: ava256 render")
    assert re.search(r"^train: 2/2 \(100%\)", r.stderr, re.M)  # not a terminal: plain progress lines
    assert "\r" not in r.stderr
    files = [
        out / "config.yaml",
        out / "metrics.jsonl",
        out / "val.json",
        *list_checkpoints(out / "checkpoints"),
    ]
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o664 for f in files}
    config = (out / "config.yaml").read_text()
    r = CliRunner().invoke(cli, base + ["--train.iters=2", "--train.lr=0.01"])
    assert r.exit_code == 2 and "train.lr: 0.001 -> 0.01" in r.stderr, r.output
    assert (out / "config.yaml").read_text() == config  # a refused run leaves the run folder as it was
    r = CliRunner().invoke(cli, base + ["--train.iters=3"])
    assert r.exit_code == 0, r.output
    assert f"resuming {out} from iteration 2" in r.stderr
    assert "train.iters changed on resume: 2 -> 3 (applied)" in r.stderr
    ckpt = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert ckpt["iteration"] == 3 and ckpt["config"]["train"]["iters"] == 3
    assert "iters: 3" in (out / "config.yaml").read_text()
