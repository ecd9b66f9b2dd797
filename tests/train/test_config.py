"""Training configs: packaged configs on top of reference.yaml, and command-line overrides."""

from __future__ import annotations

import pytest

from ava256.train.config import apply_overrides, load_config, parse_overrides


def test_config_overrides():
    cfg = apply_overrides(
        load_config("tiny"), ["--train.lr=1e-4", "--data.batch_size", "8", "--model.bg_res=[4, 3]"]
    )
    assert cfg["train"]["lr"] == 1e-4 and cfg["data"]["batch_size"] == 8 and cfg["model"]["bg_res"] == [4, 3]
    assert cfg["model"]["expr_dim"] == 16  # inherited from reference.yaml
    assert parse_overrides(["--a.b.c=x"]) == {"a": {"b": {"c": "x"}}}
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(cfg, ["--train.lrr=1"])
    with pytest.raises(ValueError):
        parse_overrides(["train.lr=1"])
    ref = load_config("reference")["model"]
    assert ref["prim_res"] ** 2 == 16384 and ref["voxels"] == 8 and ref["volradius"] == 256
