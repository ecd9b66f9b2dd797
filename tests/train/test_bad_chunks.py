"""Training with a damaged store: one corrupt chunk skips its sample (logged with where it is, counted in
metrics.jsonl) and training goes on; a damaged shard index past the configured share of bad samples stops
training with an error that names ``ava256 verify``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import zarr
from click.testing import CliRunner

from ava256.cli import cli
from ava256.data import ResumableSampler, collate_samples
from ava256.data.dataset import BadSample
from ava256.manifests.splits import read_split_part
from ava256.store import layout as L
from ava256.store.chunks import chunk_format
from ava256.train.config import load_config
from ava256.train.data import open_datasets

TRAIN_ARGS = ["--config", "tiny", "--model.voxels=2", "--train.ckpt_every=0", "--train.val_every=0",
              "--train.image_every=0", "--data.val_batches=1"]  # fmt: skip


def _copy(small_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(small_store.store, store)
    train = read_split_part(store, small_store.split, "train")
    cap, cam = str(train["capture"].iloc[0]), str(train["camera_id"].iloc[0])
    g = zarr.open_group(L.capture_store_path(store, cap), mode="r")
    ci = list(g.attrs[L.ATTR_CAMERA_IDS]).index(cam)
    shard = store / f"{cap}{L.STORE_SUFFIX}" / "image" / "c" / "0" / str(ci) / "0" / "0" / "0"
    return store, train, cap, cam, ci, chunk_format(g[L.IMAGE]), shard


def _flip(path, offset):
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


def test_one_corrupt_chunk_skips_its_sample_and_training_goes_on(small_store, tmp_path, caplog):
    store = tmp_path / "store"
    shutil.copytree(small_store.store, store)
    cfg = load_config("tiny")
    ds, _, _ = open_datasets(store, small_store.split, cfg["data"])
    first = next(iter(ResumableSampler(len(ds), seed=int(cfg["train"]["seed"]))))  # the run's first sample
    cap, f, ci = ds.sample_key(first)
    g = zarr.open_group(L.capture_store_path(store, cap), mode="r")
    fmt = chunk_format(g[L.IMAGE])
    shard = (
        store / f"{cap}{L.STORE_SUFFIX}" / "image" / "c" / str(f // fmt.shard_shape[0]) / str(ci) / "0/0/0"
    )
    index = fmt.parse_index(shard.read_bytes()[-fmt.index_nbytes :], str(shard))
    _flip(shard, int(index[f % fmt.shard_shape[0], 0]) + 3)  # inside that chunk: its crc32c no longer matches

    batch = collate_samples(ds.__getitems__([first, (first + 1) % len(ds)]))
    (bad,) = batch["bad_samples"]
    assert isinstance(bad, BadSample) and bad.array == L.IMAGE and bad.chunk == (f, ci, 0, 0, 0)
    assert batch["image"].shape[0] == 1  # the other sample is there
    assert "checksum" in bad.reason and f"capture {cap} array image chunk {f},{ci},0,0,0" in caplog.text

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(store), "--split", small_store.split, "--out", str(out),
                                 *TRAIN_ARGS, "--train.iters=3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "data/bad_samples" in r]
    assert [r["iter"] for r in rows] == [1, 2, 3]
    assert rows[0]["data/bad_samples"] == 1 and rows[-1]["data/bad_samples_total"] == 1


def test_a_damaged_shard_index_past_the_limit_stops_training_naming_verify(small_store, tmp_path):
    store, train, cap, cam, ci, fmt, shard = _copy(small_store, tmp_path)
    _flip(shard, shard.stat().st_size - 10)  # every frame of that camera is unreadable
    n_bad = int(((train["capture"] == cap) & (train["camera_id"] == cam)).sum())
    assert n_bad >= 2
    cmd = [sys.executable, "-m", "ava256.cli", "train", str(store), "--split", small_store.split, "--out",
           str(tmp_path / "run"), *TRAIN_ARGS, f"--train.iters={4 * len(train)}", "--data.bad_sample_window=10",
           "--data.bad_sample_limit=0.1", "--no-progress"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("Error:")]
    assert "could not be read" in line and "`ava256 verify" in line and f"capture {cap} array image" in line
    assert "shard index checksum mismatch" in line
    assert np.isfinite(float(line.split(" of the last ")[0].split()[-1]))
