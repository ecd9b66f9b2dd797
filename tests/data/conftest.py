"""A tiny real pipeline for the loader tests, built once per session: synthetic format-exact captures (raw
tree) -> ``repack`` (real Dask, real Zarr) -> ``split``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from ava256.pipeline.split import run_split

DOWNSAMPLE = 2


@dataclass(frozen=True)
class TinyData:
    raw: Path  # raw tree root: capture folders directly under it
    store: Path  # repacked store root
    captures: list[str]
    downsample: int


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    from ava256.pipeline.repack import repack
    from ava256.synth.generate import generate_bucket

    root = tmp_path_factory.mktemp("loader")
    caps = generate_bucket(
        root / "bucket",
        captures=2,
        cameras=4,
        frames=12,
        image_size=(64, 96),  # (W, H) of the raw images; stored at 32 x 48
        texture_size=64,
        seed=1,
        drop_rate=0.05,  # some dropped frames -> invalid samples
    )
    raw = root / "bucket" / "ava-256" / "4TB"
    store = root / "store"
    repack(raw, store, downsample=DOWNSAMPLE, workers=1, processes=False, progress=False)
    run_split(store, "free-face")
    return TinyData(raw, store, [c.folder for c in caps], DOWNSAMPLE)
