"""Shared fixtures. Session-scoped fixtures build real small data once (the synthetic buckets and store of
``helpers.synth_data``, the in-memory samples of ``helpers.sample_data``, a threaded Dask client); they are
read-only: a test that damages data copies it
to its ``tmp_path`` first. Stage-specific fixtures live beside their tests."""

from __future__ import annotations

import pytest
from helpers.synth_data import SMALL, SynthBucket, SynthStore, build_bucket, build_store

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch missing or broken
    HAS_CUDA = False


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def dask_threads():
    """One threaded LocalCluster client for the whole session, shared by the fetch, repack and reliability
    tests (a real scheduler, no per-test start-up)."""
    from ava256.pipeline.cluster import dask_client

    with dask_client(4) as client:
        yield client


@pytest.fixture(scope="session")
def synth_bucket(tmp_path_factory) -> SynthBucket:
    """The shared drop-free synthetic bucket (2 captures x 4 cameras x 12 frames, 64 x 96 images)."""
    return build_bucket(tmp_path_factory.mktemp("synth-bucket"))


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> SynthStore:
    """The real chain at toy size, shared by the train suite and ``pipeline/test_s3_store.py``: a synthetic
    bucket (``helpers.synth_data.SMALL``: 2 captures x 3 cameras x 12 frames, 48 x 64 images, the four assets
    a sample reads) -> repack (real Dask + Zarr, downsample 2 -> 24 x 32) -> free-face split. Smaller than
    ``synth_bucket`` so that training on it is fast; test_train checks render sizes against it."""
    root = tmp_path_factory.mktemp("small")
    return build_store(build_bucket(root / "bucket", **SMALL), root / "store")


@pytest.fixture(scope="session")
def fake_datasets():
    """(train, val, info): 20 + 4 in-memory contract samples (2 identities x 3 cameras x 4 frames, 32 x 24
    images) for the model and train tests."""
    from helpers.sample_data import fake_samples

    from ava256.train.data import InMemoryDataset

    samples, info = fake_samples()
    return InMemoryDataset(samples[:20]), InMemoryDataset(samples[20:]), info
