"""The store layout (names, shapes, chunk/shard policy, intrinsics scaling, resampling) and the repack /
samples manifests: pure functions on real Zarr / Parquet files."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from datetime import UTC
from pathlib import Path

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
        "camera/intrinsics": ((3, 3, 3), "float32"),
        "camera/extrinsics": ((3, 3, 4), "float32"),
        "camera/distortion": ((3, 4), "float32"),
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
    ds = xr.open_zarr(path, consolidated=False, chunks=None)
    assert ds["segmentation"].dims == ("frame", "camera", "height", "width")
    assert L.list_capture_stores(tmp_path) == ["20230405--1635--AAN112"]
    with pytest.raises(FileNotFoundError):
        L.open_capture_group(tmp_path / "nope.zarr")
    # every array exists with its spec (nested ones under real groups); re-creating wipes old chunks and attrs
    g3 = L.create_capture_group(path, GEOM, {"x": 1}, codec="lz4")
    for spec in L.array_specs(GEOM, "lz4").values():
        a = L.open_capture_group(path)[spec.name]
        assert (a.shape, a.chunks, a.shards, a.dtype) == (
            spec.shape,
            spec.chunks,
            spec.shards,
            np.dtype(spec.dtype),
        )
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

    row = {
        "capture": "c", "task_id": "c/image/1/000000-000004", "asset": "image", "camera_id": "1", "camera_index": 0,
        "frame_start": 0, "frame_stop": 4, "status": rm.STATUS_DONE, "n_frames": 4, "n_valid": 3, "n_missing": 1,
        "n_corrupt": 0, "errors": [{"capture": "c", "file": "c/x.zip", "member": "m", "reason": "missing"}],
        "seconds": 1.5, "cpu_seconds": 1.0, "peak_rss_mb": 100.0, "source_hash": "h", "worker": "w",
        "finished_at": datetime.now(UTC),
    }  # fmt: skip
    path = tmp_path / "repack.parquet"
    rm.write_repack_manifest(rm.rows_to_table([row]), path)
    df = rm.read_repack_manifest(path)
    assert df.iloc[0].errors[0]["reason"] == "missing" and df.iloc[0].n_valid == 3
    assert len(rm.read_repack_manifest(tmp_path / "absent.parquet")) == 0


@pytest.mark.parametrize("codec", L.CODECS)
@pytest.mark.parametrize("kind", ["camera", "frame"])
def test_shard_encoder_writes_the_bytes_zarr_writes(tmp_path, codec, kind):
    """Our one-pass shard writer produces byte-identical shard files to zarr's own write path (full and
    boundary shards, uint8 pictures and float32 per-frame arrays), and zarr reads them back."""
    from ava256.store.shards import shard_encoder

    rng = np.random.default_rng(1)
    if kind == "camera":
        shape, chunks, shards, dtype, fill, comp = (10, 3, 16, 24, 3), (1, 1, 16, 24, 3), (4, 1, 16, 24, 3), "uint8", 0, L.picture_compressors(codec)  # fmt: skip
    else:
        shape, chunks, shards, dtype, fill, comp = (10, 50, 3), (1, 50, 3), (4, 50, 3), "float32", np.nan, L.picture_compressors(codec)  # fmt: skip
    data = rng.integers(0, 255, shape).astype(dtype)
    kw = dict(shape=shape, dtype=dtype, chunks=chunks, shards=shards, compressors=comp, fill_value=fill)
    ref = zarr.create_array(str(tmp_path / "ref.zarr"), config={"write_empty_chunks": True}, **kw)
    ours = zarr.create_array(str(tmp_path / "ours.zarr"), **kw)
    enc = shard_encoder(ours)
    assert enc is not None and enc.frames_per_shard == 4
    for s0 in range(0, 10, 4):
        s1 = min(s0 + 4, 10)
        if kind == "camera":
            ref[s0:s1, 1] = data[s0:s1, 1]
            frames = [data[f, 1] if f != 5 else None for f in range(s0, s1)]  # frame 5: fill value
            enc.write((s0 // 4, 1, 0, 0, 0), [enc.encode(x) for x in frames])
        else:
            ref[s0:s1] = data[s0:s1]
            enc.write((s0 // 4, 0, 0), [enc.encode(data[f]) for f in range(s0, s1)])
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
    back = zarr.open_array(str(tmp_path / "ours.zarr"), mode="r")[...]
    np.testing.assert_array_equal(back, zarr.open_array(str(tmp_path / "ref.zarr"), mode="r")[...])


def test_shard_encoder_declines_other_layouts(tmp_path):
    from ava256.store.shards import shard_encoder

    unsharded = zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 8), dtype="uint8", chunks=(1, 8))
    assert shard_encoder(unsharded) is None
    two_d_chunks = zarr.create_array(
        str(tmp_path / "b.zarr"), shape=(4, 8), dtype="uint8", chunks=(1, 4), shards=(2, 8)
    )
    assert shard_encoder(two_d_chunks) is None
    gz = zarr.create_array(
        str(tmp_path / "c.zarr"), shape=(4, 8), dtype="uint8", chunks=(1, 8), shards=(2, 8),
        compressors=[zarr.codecs.GzipCodec()],
    )  # fmt: skip
    assert shard_encoder(gz) is None


def _supports_direct_io(folder) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except OSError:
        return False
    os.close(fd)
    os.unlink(folder / "probe")
    return True


def _tmpfs_dir():
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        pytest.skip("no writable /dev/shm")
    return Path(tempfile.mkdtemp(dir=shm))


@pytest.mark.parametrize("io", ["direct", "buffered", "tmpfs"])
@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_streamed_shard_equals_one_pass_shard_and_abort_leaves_nothing(tmp_path, codec, io, monkeypatch):
    """``open_shard`` (frames appended to the shard's temporary file, or compressed straight into its staging
    memory by ``append_to``) writes the same bytes as ``write``; an
    aborted shard leaves no file (not even the temporary one), a closed one no temporary file. With direct
    I/O (where the file system takes it), with it turned off, and on tmpfs (which, before Linux 6.6, refuses
    O_DIRECT: the writer falls back to the page cache)."""
    from ava256.store.shards import DIRECT_IO_ENV, ShardSink, shard_encoder

    monkeypatch.setenv(DIRECT_IO_ENV, "0" if io == "buffered" else "1")
    if io == "tmpfs":
        tmp_path = _tmpfs_dir()

    data = np.random.default_rng(2).integers(0, 255, (6, 2, 16, 24, 3)).astype("uint8")
    kw = dict(shape=data.shape, dtype="uint8", chunks=(1, 1, 16, 24, 3), shards=(4, 1, 16, 24, 3),
              compressors=L.picture_compressors(codec), fill_value=0)  # fmt: skip
    one = shard_encoder(zarr.create_array(str(tmp_path / "one.zarr"), **kw))
    streamed = shard_encoder(zarr.create_array(str(tmp_path / "streamed.zarr"), **kw))
    for s0 in (0, 4):
        frames = [data[f, 1] if f != 2 else None for f in range(s0, min(s0 + 4, 6))]
        one.write((s0 // 4, 1, 0, 0, 0), [one.encode(x) for x in frames])
        sink = streamed.open_shard((s0 // 4, 1, 0, 0, 0))
        assert isinstance(sink, ShardSink)
        assert sink._f.direct == (io != "buffered" and _supports_direct_io(tmp_path))
        for i, x in enumerate(frames):  # compressed in place into the file's staging memory, or appended
            if i % 2:
                sink.append(streamed.encode(x))
            else:
                streamed.append_to(sink, x)
        sink.close()
        sink.abort()  # no-op once closed
    aborted = streamed.open_shard((0, 0, 0, 0, 0))
    aborted.append(streamed.encode(data[0, 0]))
    aborted.abort()
    rel = sorted(
        p.relative_to(tmp_path / "streamed.zarr")
        for p in (tmp_path / "streamed.zarr").rglob("*")
        if p.is_file()
    )
    assert [str(r) for r in rel] == ["c/0/1/0/0/0", "c/1/1/0/0/0", "zarr.json"]
    for r in rel[:2]:
        assert (tmp_path / "streamed.zarr" / r).read_bytes() == (tmp_path / "one.zarr" / r).read_bytes()
    back = zarr.open_array(str(tmp_path / "streamed.zarr"), mode="r")[:, 1]
    want = data[:, 1].copy()
    want[2] = 0
    np.testing.assert_array_equal(back, want)
    if io == "tmpfs":
        shutil.rmtree(tmp_path)


@pytest.mark.parametrize(
    ("value", "direct"),
    [
        (None, True),
        ("auto", True),
        ("1", True),
        ("0", False),
        ("off", False),
        ("False", False),
        ("no", False),
    ],
)
def test_direct_io_is_the_default_and_can_be_turned_off(tmp_path, monkeypatch, value, direct):
    """Direct I/O is on unless ``AVA256_DIRECT_IO`` turns it off (where the platform and file system take it),
    and the shard file the writer opens follows the setting."""
    from ava256.store.shards import DIRECT_IO_ENV, _open_shard_file, direct_io_enabled

    if value is None:
        monkeypatch.delenv(DIRECT_IO_ENV, raising=False)
    else:
        monkeypatch.setenv(DIRECT_IO_ENV, value)
    assert direct_io_enabled() == (direct and hasattr(os, "O_DIRECT"))
    f = _open_shard_file(tmp_path / "x", reserve=0)
    f.write(b"abc")
    f.finish()
    assert f.direct == (direct and _supports_direct_io(tmp_path))
    assert (tmp_path / "x").read_bytes() == b"abc"


def test_direct_file_stages_aligned_blocks_and_keeps_exact_bytes(tmp_path, monkeypatch):
    """Unaligned appends of every size, across the 8 MiB segments of the staging ring and around it (> 4 x 8 MiB,
    twice), give exactly the bytes written."""
    from ava256.store.shards import _RING, _SLACK, DIRECT_IO_ENV, _open_shard_file

    if not _supports_direct_io(tmp_path):
        pytest.skip("the file system here refuses O_DIRECT")
    monkeypatch.setenv(DIRECT_IO_ENV, "1")
    rng = np.random.default_rng(5)
    parts = [
        rng.integers(0, 255, n, dtype=np.uint8).tobytes()
        for n in (1, 4095, 4097, 3 << 20, 7 << 20, 12345, 0, 9 << 20, 7, 21 << 20, 5)
    ]
    f = _open_shard_file(tmp_path / "x", reserve=64 << 20)
    assert f.direct and len(f._ring) == _RING + _SLACK
    for part in parts + parts:
        f.write(part)
    f.finish()
    assert (tmp_path / "x").read_bytes() == b"".join(parts + parts)  # padding truncated away


@pytest.mark.parametrize("io", ["direct", "slow-direct", "buffered"])
def test_reserved_appends_land_in_place_around_the_ring(tmp_path, monkeypatch, io):
    """``reserve`` + ``commit`` (how frames are compressed in place), mixed with plain writes: bytes written at the
    reserved address, fewer than reserved, across the ring's segments and its end, or larger than its slack
    (the scratch buffer), give exactly the bytes committed. A direct file hands out ring memory for up to
    ``_SLACK`` bytes. ``slow-direct``: every background write starts late, so a segment reused before its
    write ended would corrupt the file."""
    import ctypes
    import time

    from ava256.store import shards
    from ava256.store.shards import _RING, _SLACK, DIRECT_IO_ENV, _open_shard_file

    if io != "buffered" and not _supports_direct_io(tmp_path):
        pytest.skip("the file system here refuses O_DIRECT")
    monkeypatch.setenv(DIRECT_IO_ENV, "0" if io == "buffered" else "1")
    if io == "slow-direct":
        real = shards._pwrite_all

        def slow(fd, view, offset):
            time.sleep(0.05)
            real(fd, view, offset)

        monkeypatch.setattr(shards, "_pwrite_all", slow)
    rng = np.random.default_rng(11)
    # first exactly onto segment boundaries (the next frame starts a fresh segment), then anywhere: ~4 x the ring
    sizes = [_SLACK] * 10 + [1, 1_587_139, 4096, 3 << 20, _SLACK, 1_500_000, _SLACK + 1, 7, 2_000_001] * 7
    f = _open_shard_file(tmp_path / "x", reserve=0)
    assert f.direct == (io != "buffered")
    want = [rng.integers(0, 255, n, dtype=np.uint8).tobytes() for n in sizes]
    for i, (n, part) in enumerate(zip(sizes, want, strict=True)):
        if i % 3 == 2:
            f.write(part)
            continue
        addr, cap = f.reserve(n + 100 * (i % 2))  # may reserve more than it commits
        assert cap >= n
        if f.direct and n + 100 * (i % 2) <= _SLACK:
            assert f._addr <= addr and addr + cap <= f._addr + _RING + _SLACK
        ctypes.memmove(addr, part, n)
        f.commit(n)
    f.finish()
    assert (tmp_path / "x").read_bytes() == b"".join(want)


def test_a_failed_background_write_fails_the_shard_and_the_ring_is_reused(tmp_path, monkeypatch):
    """A background write that fails (here: the second 8 MiB segment, "no space left") is raised by a later
    append or by ``wait``, the shard leaves no file, and the ring it used serves the next file correctly."""
    import errno

    from ava256.store import shards

    if not _supports_direct_io(tmp_path):
        pytest.skip("the file system here refuses O_DIRECT")
    monkeypatch.setenv(shards.DIRECT_IO_ENV, "1")
    real = shards._pwrite_all

    def failing(fd, view, offset):
        if offset == shards._STAGE:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, view, offset)

    monkeypatch.setattr(shards, "_pwrite_all", failing)
    data = np.random.default_rng(4).integers(0, 255, (12, 1024, 1024, 3)).astype("uint8")  # 3 MiB frames
    kw = dict(shape=data.shape, dtype="uint8", chunks=(1, 1024, 1024, 3), shards=(12, 1024, 1024, 3),
              compressors=[], fill_value=0)  # fmt: skip
    enc = shards.shard_encoder(zarr.create_array(str(tmp_path / "a.zarr"), **kw))
    sink = enc.open_shard((0, 0, 0, 0))
    with pytest.raises(OSError, match="No space left"):
        for x in data:
            enc.append_to(sink, x)
        sink.close()
        sink.wait()
    sink.abort()
    assert not [p for p in (tmp_path / "a.zarr").rglob("*") if p.is_file() and p.name != "zarr.json"]
    monkeypatch.setattr(shards, "_pwrite_all", real)
    sink = enc.open_shard((0, 0, 0, 0))
    for x in data:
        enc.append_to(sink, x)
    sink.close()
    sink.wait()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[...], data)


def test_append_to_without_the_lz4_c_library_appends_numcodecs_bytes(tmp_path, monkeypatch):
    """Where the LZ4 C library cannot be loaded, ``append_to`` falls back to ``numcodecs.LZ4.encode`` + append:
    the same shard bytes."""
    from ava256.store import shards

    kw = dict(shape=(3, 16, 24, 3), dtype="uint8", chunks=(1, 16, 24, 3), shards=(3, 16, 24, 3),
              compressors=L.picture_compressors("lz4"), fill_value=0)  # fmt: skip
    data = np.random.default_rng(3).integers(0, 60, kw["shape"]).astype("uint8")
    fast = shards.shard_encoder(zarr.create_array(str(tmp_path / "fast.zarr"), **kw))
    if fast._direct is None:  # numcodecs' Linux wheels export the LZ4 C API from their lz4 extension
        assert not sys.platform.startswith("linux"), "LZ4 C API not found (numcodecs' lz4 extension, liblz4)"
        pytest.skip("no LZ4 C library loadable here")
    monkeypatch.setattr(shards, "_lz4_api", False)
    slow = shards.shard_encoder(zarr.create_array(str(tmp_path / "slow.zarr"), **kw))
    assert slow._direct is None
    for enc in (fast, slow):
        sink = enc.open_shard((0, 0, 0, 0))
        for x in data:
            enc.append_to(sink, x)
        sink.close()
        sink.wait()
    key = "c/0/0/0/0"
    assert (tmp_path / "fast.zarr" / key).read_bytes() == (tmp_path / "slow.zarr" / key).read_bytes()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "slow.zarr"), mode="r")[...], data)


@pytest.mark.parametrize("refuse", ["open", "write"])
def test_direct_io_refused_falls_back_to_the_page_cache(tmp_path, monkeypatch, refuse):
    """A file system that refuses O_DIRECT (EINVAL at open, or at the first write, as some network file
    systems do) still gets exactly the bytes, through the page cache. (This kernel's file systems all take
    O_DIRECT, so the refusal is injected.)"""
    import errno

    from ava256.store import shards

    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    monkeypatch.setenv(shards.DIRECT_IO_ENV, "1")
    real_open, real_pwrite = os.open, os.pwrite

    def open_(path, flags, *a):
        if refuse == "open" and flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a)

    def pwrite(fd, data, offset):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(shards.os, "open", open_)
    monkeypatch.setattr(shards, "_direct_devices", set())  # a device not yet known to take direct writes
    if refuse == "write":
        monkeypatch.setattr(shards.os, "pwrite", pwrite)
    parts = [bytes([i]) * n for i, n in enumerate((5000, 9 << 20, 3))]
    f = shards._open_shard_file(tmp_path / "x", reserve=32 << 20)
    for part in parts:
        f.write(part)
    f.finish()
    assert not f.direct
    monkeypatch.setattr(shards.os, "pwrite", real_pwrite)
    assert (tmp_path / "x").read_bytes() == b"".join(parts)


def test_direct_shards_commit_in_the_background_and_report_failures(tmp_path, monkeypatch):
    """With direct I/O a closed shard is committed (last writes, truncation, rename) by a background thread:
    ``wait`` returns once it is in place with exactly the bytes; a failed commit is raised by ``wait`` and
    leaves neither the shard nor its temporary file. The first file on a device writes its first block
    synchronously; later ones (device known to take O_DIRECT) do not."""
    from ava256.store import shards

    if not _supports_direct_io(tmp_path):
        pytest.skip("the file system here refuses O_DIRECT")
    monkeypatch.setenv(shards.DIRECT_IO_ENV, "1")
    monkeypatch.setattr(shards, "_direct_devices", set())
    rng = np.random.default_rng(7)
    data = rng.integers(0, 255, (6, 1, 1024, 1024, 3)).astype("uint8")  # 3 MiB frames: 9 MiB shards
    kw = dict(shape=data.shape, dtype="uint8", chunks=(1, 1, 1024, 1024, 3), shards=(3, 1, 1024, 1024, 3),
              compressors=[], fill_value=0)  # fmt: skip
    enc = shards.shard_encoder(zarr.create_array(str(tmp_path / "a.zarr"), **kw))
    sinks = []
    for k in (0, 1):
        sink = enc.open_shard((k, 0, 0, 0, 0))
        assert sink._f.direct
        for f in range(3 * k, 3 * k + 3):
            sink.append(enc.encode(data[f, 0]))
            if k == 1 and f == 5:  # the second file's first block went to the background writer
                assert sink._f._pending[0] is not None
        sink.close()
        sinks.append(sink)
        assert sink.closed and (sink._commit_future is not None)
        assert shards._direct_devices == {os.stat(tmp_path).st_dev}
    for sink in sinks:
        sink.wait()
        sink.abort()  # no-op once stored
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[...], data)
    assert not list((tmp_path / "a.zarr").rglob("*.partial"))

    def refuse_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.os, "replace", refuse_rename)
    sink = enc.open_shard((0, 0, 0, 0, 0))
    sink.append(enc.encode(data[0, 0]))
    sink.close()
    with pytest.raises(OSError, match="No space"):
        sink.wait()
    sink.abort()
    assert not list((tmp_path / "a.zarr").rglob("*.partial"))
