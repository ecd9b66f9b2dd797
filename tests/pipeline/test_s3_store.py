"""Every stage on a store at an ``s3://`` URL (the session's local S3 server on loopback, endpoint and
credentials from the standard AWS_* environment variables): repack -> split -> train -> render -> info give
what the same stages give on a local store (split files byte-identical, losses identical, renders equal), the
loader reads the S3 store with at most one GET per chunk, and xarray opens a capture over S3 without warnings."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ava256.cli import cli
from ava256.manifests.splits import SPLITS_DIR
from ava256.store import layout as L
from ava256.store import urls

BUCKET = "ava256-s3-stores"
TRAIN_ARGS = [
    "--config",
    "tiny",
    "--train.iters=4",
    "--train.ckpt_every=100",
    "--train.val_every=100",
    "--train.image_every=100",
    "--data.val_batches=1",
    "--data.num_workers=2",  # a ThreadLoader: batches read through read_chunks
    "--model.voxels=2",
]


@dataclass(frozen=True)
class Stores:
    local: Path
    url: str
    captures: list[str]


def _clear_s3fs_cache() -> None:
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # instances made under another endpoint must not be reused


@pytest.fixture(scope="module")
def s3_stores(local_s3, small_store, tmp_path_factory):
    """The session's ``small_store`` raw tree repacked into ``s3://BUCKET/store`` (same options as
    ``small_store``'s repack), beside a copy of ``small_store`` without its split (the local store), with the
    AWS_* environment pointing at the local S3 server for the module's tests."""
    from ava256.pipeline.repack import repack

    local = tmp_path_factory.mktemp("s3-store") / "store"
    shutil.copytree(
        small_store.store, local, ignore=lambda d, _: [SPLITS_DIR] if Path(d) == small_store.store else []
    )
    client = local_s3.client()
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    env = {
        "AWS_ENDPOINT_URL": local_s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        _clear_s3fs_cache()
        url = f"s3://{BUCKET}/store"
        repack(small_store.raw, url, downsample=small_store.downsample, workers=1, processes=False,
               progress=False)  # fmt: skip
        yield Stores(local, url, small_store.captures)
    _clear_s3fs_cache()


def _files(store: str | Path, prefix: str) -> dict[str, bytes]:
    fs, root = urls.filesystem(urls.join(store, prefix))
    root = root.rstrip("/")
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in sorted(fs.find(root))}


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/total"] for r in rows if "loss/total" in r]


def test_every_stage_on_an_s3_store_equals_the_local_store(s3_stores, tmp_path):
    run = CliRunner().invoke
    local, url = str(s3_stores.local), s3_stores.url
    assert L.list_capture_stores(url) == L.list_capture_stores(local) == sorted(s3_stores.captures)

    for store in (local, url):
        r = run(cli, ["split", store, "--protocol", "free-face"])
        assert r.exit_code == 0, r.output
        assert f"ava256 train {store} --split free-face" in r.output
    split_local, split_s3 = _files(local, "_splits"), _files(url, "_splits")
    assert set(split_s3) == {
        f"free-face/{n}" for n in ("train.parquet", "val.parquet", "test.parquet", "split.json")
    }
    assert split_s3 == split_local  # byte for byte

    for store, out in ((local, tmp_path / "run-local"), (url, tmp_path / "run-s3")):
        r = run(
            cli, ["train", store, "--split", "free-face", "--out", str(out), "--no-progress", *TRAIN_ARGS]
        )
        assert r.exit_code == 0, r.output
    losses = _losses(tmp_path / "run-s3")
    assert len(losses) == 4 and losses == _losses(tmp_path / "run-local")

    for store, out in ((local, tmp_path / "render-local"), (url, tmp_path / "render-s3")):
        r = run(cli, ["render", str(tmp_path / "run-s3"), store, "--out", str(out), "--frames", "2"])
        assert r.exit_code == 0, r.output
    pngs = sorted(p.name for p in (tmp_path / "render-s3").glob("*.png"))
    assert pngs and pngs == sorted(p.name for p in (tmp_path / "render-local").glob("*.png"))
    for name in pngs:
        assert (tmp_path / "render-s3" / name).read_bytes() == (tmp_path / "render-local" / name).read_bytes()
    summary = json.loads((tmp_path / "render-s3" / "render.json").read_text())
    ref = json.loads((tmp_path / "render-local" / "render.json").read_text())
    assert summary["recon_psnr_db"] == ref["recon_psnr_db"] and summary["files"] == ref["files"]

    infos = []
    for store in (local, url):
        r = run(cli, ["info", store, "--json"])
        assert r.exit_code == 0, r.output
        infos.append(json.loads(r.output))
    assert infos[1]["store"] == url and infos[1]["tasks_failed"] == 0
    assert infos[1]["captures"] == infos[0]["captures"] and len(infos[1]["captures"]) == 2


def test_a_missing_s3_store_is_one_line_and_exit_2(s3_stores, tmp_path):
    missing = f"s3://{BUCKET}/no-such-store"
    for args in (
        ["split", missing, "--protocol", "free-face"],
        ["train", missing, "--split", "free-face", "--config", "tiny", "--out", str(tmp_path / "run")],
        ["info", missing],
        ["split", "s3://no-such-bucket-ava256/store", "--protocol", "free-face"],
    ):
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "store s3://" in lines[0] and "Traceback" not in r.output, r.output
    assert not (tmp_path / "run").exists()
    # a store without the split: the error names the split and the ones that exist
    r = CliRunner().invoke(cli, ["train", s3_stores.url, "--split", "nope", "--config", "tiny",
                                 "--out", str(tmp_path / "x")])  # fmt: skip
    assert r.exit_code == 1 and "'nope'" in r.output and "Traceback" not in r.output


def test_the_loader_reads_an_s3_store_with_at_most_one_get_per_chunk(s3_stores, local_s3):
    """Counted at the server: a warm batch costs at most one GET per chunk (4 per sample), its samples equal
    the local store's, and the shard indexes are read once (cold) then cached; zarr's own reads cost 8."""
    from ava256.data import ZarrSampleDataset
    from ava256.pipeline.split import read_samples

    df = read_samples(s3_stores.local)
    kw = dict(downsample=2, normalize=False)
    remote, local = ZarrSampleDataset(s3_stores.url, df, **kw), ZarrSampleDataset(s3_stores.local, df, **kw)
    batches = [list(range(0, 16, 4)), list(range(1, len(remote), 7))[:8], list(range(2, len(remote), 5))[:8]]
    remote.__getitems__(batches[0])  # opens the captures (metadata reads)
    local_s3.faults.clear()
    for b in batches[1:]:
        got, want = remote.__getitems__(b), local.__getitems__(b)
        for g, w in zip(got, want):
            for k in ("image", "tex", "verts", "camrot", "campos"):
                np.testing.assert_array_equal(g[k].numpy(), w[k].numpy(), err_msg=k)
    gets = [r for r in local_s3.faults.requests if r.method == "GET" and "/c/" in r.path]
    n = sum(len(b) for b in batches[1:])
    assert gets and all(r.range for r in gets)  # ranged reads only, no whole shard
    assert len(gets) <= 4 * n + len({r.path for r in gets}), len(gets)  # chunks + at most one index per shard
    assert all(remote.uses_fast_reads(cap) for cap in s3_stores.captures)

    def tally(key: str) -> int:
        return sum(c[key] for c in remote.read_counts().values())

    warm0, idx0 = tally("requests"), tally("index_reads")
    local_s3.faults.clear()
    for b in batches[1:]:  # again: every index cached, chunk GETs only
        remote.__getitems__(b)
    gets = [r for r in local_s3.faults.requests if r.method == "GET" and "/c/" in r.path]
    assert tally("index_reads") == idx0
    assert len(gets) == tally("requests") - warm0 <= 4 * n
    assert all(not r.range.startswith("bytes=-") for r in gets)  # no suffix (index) reads

    # zarr's own reads of the same batches (fast_reads=False) re-read a shard index before every chunk
    slow = ZarrSampleDataset(s3_stores.url, df, fast_reads=False, **kw)
    slow.__getitems__(batches[0])
    local_s3.faults.clear()
    for b in batches[1:]:
        slow.__getitems__(b)
    zarr_gets = [r for r in local_s3.faults.requests if r.method == "GET" and "/c/" in r.path]
    assert len(zarr_gets) == 8 * n > len(gets), (len(zarr_gets), len(gets))


def test_xarray_opens_a_capture_over_s3_without_warnings(s3_stores):
    """As docs/store-format.md shows it: ``consolidated=False`` (repack writes no consolidated metadata)."""
    xr = pytest.importorskip("xarray")
    cap = s3_stores.captures[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(f"{s3_stores.url}/{cap}.zarr", consolidated=False, chunks=None)
        cams = xr.open_zarr(
            f"{s3_stores.url}/{cap}.zarr", group="calibration", consolidated=False, chunks=None
        )
        img = ds["image"].isel(frame=3, camera=1).values
    ref = xr.open_zarr(f"{s3_stores.local}/{cap}.zarr", consolidated=False, chunks=None)
    np.testing.assert_array_equal(img, ref["image"].isel(frame=3, camera=1).values)
    assert list(ds["camera"].values) == list(ref["camera"].values) and cams["intrinsics"].shape[0] == 3


def test_a_bad_chunk_on_s3_skips_only_its_sample(s3_stores):
    """A flipped byte in one image chunk of the S3 store: the batch read falls back to sample-by-sample reads
    and hands back that one sample as a BadSample naming its chunk, the others as on the local store."""
    import zarr

    from ava256.data import ZarrSampleDataset
    from ava256.data.dataset import BadSample
    from ava256.manifests.samples import SAMPLES_MANIFEST, read_samples

    rows = read_samples(s3_stores.local / L.MANIFESTS_DIR / SAMPLES_MANIFEST)
    local = ZarrSampleDataset(s3_stores.local, rows, normalize=False)
    cap, frame, cam = local.sample_key(0)
    assert frame % zarr.open_group(s3_stores.local / f"{cap}.zarr", mode="r")[L.IMAGE].shards[0] == 0
    fs, path = urls.filesystem(f"{s3_stores.url}/{cap}.zarr/{L.IMAGE}/c/0/{cam}/0/0/0")
    original = fs.cat_file(path)
    damaged = bytearray(original)
    damaged[10] ^= 0xFF  # inside the shard's first chunk: frame 0 of that camera
    fs.pipe_file(path, bytes(damaged))
    try:
        remote = ZarrSampleDataset(s3_stores.url, rows, normalize=False, stats=local.stats)
        got, want = remote.__getitems__([0, 1, 2, 3]), local.__getitems__([0, 1, 2, 3])
        assert isinstance(got[0], BadSample) and got[0].array == L.IMAGE and got[0].chunk[:2] == (frame, cam)
        for g, w in zip(got[1:], want[1:]):
            assert not isinstance(g, BadSample)
            assert all(bool((g[k] == w[k]).all()) for k in ("image", "tex", "verts"))
    finally:
        fs.pipe_file(path, original)
