"""Fixtures of the pipeline tests. For fetch: a tiny bucket-shaped tree (``helpers.s3_data``) uploaded once per
session to a real S3 server on loopback (moto server mode); random bytes, not the shared synthetic bucket:
fetch compares bytes and needs a multipart object and the datasheet folder spelling. For repack: one
``repack_data`` capture (random content, datasheet segmentation names) that the selection and codec tests
share."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.s3_data import MULTIPART_THRESHOLD, TINY_CAMERAS, TinyBucket, write_tiny_capture
from repack_data import write_capture

from ava256.capture import release_capture_ids
from ava256.synth.server import LOCAL_BUCKET, LocalS3Server, upload_tree


@pytest.fixture(scope="session")
def local_s3():
    with LocalS3Server() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_bucket(local_s3, tmp_path_factory) -> TinyBucket:
    """Two captures of the release list, three cameras each; the second uses the datasheet folder spelling
    (``m--…--GHS``) in the bucket; the first has one multipart object (uv texture zip, ~6 MB)."""
    root = tmp_path_factory.mktemp("tiny-bucket")
    size_root = root / "ava-256" / "4TB"
    caps = list(release_capture_ids()[:2])
    contents = {
        caps[0].folder: write_tiny_capture(size_root, caps[0], TINY_CAMERAS, seed=0, big=True),
        caps[1].folder: write_tiny_capture(
            size_root, caps[1], TINY_CAMERAS, seed=1, folder=caps[1].datasheet_folder
        ),
    }
    upload_tree(local_s3.endpoint_url, LOCAL_BUCKET, root, multipart_threshold=MULTIPART_THRESHOLD,
                multipart_chunksize=MULTIPART_THRESHOLD)  # fmt: skip
    return TinyBucket(root, local_s3.endpoint_url, local_s3, caps, TINY_CAMERAS, contents)


@pytest.fixture
def faults(local_s3):
    """The session server's fault injector, cleared before and after the test."""
    local_s3.faults.clear()
    yield local_s3.faults
    local_s3.faults.clear()


@pytest.fixture(scope="session")
def one_capture_raw(tmp_path_factory) -> Path:
    """A raw tree holding one ``repack_data`` capture (the first of the release list, seed 0), read-only:
    test_repack_select and test_repack_jpeg repack it (test_repack damages its captures, so it writes its own)."""
    raw = tmp_path_factory.mktemp("one-capture-raw")
    write_capture(raw, release_capture_ids()[0], seed=0)
    return raw
