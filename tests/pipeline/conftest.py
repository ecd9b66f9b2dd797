"""Fixtures for the fetch tests: a tiny bucket-shaped tree (random bytes under the real key layout, a real
calibration JSON) uploaded once per session to a real S3 server on loopback (moto server mode)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ava256.capture import (
    ASSETS,
    CALIBRATION_KEY,
    TEXTURE_KEY,
    CaptureId,
    capture_keys,
    release_capture_ids,
)
from ava256.formats.calibration import Calibration, write_calibration
from ava256.synth.server import LOCAL_BUCKET, LocalS3Server, upload_tree

TINY_CAMERAS = ["400940", "401031", "401164"]
BIG_OBJECT_BYTES = 6 * 1024 * 1024 + 12345  # uploaded in 2 parts -> a multipart ETag
MULTIPART_THRESHOLD = 5 * 1024 * 1024


def tiny_calibration(camera_ids: list[str]) -> bytes:
    c = len(camera_ids)
    k = np.tile(np.array([[5000.0, 0, 1334], [0, 5000.0, 2048], [0, 0, 1]]), (c, 1, 1))
    rt = np.tile(np.hstack([np.eye(3), [[0.0], [0.0], [1000.0]]]), (c, 1, 1))
    return write_calibration(Calibration(list(camera_ids), k, rt, np.zeros((c, 4))))


def write_tiny_capture(root: Path, capture: CaptureId, cameras: list[str], seed: int, folder: str | None = None,
                       big: bool = False) -> dict[str, bytes]:  # fmt: skip
    """Write every catalog key of ``capture`` under ``root/folder`` (random bytes, 1-40 KB each; the uv texture
    zip is BIG_OBJECT_BYTES when ``big``). Returns {key: content}."""
    rng = np.random.default_rng(seed)
    base = root / (folder or capture.folder)
    contents = {}
    for key in capture_keys(ASSETS, cameras):
        if key == CALIBRATION_KEY:
            data = tiny_calibration(cameras)
        elif key == TEXTURE_KEY and big:
            data = rng.bytes(BIG_OBJECT_BYTES)
        else:
            data = rng.bytes(int(rng.integers(1_000, 40_000)))
        path = base / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        contents[key] = data
    return contents


@dataclass
class TinyBucket:
    root: Path  # bucket root on disk: root/ava-256/4TB/<folder>/...
    endpoint_url: str
    server: LocalS3Server
    captures: list[CaptureId]
    cameras: list[str]
    contents: dict[str, dict[str, bytes]]  # capture folder -> key -> bytes

    source = f"s3://{LOCAL_BUCKET}/ava-256"
    big_bytes = BIG_OBJECT_BYTES

    def kwargs(self, **kw) -> dict:
        """Common ``fetch`` arguments for this bucket (fast retries, no progress bar)."""
        base = dict(
            size="4TB",
            captures=[c.folder for c in self.captures],
            source=self.source,
            endpoint_url=self.endpoint_url,
            progress=False,
            retry_base_delay=0.01,
        )
        base.update(kw)
        return base


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
