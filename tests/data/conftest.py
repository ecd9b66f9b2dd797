"""A tiny real pipeline for the loader tests, built once per session: synthetic format-exact captures (raw
tree) -> ``repack`` (real Dask, real Zarr) -> ``split``. Its own bucket, not the shared ``synth_bucket``: the
loader tests need dropped frames (invalid samples), which the drop-free shared bucket has none of."""

from __future__ import annotations

import pytest
from helpers.synth_data import SynthStore, build_bucket, build_store


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> SynthStore:
    root = tmp_path_factory.mktemp("loader")
    bucket = build_bucket(root / "bucket", seed=1, drop_rate=0.05)  # the shared shape, some dropped frames
    return build_store(bucket, root / "store")
