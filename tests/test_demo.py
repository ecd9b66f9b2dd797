"""``ava256 demo``: the whole chain (synth -> local S3 -> fetch -> verify -> repack -> split -> train -> render)
offline on a small synthetic bucket, and a second run in the same workdir that redoes nothing."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ava256 import demo as demo_mod


def test_demo_runs_the_whole_chain_and_reruns_idempotently(monkeypatch, tmp_path):
    monkeypatch.setattr(demo_mod, "DEMO_CAMERAS", 2)
    monkeypatch.setattr(demo_mod, "DEMO_IMAGE_SIZE", (84, 128))
    monkeypatch.setattr(demo_mod, "DEMO_TEXTURE_SIZE", 64)
    monkeypatch.setattr(demo_mod, "DEMO_TRAIN_ITERS", 24)
    lines: list[str] = []
    d = demo_mod.run_demo(tmp_path / "demo", workers=2, echo=lines.append)

    assert d.results["fetch"].ok and d.results["verify"].clean
    rp = d.results["repack"]
    assert not rp.failed_captures and not rp.tasks_failed
    split = d.results["split"]
    assert split["counts"]["train"] > 0 and split["counts"]["val"] > 0
    res = d.results["train"]
    assert res.iteration == 24 and len(res.losses) == 24 and np.isfinite(res.losses).all()
    k = 6
    assert np.mean(res.losses[-k:]) < np.mean(res.losses[:k])  # the loss goes down
    assert (d.run / "checkpoints").is_dir() and any((d.run / "checkpoints").glob("ckpt_*.pt"))
    rr = d.results["render"]
    pngs = [p for p in rr.files if p.suffix == ".png"]
    gifs = [p for p in rr.files if p.suffix == ".gif"]
    assert pngs and gifs
    for p in pngs + gifs:
        with Image.open(p) as im:
            im.load()
            assert im.size[0] > 0 and im.size[1] > 0
    info = json.loads((tmp_path / "demo" / "render" / "render.json").read_text())
    assert info["iteration"] == 24
    for step in ("[generate]", "[fetch]", "[repack]", "[split]", "[train]", "[render]"):
        assert any(line.startswith(step) for line in lines), step

    # a second run redoes nothing: bucket reused, every object present, every repack task skipped,
    # training already at its last iteration
    lines.clear()
    d2 = demo_mod.run_demo(tmp_path / "demo", workers=2, echo=lines.append)
    assert any("reusing synthetic bucket" in line for line in lines)
    assert d2.results["fetch"].downloaded == 0
    assert d2.results["repack"].tasks_run == 0
    assert d2.results["train"].losses == [] and d2.results["train"].iteration == 24
