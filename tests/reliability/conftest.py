"""Fixtures of the reliability suite: a chaos S3 server on loopback (moto server mode behind
``ava256.synth.faults.ChaosInjector``) holding a tiny bucket, and the clean repack that the crash tests
compare with (the shared threaded Dask client is ``tests/conftest.py``'s ``dask_threads``)."""

from __future__ import annotations

import numpy as np
import pytest
from rel_helpers import (
    BIG_BYTES,
    CAMERAS,
    MULTIPART,
    ChaosBucket,
    calibration_bytes,
    count_files,
    write_raw_captures,
)

from ava256.capture import ASSETS, CALIBRATION_KEY, TEXTURE_KEY, capture_keys, release_capture_ids
from ava256.synth.faults import ChaosS3Server
from ava256.synth.server import LOCAL_BUCKET, upload_tree


@pytest.fixture(scope="session")
def chaos_server():
    with ChaosS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def chaos_bucket(chaos_server, tmp_path_factory) -> ChaosBucket:
    """One capture of the release list, two cameras, random bytes under every catalog key (a real calibration
    JSON); the uv texture zip is the one multipart object."""
    root = tmp_path_factory.mktemp("chaos-bucket")
    cap = release_capture_ids()[3]
    rng = np.random.default_rng(7)
    contents = {}
    for key in capture_keys(ASSETS, CAMERAS):
        if key == CALIBRATION_KEY:
            data = calibration_bytes(CAMERAS)
        elif key == TEXTURE_KEY:
            data = rng.bytes(BIG_BYTES)
        else:
            data = rng.bytes(int(rng.integers(2_000, 30_000)))
        p = root / "ava-256" / "4TB" / cap.folder / key
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        contents[key] = data
    upload_tree(chaos_server.endpoint_url, LOCAL_BUCKET, root, multipart_threshold=MULTIPART,
                multipart_chunksize=MULTIPART)  # fmt: skip
    return ChaosBucket(chaos_server, cap, contents)


@pytest.fixture
def chaos(chaos_server):
    """The chaos server's injector, cleared before and after the test."""
    chaos_server.faults.clear()
    yield chaos_server.faults
    chaos_server.faults.clear()


@pytest.fixture(scope="session")
def raw_tree(tmp_path_factory):
    """Two tiny captures with every asset and a few dropped frames (``rel_helpers.write_raw_captures``).
    Its own tree, not ``small_store``'s: a crashed repack must reproduce every array and valid mask."""
    raw = tmp_path_factory.mktemp("crash-raw")
    write_raw_captures(raw, n=2, cameras=3, frames=12)
    return raw


@pytest.fixture(scope="session")
def clean_store(raw_tree, tmp_path_factory, dask_threads):
    """A clean, uninterrupted repack (same options as the CLI's defaults) and its number of store files."""
    from ava256.pipeline.repack import repack

    store = tmp_path_factory.mktemp("clean") / "store"
    summary = repack(raw_tree, store, client=dask_threads, progress=False)
    assert summary.tasks_failed == 0 and not summary.failed_captures
    return store, count_files(store)
