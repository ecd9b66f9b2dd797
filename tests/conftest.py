"""Shared fixtures. Session-scoped fixtures build real small data once (a synthetic bucket, a local S3
server); stage-specific fixtures live beside their tests."""

from __future__ import annotations

import pytest

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
