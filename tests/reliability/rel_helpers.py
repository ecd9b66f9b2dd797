"""Helpers of the reliability suite (imported by its conftest and tests): a tiny chaos bucket description,
tiny format-exact raw captures, the CLI in subprocesses, and content digests of stores and raw trees."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from helpers.s3_data import tiny_calibration as calibration_bytes  # noqa: F401 - used by the suite

from ava256.capture import TEXTURE_KEY, CaptureId
from ava256.synth.server import LOCAL_BUCKET

CAMERAS = ["400940", "401031"]
BIG_BYTES = 6 * 1024 * 1024 + 4321  # > the 5 MiB multipart threshold: a multipart ETag ("…-2")
MULTIPART = 5 * 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ChaosBucket:
    server: object  # ChaosS3Server
    capture: CaptureId
    contents: dict[str, bytes]  # key (relative to the capture folder) -> bytes
    big_key: str = TEXTURE_KEY  # the one multipart object
    source: str = f"s3://{LOCAL_BUCKET}/ava-256"

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def kwargs(self, **kw) -> dict:
        base = dict(
            size="4TB",
            captures=[self.capture.folder],
            source=self.source,
            endpoint_url=self.endpoint_url,
            progress=False,
            retry_base_delay=0.01,
            retries=4,
        )
        base.update(kw)
        return base


def write_raw_captures(
    root: Path, n: int = 2, cameras: int = 3, frames: int = 12, seed: int = 0, drop_rate: float = 0.03
) -> list[str]:
    """Tiny format-exact captures (``ava256.synth.generate``: real AVIF/PNG/PLY/npy in stored zips, a few
    dropped frames) directly under ``root`` (a raw tree); returns their folders."""
    from ava256.capture import release_capture_ids
    from ava256.synth.generate import generate_capture

    out = []
    for i, cap in enumerate(release_capture_ids()[:n]):
        generate_capture(root, cap, cameras=cameras, frames=frames, seed=seed + i, image_size=(40, 64),
                         texture_size=16, drop_rate=drop_rate)  # fmt: skip
        out.append(cap.folder)
    return out


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ava256.cli", *map(str, args)]


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The CLI in its own process group (so a kill takes its Dask workers too)."""
    return subprocess.Popen(cli_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})})  # fmt: skip


def kill9(proc: subprocess.Popen) -> bool:
    """SIGKILL the process group of ``proc``; True if it was still running."""
    alive = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    # worker processes of a LocalCluster are in the group too; give the kernel a moment to reap them
    time.sleep(0.1)
    return alive


def store_digest(store: Path | str) -> dict[str, str]:
    """sha256 of every array's full content and of each capture group's attrs, for every capture store under
    ``store`` (a local folder or an fsspec URL): equal digests = no lost, duplicated or corrupted frame."""
    import fsspec

    from ava256.store import layout as L

    fs, root = fsspec.core.url_to_fs(str(store))
    names = sorted(
        p.rstrip("/").rsplit("/", 1)[-1][: -len(L.STORE_SUFFIX)]
        for p in fs.ls(root, detail=False)
        if p.rstrip("/").endswith(L.STORE_SUFFIX)
    )
    out: dict[str, str] = {}
    for folder in names:
        g = L.open_capture_group(L.capture_store_path(str(store), folder), mode="r")
        out[f"{folder}/.attrs"] = sha256(json.dumps(dict(g.attrs), sort_keys=True, default=str).encode())
        for name, arr in g.arrays():
            out[f"{folder}/{name}"] = array_digest(arr)
        for gname, sub in g.groups():
            for name, arr in sub.arrays():
                out[f"{folder}/{gname}/{name}"] = array_digest(arr)
    return out


def array_digest(arr) -> str:
    a = np.ascontiguousarray(arr[...])
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except manifests and partial downloads."""
    return {
        p.relative_to(root).as_posix(): sha256(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_manifests" not in p.parts and not p.name.endswith((".part", ".etag", ".tmp"))
    }


def count_files(store, since: float = 0.0) -> int:
    """Files under ``store`` (written at or after ``since``, a time.time())."""
    n = 0
    for dirpath, _dirs, files in os.walk(store):  # tolerant of folders vanishing (a group being recreated)
        for name in files:
            try:
                n += os.stat(os.path.join(dirpath, name)).st_mtime >= since
            except FileNotFoundError:
                pass
    return n


def assert_same_store(store, clean) -> None:
    """``store`` equals ``clean``: every array and attrs (content hashes), samples and repack manifests."""
    import pandas as pd

    from ava256.manifests.repack import read_repack_manifest
    from ava256.manifests.samples import read_samples
    from ava256.store import layout as L

    got, want = store_digest(store), store_digest(clean)
    assert set(got) == set(want), set(got) ^ set(want)
    bad = sorted(k for k in want if got[k] != want[k])
    assert not bad, f"arrays differ from the clean run: {bad}"
    cols = ["capture", "frame_index", "camera_index", "frame_id", "segment", "valid", "valid_image"]
    a = read_samples(L.manifests_path(store, "samples.parquet"))[cols].reset_index(drop=True)
    b = read_samples(L.manifests_path(clean, "samples.parquet"))[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    m = read_repack_manifest(L.manifests_path(store, "repack.parquet"))
    assert m["task_id"].is_unique and (m["status"] == "done").all()
    ref = read_repack_manifest(L.manifests_path(clean, "repack.parquet"))
    assert sorted(m["task_id"]) == sorted(ref["task_id"])
    cmp = ["task_id", "n_frames", "n_valid", "n_missing", "n_corrupt"]
    pd.testing.assert_frame_equal(
        m[cmp].sort_values("task_id").reset_index(drop=True),
        ref[cmp].sort_values("task_id").reset_index(drop=True),
    )
