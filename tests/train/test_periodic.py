"""The trainer's periodic actions (scalars and images to TensorBoard, checkpoints, validation) fire on the
multiples of their interval, and an interval <= 0 disables them; observed in what a short run writes."""

from __future__ import annotations

import json

import pytest

from ava256.train.checkpoint import list_checkpoints
from ava256.train.config import apply_overrides, load_config
from ava256.train.trainer import train

ITERS = 3
ACTIONS = ("log_every", "image_every", "ckpt_every", "val_every")


def _tensorboard_steps(folder) -> tuple[list[int], list[int]]:
    """Steps of the per-iteration scalar ``perf/step_s`` (``log_every``) and of the ``train/gt_vs_recon``
    images (``image_every``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = [e.step for e in acc.Scalars("perf/step_s")] if "perf/step_s" in tags["scalars"] else []
    images = (
        [e.step for e in acc.Images("train/gt_vs_recon")] if "train/gt_vs_recon" in tags["images"] else []
    )
    return scalars, images


# two runs cover every case: intervals 1, 2 and "3" (a string, as a YAML file may give it) fire on their
# multiples; 0 and -1 never fire
@pytest.mark.parametrize(
    "every, due_at",
    [
        ((1, "3", 2, 0), ([1, 2, 3], [3], [2], [])),
        ((0, -1, -1, 2), ([], [], [], [2])),
    ],
)
def test_periodic_actions_fire_on_multiples_and_zero_disables(fake_datasets, tmp_path, every, due_at):
    cfg = apply_overrides(load_config("tiny"), [f"--train.iters={ITERS}", "--train.keep_ckpts=100",
                                                "--data.batch_size=1", "--data.val_batches=1",
                                                "--model.voxels=2"])  # fmt: skip
    cfg["train"] |= dict(zip(ACTIONS, every))
    due = dict(zip(ACTIONS, due_at))
    result = train(None, None, cfg, tmp_path, datasets=fake_datasets, progress=False)
    assert result.iteration == ITERS

    assert _tensorboard_steps(tmp_path / "tb") == (due["log_every"], due["image_every"])
    # checkpoints and validations inside the loop; the last iteration always gets both, once
    saved = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert saved == [f"ckpt_{i:08d}.pt" for i in [*(i for i in due["ckpt_every"] if i < ITERS), ITERS]]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val_at = [i for i in due["val_every"] if i < ITERS]
    assert [r["iter"] for r in rows if "val/psnr" in r] == [*val_at, ITERS]
