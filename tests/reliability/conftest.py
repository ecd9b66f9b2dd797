"""Fixtures of the reliability suite: a chaos S3 server on loopback (moto server mode behind
``ava256.synth.faults.ChaosInjector``) holding a tiny bucket, a shared threaded Dask client, helpers to run the
CLI in subprocesses and to hash stores."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ava256.capture import ASSETS, CALIBRATION_KEY, TEXTURE_KEY, CaptureId, capture_keys, release_capture_ids
from ava256.formats.calibration import Calibration, write_calibration
from ava256.synth.faults import ChaosS3Server
from ava256.synth.server import LOCAL_BUCKET, upload_tree

CAMERAS = ["400940", "401031"]
BIG_BYTES = 6 * 1024 * 1024 + 4321  # > the 5 MiB multipart threshold below: a multipart ETag ("…-2")
MULTIPART = 5 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def calibration_bytes(camera_ids: list[str]) -> bytes:
    c = len(camera_ids)
    k = np.tile(np.array([[5000.0, 0, 1334], [0, 5000.0, 2048], [0, 0, 1]]), (c, 1, 1))
    rt = np.tile(np.hstack([np.eye(3), [[0.0], [0.0], [1000.0]]]), (c, 1, 1))
    return write_calibration(Calibration(list(camera_ids), k, rt, np.zeros((c, 4))))


@dataclass
class ChaosBucket:
    server: ChaosS3Server
    capture: CaptureId
    contents: dict[str, bytes]  # key (relative to the capture folder) -> bytes
    big_key: str = TEXTURE_KEY  # the one multipart object

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def kwargs(self, **kw) -> dict:
        base = dict(
            size="4TB",
            captures=[self.capture.folder],
            source=f"s3://{LOCAL_BUCKET}/ava-256",
            endpoint_url=self.endpoint_url,
            progress=False,
            retry_base_delay=0.01,
            retries=4,
        )
        base.update(kw)
        return base


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
def threads_client():
    from ava256.pipeline.cluster import dask_client

    with dask_client(4) as client:
        yield client


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ava256.cli", *args]


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def store_digest(store: Path | str, fs=None) -> dict[str, str]:
    """sha256 of every array's full content (and of each group's attrs minus run-dependent keys) of every capture
    store under ``store``: equal digests = no lost, duplicated or corrupted frame."""
    import json

    import zarr

    from ava256.store import layout as L

    out: dict[str, str] = {}
    names = (
        L.list_capture_stores(store)
        if fs is None
        else sorted(
            p.rsplit("/", 1)[-1][: -len(L.STORE_SUFFIX)]
            for p in fs.ls(str(store))
            if p.endswith(L.STORE_SUFFIX)
        )
    )
    for folder in names:
        g = L.open_capture_group(L.capture_store_path(store, folder), mode="r")
        attrs = {k: v for k, v in dict(g.attrs).items()}
        out[f"{folder}/.attrs"] = sha256(json.dumps(attrs, sort_keys=True, default=str).encode())
        for name, arr in g.arrays():
            out[f"{folder}/{name}"] = _array_digest(arr)
        for gname, sub in g.groups():
            for name, arr in sub.arrays():
                out[f"{folder}/{gname}/{name}"] = _array_digest(arr)
    assert all(isinstance(v, str) for v in out.values())
    _ = zarr  # imported for its side effects on codecs
    return out


def _array_digest(arr) -> str:
    a = np.ascontiguousarray(arr[...])
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()
