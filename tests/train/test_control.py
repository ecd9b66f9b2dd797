import random

import numpy as np
import pytest
import torch

from ava256.train.control import (
    ResumeConflict,
    check_resume,
    config_changes,
    cpu_time_warning,
    isolated_rng,
    start_banner,
)


def test_banner_names_device_precision_and_world_size():
    line = start_banner(torch.device("cpu"), False, 1, 20, 2)
    assert line.startswith("train: device cpu (") and "precision fp32" in line and "world size 1" in line


def test_cpu_warning_only_for_absurd_cpu_runs():
    w = cpu_time_warning(torch.device("cpu"), 9.36, 200_000)
    assert w is not None and "about 520 h" in w and "GPU" in w
    assert cpu_time_warning(torch.device("cpu"), 0.5, 20) is None
    assert cpu_time_warning(torch.device("cuda", 0), 9.36, 200_000) is None


def test_isolated_rng_leaves_every_stream_where_it_was():
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    plain = draws()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with isolated_rng():
        draws(), draws()
    assert draws() == plain


def test_resume_checks():
    old = {"train": {"lr": 0.001, "iters": 10}, "model": {"voxels": 2}}
    state = {"config": old, "split": "free-face", "iteration": 5}
    assert config_changes(old, old) == {}
    new = {"train": {"lr": 0.001, "iters": 20}, "model": {"voxels": 2}}
    assert check_resume("run", state, new, "free-face") == [
        "warning: run: train.iters changed on resume: 10 -> 20 (applied)"
    ]
    with pytest.raises(ResumeConflict, match=r"model.voxels: 2 -> 4, train.lr: 0.001 -> 0.01"):
        check_resume("run", state, {"train": {"lr": 0.01, "iters": 10}, "model": {"voxels": 4}}, "free-face")
    with pytest.raises(ResumeConflict, match="split 'free-face', not 'cameras'"):
        check_resume("run", state, old, "cameras")


def test_a_checkpoint_of_an_older_version_resumes_with_the_keys_added_since():
    """Keys newer than a checkpoint may be added on resume when their value trains as the old run did."""
    old = {"train": {"lr": 0.001, "iters": 10}}
    state = {"config": old, "split": "s", "iteration": 5}
    neutral = {"train": {"lr": 0.001, "iters": 10, "lr_scaling": "none", "lr_ref_batch": 4}}
    warnings = check_resume("run", state, neutral, "s")
    assert len(warnings) == 2 and all("changed on resume" in w for w in warnings)
    with pytest.raises(ResumeConflict, match=r"train.lr_scaling: None -> 'linear'"):
        check_resume("run", state, {"train": {**neutral["train"], "lr_scaling": "linear"}}, "s")
