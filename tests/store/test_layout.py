"""The store layout (names, shapes, chunk/shard policy, intrinsics scaling, resampling) and the repack /
samples manifests: pure functions on real Zarr / Parquet files."""

from __future__ import annotations

import os
from datetime import UTC

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

from ava256.capture import ENCODER_CAMERAS, SENSOR_HEIGHT, SENSOR_WIDTH
from ava256.manifests import repack as rm
from ava256.manifests import samples as sm
from ava256.store import layout as L
from ava256.store.resample import resize_labels, resize_rgb

GEOM = L.CaptureGeometry(
    n_frames=10,
    camera_ids=("a", "b", "c"),
    image_hw=(64, 96),
    texture_size=16,
    n_vertices=7306,
    n_encoder_frames=4,
    encoder_hw=(40, 40),
    assets=tuple(L.ASSET_ARRAYS),
)


def test_contract_shapes_dtypes_and_names():
    specs = L.array_specs(GEOM, max_frames_per_shard=4)
    expect = {
        "image": ((10, 3, 64, 96, 3), "uint8"),
        "segmentation": ((10, 3, 64, 96), "uint8"),
        "uv_texture": ((10, 16, 16, 3), "uint8"),
        "vertices": ((10, 7306, 3), "float32"),
        "keypoints_3d": ((10, 274, 5), "float32"),
        "head_pose": ((10, 3, 4), "float32"),
        "calibration/intrinsics": ((3, 3, 3), "float32"),
        "calibration/extrinsics": ((3, 3, 4), "float32"),
        "calibration/distortion": ((3, 4), "float32"),
        "frame": ((10,), "int64"),
        "camera": ((3,), "str"),
        "encoder_frame": ((4,), "int64"),
        "encoder_camera": ((5,), "str"),
        "encoder/image": ((4, 5, 40, 40), "uint8"),
        "stats/texture_mean": ((16, 16, 3), "float32"),
        "stats/vertex_mean": ((7306, 3), "float32"),
        "valid/image": ((10, 3), "bool"),
        "valid/segmentation": ((10, 3), "bool"),
        "valid/uv_texture": ((10,), "bool"),
        "valid/vertices": ((10,), "bool"),
        "valid/keypoints_3d": ((10,), "bool"),
        "valid/head_pose": ((10,), "bool"),
        "valid/encoder_image": ((4, 5), "bool"),
    }
    assert {k: (v.shape, v.dtype) for k, v in specs.items()} == expect
    img = specs[L.IMAGE]
    assert img.chunks == (1, 1, 64, 96, 3) and img.shards == (4, 1, 64, 96, 3)
    assert img.shard_ranges() == [(0, 4), (4, 8), (8, 10)]
    assert specs[L.valid_name("image")].chunks == (4, 3)  # masks chunked like their data's shards
    assert len(ENCODER_CAMERAS) == specs[L.ENCODER_IMAGE].shape[1]
    assert L.shard_key(img, 5, 2) == "image/c/1/2/0/0/0"
    assert L.shard_key(specs[L.VERTICES], 9) == "vertices/c/2/0/0"


def test_absent_assets_get_no_arrays():
    g = L.CaptureGeometry(n_frames=5, camera_ids=("a",), image_hw=(8, 8), assets=("image", "head_pose"))
    names = set(L.array_specs(g))
    assert L.IMAGE in names and L.HEAD_POSE in names and L.VERTICES not in names and L.UV_TEXTURE not in names


@given(st.integers(1, 50_000_000), st.integers(1, 20_000))
def test_shard_policy_bounds_memory(frame_nbytes, n_frames):
    s = L.frames_per_shard(frame_nbytes, n_frames)
    assert 1 <= s <= min(n_frames, L.MAX_FRAMES_PER_SHARD)
    assert s == 1 or s * frame_nbytes <= L.SHARD_TARGET_BYTES


def test_release_sizes_shard_policy():
    # 4TB images (1024 x 667): 32 frames (64 MiB) per shard; vertices 256 frames
    g = L.CaptureGeometry(
        5000, tuple("abc"), (1024, 667), 1024, 7306, 5000, (400, 400), tuple(L.ASSET_ARRAYS)
    )
    specs = L.array_specs(g)
    assert specs[L.IMAGE].frames_per_shard == 32
    assert specs[L.VERTICES].frames_per_shard == 256
    assert specs[L.UV_TEXTURE].frames_per_shard == 21


def test_create_open_roundtrip_with_zarr_and_xarray(tmp_path):
    import xarray as xr

    path = L.capture_store_path(tmp_path, "20230405--1635--AAN112")
    assert path.endswith("/20230405--1635--AAN112.zarr")
    g = L.create_capture_group(path, GEOM, {L.ATTR_FORMAT_VERSION: L.FORMAT_VERSION}, codec="blosc-zstd")
    g[L.IMAGE][0:4, 1] = np.full((4, 64, 96, 3), 7, np.uint8)
    g2 = L.open_capture_group(path)
    assert g2.attrs[L.ATTR_FORMAT_VERSION] == L.FORMAT_VERSION
    assert (g2[L.IMAGE][2, 1] == 7).all() and (g2[L.IMAGE][2, 0] == 0).all()
    assert np.isnan(g2[L.VERTICES][0]).all()  # float fill is NaN, never a plausible value
    g[L.COORD_CAMERA][...] = np.array(["400100", "400200", "400300"])
    g[L.COORD_FRAME][...] = np.arange(10) * 3 + 100
    ds = xr.open_zarr(path, consolidated=False, chunks=None)
    assert ds["segmentation"].dims == ("frame", "camera", "height", "width")
    # camera and frame ids are coordinates: selection by id
    sel = ds["image"].sel(camera="400200", frame=106)
    assert sel.shape == (64, 96, 3) and (sel.values == 7).all()
    assert L.list_capture_stores(tmp_path) == ["20230405--1635--AAN112"]
    with pytest.raises(FileNotFoundError):
        L.open_capture_group(tmp_path / "nope.zarr")
    # every array exists with its spec (nested ones under real groups); re-creating wipes old chunks and attrs
    g3 = L.create_capture_group(path, GEOM, {"x": 1}, codec="lz4")
    for spec in L.array_specs(GEOM, "lz4").values():
        a = L.open_capture_group(path)[spec.name]
        assert (a.shape, a.chunks, a.shards) == (spec.shape, spec.chunks, spec.shards)
        assert a.dtype.kind == "T" if spec.dtype == "str" else a.dtype == np.dtype(spec.dtype)
        assert tuple(a.metadata.dimension_names) == tuple(spec.dims)
    assert isinstance(L.open_capture_group(path)["valid"], zarr.Group)
    assert dict(L.open_capture_group(path).attrs) == {"x": 1} == dict(g3.attrs)
    assert (L.open_capture_group(path)[L.IMAGE][2, 1] == 0).all()


@pytest.mark.parametrize("codec", L.CODECS)
def test_every_codec_roundtrips_losslessly(tmp_path, codec):
    a = zarr.create_array(
        str(tmp_path / "x.zarr"), shape=(2, 8, 8, 3), dtype="uint8", chunks=(1, 8, 8, 3),
        compressors=L.picture_compressors(codec),
    )  # fmt: skip
    data = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    a[...] = data
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "x.zarr"))[...], data)
    with pytest.raises(ValueError, match="unknown codec"):
        L.picture_compressors("jpeg")


def test_scale_intrinsics_half_pixel_convention():
    K = np.array([[7000.0, 0, 1334.3], [0, 7100.0, 2047.9], [0, 0, 1]])
    K2 = L.scale_intrinsics(K, 0.25, 0.5)
    assert K2[0, 0] == 7000 * 0.25 and K2[1, 1] == 7100 * 0.5
    # pixel centres: the centre of source pixel 0 (x=0) maps to x' = -0.375 at s=1/4 (it lies inside the
    # first target pixel, whose centre is at 0 and spans [-0.5, 0.5])
    p = np.array([3.0, -2.0, 10.0])
    u, u2 = (K @ p)[:2] / p[2], (K2 @ p)[:2] / p[2]
    np.testing.assert_allclose(u2, (u + 0.5) * np.array([0.25, 0.5]) - 0.5)
    assert L.scale_intrinsics(K, 1, 1).tolist() == K.tolist()
    full = L.sensor_to_image_intrinsics(K, (SENSOR_HEIGHT, SENSOR_WIDTH))
    np.testing.assert_allclose(full, K)
    np.testing.assert_allclose(
        L.sensor_to_image_intrinsics(K, (1024, 667)), L.scale_intrinsics(K, 0.25, 0.25)
    )
    assert L.downsampled_size((1024, 667), 2) == (512, 333)
    with pytest.raises(ValueError):
        L.downsampled_size((8, 8), 0)


def test_resample_filters():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:2, :2] = 200  # one 2x2 block
    out = resize_rgb(rgb, (2, 3))
    assert out.shape == (2, 3, 3) and out[0, 0, 0] == 200 and out[1, 1, 0] == 0
    rgb[0, 0] = 0
    assert resize_rgb(rgb, (2, 3))[0, 0, 0] == 150  # area average, not a point sample
    lab = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], np.uint8)
    assert resize_labels(lab, (2, 2)).tolist() == [[1, 2], [3, 4]]
    assert resize_rgb(rgb, (4, 6)) is rgb


def test_samples_manifest_rows_and_schema(tmp_path):
    vi = np.array([[True, False], [True, True], [True, True]])
    vs = np.array([[True, True], [False, True], [True, True]])
    vf = np.array([True, True, False])
    t = sm.capture_samples(
        "20230405--1635--AAN112", "AAN112", [10, 11, 12], ["s", "s", "t"], ["c1", "c2"], vi, vs, vf
    )
    path = sm.write_samples([t], tmp_path / "m" / "samples.parquet")
    df = sm.read_samples(path)
    assert len(df) == 6 and list(df.columns) == list(sm.COLUMNS)
    assert df.valid.tolist() == [True, False, True, True, False, False]
    assert df.camera_id.tolist() == ["c1", "c2"] * 3 and df.frame_id.tolist() == [10, 10, 11, 11, 12, 12]
    assert pq.read_schema(path).field("camera_index").type == "int16"
    assert not list((tmp_path / "m").glob("*.tmp"))
    with pytest.raises(FileNotFoundError):
        sm.read_samples(tmp_path / "none.parquet")


def test_samples_schema_matches_split_parts():
    splits = pytest.importorskip("ava256.manifests.splits")
    assert splits.SPLIT_SCHEMA.equals(sm.SAMPLES_SCHEMA)


def test_repack_manifest_roundtrip(tmp_path):
    from datetime import datetime

    row = rm.RepackRow(
        capture="c", task_id="c/image/1/000000-000004", asset="image", camera_id="1", camera_index=0,
        frame_start=0, frame_stop=4, status=rm.STATUS_DONE, n_frames=4, n_valid=3, n_missing=1,
        n_corrupt=0, errors=(rm.ErrorRecord(capture="c", file="c/x.zip", member="m", reason="missing"),),
        seconds=1.5, cpu_seconds=1.0, peak_rss_mb=100.0, source_hash="h", worker="w",
        finished_at=datetime.now(UTC),
    )  # fmt: skip
    path = tmp_path / "repack.parquet"
    rm.write_repack_manifest(rm.rows_to_table([row]), path)
    df = rm.read_repack_manifest(path)
    assert df.iloc[0].errors[0]["reason"] == "missing" and df.iloc[0].n_valid == 3
    assert len(rm.read_repack_manifest(tmp_path / "absent.parquet")) == 0


def test_every_array_has_the_crc32c_codec_last_and_no_global_warning_filter(tmp_path):
    """Every array of a capture store (pictures, per-frame floats, masks, camera arrays, stats) ends its chunk
    codecs with crc32c, so any Zarr reader checks every chunk; importing ava256 leaves the warning filters
    alone."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zarr warns about any codec outside the Zarr v3 specs
        g = L.create_capture_group(tmp_path / "c.zarr", GEOM, {}, codec=L.DEFAULT_CODEC)
    spec_codecs = {"sharding_indexed", "bytes", "vlen-utf8", "blosc", "zstd", "gzip", "crc32c"}
    for spec in L.array_specs(GEOM).values():
        codecs = g[spec.name].metadata.to_dict()["codecs"]
        if spec.shards is not None:
            codecs = codecs[0]["configuration"]["codecs"]
        assert codecs[-1]["name"] == "crc32c", spec.name
        assert {c["name"] for c in codecs} <= spec_codecs, spec.name
    assert not any("zarr" in str(f[1]) or "Numcodecs" in str(f[1]) for f in warnings.filters)
    with pytest.warns(UserWarning, match="not in the Zarr version 3 specification"):
        L.create_capture_group(tmp_path / "n.zarr", GEOM, {}, codec="lz4")


def _arrays(tmp_path, codec, kind):
    if kind == "camera":
        shape, chunks, shards, dtype, fill = (
            (10, 3, 16, 24, 3),
            (1, 1, 16, 24, 3),
            (4, 1, 16, 24, 3),
            "uint8",
            0,
        )
    else:
        shape, chunks, shards, dtype, fill = (10, 50, 3), (1, 50, 3), (4, 50, 3), "float32", np.nan
    comp = L.picture_compressors(codec) + [zarr.codecs.Crc32cCodec()]
    kw = dict(shape=shape, dtype=dtype, chunks=chunks, shards=shards, compressors=comp, fill_value=fill)
    ref = zarr.create_array(str(tmp_path / "ref.zarr"), **kw)  # zarr leaves fill-value chunks out
    ours = zarr.create_array(str(tmp_path / "ours.zarr"), **kw)
    data = np.random.default_rng(1).integers(0, 255, shape).astype(dtype)
    return ref, ours, data


@pytest.mark.parametrize("codec", L.CODECS)
@pytest.mark.parametrize("kind", ["camera", "frame"])
def test_shard_writer_writes_the_bytes_zarr_writes(tmp_path, codec, kind):
    """The streamed shard writer produces byte-identical shard files to zarr's own write path (full and
    boundary shards, a fill-value frame, uint8 pictures and float32 per-frame arrays, crc32c in every chunk),
    and plain zarr reads them back."""
    from ava256.store.shards import shard_writer

    ref, ours, data = _arrays(tmp_path, codec, kind)
    with shard_writer(ours) as w:
        assert w.frames_per_shard == 4
        for s0 in range(0, 10, 4):
            s1 = min(s0 + 4, 10)
            f = w.open_shard((s0 // 4, 1, 0, 0, 0) if kind == "camera" else (s0 // 4, 0, 0))
            for i in range(s0, s1):
                if kind == "camera":
                    f.append(data[i, 1] if i != 5 else None)  # frame 5: the fill value
                else:
                    f.append(data[i])
            f.close()
            if kind == "camera":
                ref[s0:s1, 1] = data[s0:s1, 1]
            else:
                ref[s0:s1] = data[s0:s1]
    if kind == "camera":
        ref[5, 1] = 0
    files = sorted(
        p.relative_to(tmp_path / "ref.zarr") for p in (tmp_path / "ref.zarr").rglob("*") if p.is_file()
    )
    assert len(files) == 4  # zarr.json + 3 shards
    for rel in files:
        if rel.name != "zarr.json":
            assert (tmp_path / "ours.zarr" / rel).read_bytes() == (
                tmp_path / "ref.zarr" / rel
            ).read_bytes(), rel
    assert (
        sorted(
            p.name for p in (tmp_path / "ours.zarr").rglob("*") if ".partial" in p.name or "probe" in p.name
        )
        == []
    )
    back = zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")[...]
    np.testing.assert_array_equal(back, zarr.open_array(str(tmp_path / "ref.zarr"), mode="r")[...])


@pytest.mark.parametrize("codec", L.CODECS)
def test_shard_writer_and_chunk_reader_apply_to_every_array_of_a_capture_store(tmp_path, codec, caplog):
    """The fast paths must not silently stop applying (a zarr upgrade changing the metadata, a layout change):
    both cover every sharded array ``create_capture_group`` makes, for every codec, without a warning."""
    from ava256.store.fastread import ChunkReader
    from ava256.store.shards import shard_writer

    g = L.create_capture_group(tmp_path / "c.zarr", GEOM, {}, codec=codec, max_frames_per_shard=4)
    sharded = [s.name for s in L.array_specs(GEOM, codec, 4).values() if s.shards is not None]
    assert len(sharded) == 7
    with caplog.at_level("WARNING"):
        for name in sharded:
            w = shard_writer(g[name])
            assert w is not None, name
            w.close()
            assert ChunkReader.for_array(g[name]) is not None, name
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_shard_writer_declines_other_layouts_and_says_so(tmp_path, caplog):
    from ava256.store.shards import shard_writer

    kw = dict(shape=(4, 8), dtype="uint8")
    cases = {
        "unsharded": zarr.create_array(str(tmp_path / "a.zarr"), chunks=(1, 8), **kw),
        "chunks": zarr.create_array(str(tmp_path / "b.zarr"), chunks=(1, 4), shards=(2, 8), **kw),
        "transpose": zarr.create_array(
            str(tmp_path / "c.zarr"),
            chunks=(1, 8),
            shards=(2, 8),
            filters=[zarr.codecs.TransposeCodec(order=(1, 0))],
            **kw,
        ),  # fmt: skip
        "memory": zarr.create_array(zarr.storage.MemoryStore(), chunks=(1, 8), shards=(2, 8), **kw),
    }
    with caplog.at_level("WARNING"):
        for name, arr in cases.items():
            assert shard_writer(arr) is None, name
            assert shard_writer(arr) is None, name  # said once
    text = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(text) == 4 and all("written through zarr" in t for t in text), text
    assert any("MemoryStore is not a local folder" in t for t in text)


@pytest.mark.parametrize("frame_mib", [0, 3])
def test_streamed_shards_and_abort_leaves_nothing(tmp_path, frame_mib):
    """Streamed shards hold the frames (also 3 MiB frames, 14 per shard, and compressible ones); an aborted
    shard leaves no file, a closed one no temporary file."""
    from ava256.store import shards

    hw = (1024, 1024) if frame_mib else (16, 24)
    n = 14 if frame_mib else 4
    data = np.random.default_rng(3).integers(0, 255, (n + 2, *hw, 3), dtype=np.uint8)
    data[n:] = 7  # compressible frames in the second shard
    kw = dict(shape=data.shape, dtype="uint8", chunks=(1, *hw, 3), shards=(n, *hw, 3),
              compressors=[zarr.codecs.BloscCodec(cname="blosclz", clevel=1, shuffle="noshuffle"),
                           zarr.codecs.Crc32cCodec()])  # fmt: skip
    arr = zarr.create_array(str(tmp_path / "a.zarr"), **kw)
    with shards.shard_writer(arr) as w:
        for s, (s0, s1) in enumerate([(0, n), (n, n + 2)]):
            f = w.open_shard((s, 0, 0, 0))
            for x in data[s0:s1]:
                f.append(x)
            f.close()
        aborted = w.open_shard((5, 0, 0, 0))
        aborted.append(data[0])
        aborted.abort()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[...], data)
    files = sorted(
        str(p.relative_to(tmp_path / "a.zarr")) for p in (tmp_path / "a.zarr").rglob("*") if p.is_file()
    )
    assert files == ["c/0/0/0/0", "c/1/0/0/0", "zarr.json"]  # no shard 5, no .partial files


def test_a_failed_write_fails_the_shard_and_leaves_no_file(tmp_path, monkeypatch):
    """A write error (here: the disk is full at the shard's thirteenth MiB) is raised by the shard's append
    or close and leaves no file, not even a temporary one; a new writer then writes the shard intact."""
    import errno

    from ava256.store import shards

    data = np.random.default_rng(4).integers(0, 255, (6, 1024, 1024, 3), dtype=np.uint8)
    kw = dict(shape=data.shape, dtype="uint8", chunks=(1, 1024, 1024, 3), shards=(6, 1024, 1024, 3),
              compressors=[zarr.codecs.Crc32cCodec()])  # fmt: skip
    arr = zarr.create_array(str(tmp_path / "a.zarr"), **kw)
    real_write = os.write
    written = {"n": 0}

    def full(fd, data):
        written["n"] += len(data)
        if written["n"] > 12 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with pytest.raises(OSError, match="No space"):
        with shards.shard_writer(arr) as w:
            monkeypatch.setattr(shards.os, "write", full)
            f = w.open_shard((0, 0, 0, 0))
            try:
                for x in data:
                    f.append(x)
                f.close()
            except OSError:
                f.abort()
                raise
    monkeypatch.setattr(shards.os, "write", real_write)
    assert not [p for p in (tmp_path / "a.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    with shards.shard_writer(arr) as w:
        g = w.open_shard((0, 0, 0, 0))
        for x in data:
            g.append(x)
        g.close()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[...], data)
