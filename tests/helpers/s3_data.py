"""Byte-exact bucket-shaped trees for the fetch tests: random bytes under the real key layout (a real
calibration JSON), so a fetched file can be compared byte for byte with what was uploaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ava256.capture import ASSETS, CALIBRATION_KEY, TEXTURE_KEY, CaptureId, capture_keys
from ava256.formats.calibration import Calibration, write_calibration
from ava256.synth.server import LOCAL_BUCKET, LocalS3Server

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
