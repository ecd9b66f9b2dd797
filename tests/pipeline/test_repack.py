"""End-to-end tests of ``ava256 repack`` on tiny real captures (real AVIF/PNG/PLY/npy in stored zips, real
Zarr v3 on disk, a real Dask scheduler)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from click.testing import CliRunner
from repack_data import (
    CAMERAS,
    ENCODER_HW,
    IMAGE_HW,
    N_ENCODER_FRAMES,
    N_FRAMES,
    TEXTURE,
    datasheet_segmentation_member,
    replace_member,
    write_capture,
)

from ava256 import capture as cat
from ava256.cli import cli
from ava256.formats.calibration import read_calibration
from ava256.formats.frame_list import read_frame_list
from ava256.formats.head_pose import read_head_pose
from ava256.formats.images import decode_gray, decode_labels, decode_rgb
from ava256.formats.keypoints import read_keypoints
from ava256.formats.ply import read_ply
from ava256.formats.scalars import read_npy, read_scalar_txt
from ava256.formats.zips import ZipReader
from ava256.manifests.repack import REPACK_MANIFEST, read_repack_manifest
from ava256.manifests.samples import SAMPLES_MANIFEST, read_samples
from ava256.pipeline.repack import repack
from ava256.store import layout as L
from ava256.store.resample import resize_labels, resize_rgb

CAPS = list(cat.release_capture_ids()[:2])
SHARD = 4  # frames per shard in these tests -> shards [0,4) [4,8) [8,10)
TASK = 4  # one shard per task


@pytest.fixture(scope="module")
def client():
    """A real Dask scheduler with 2 single-threaded worker processes, shared by the module."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        Client(lc) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def raw_pristine(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    for i, c in enumerate(CAPS):
        write_capture(raw, c, seed=i)
    return raw


@pytest.fixture
def raw(raw_pristine, tmp_path) -> Path:
    """A private copy of the tiny raw tree (tests damage it)."""
    dst = tmp_path / "raw"
    shutil.copytree(raw_pristine, dst)
    return dst


def run(raw, store, client, **kw):
    kw.setdefault("max_frames_per_shard", SHARD)
    kw.setdefault("task_target_frames", TASK)
    return repack(raw, store, client=client, progress=False, **kw)


@pytest.fixture(scope="module")
def repacked(raw_pristine, tmp_path_factory, client):
    store = tmp_path_factory.mktemp("store")
    summary = run(raw_pristine, store, client)
    return raw_pristine, store, summary


def members(zpath: Path) -> dict[str, bytes]:
    with ZipReader(zpath) as z:
        return {n: z.read(n) for n in z.names()}


# --------------------------------------------------------------------------------------------------------------


def test_fidelity_every_value_equals_a_direct_decode(repacked):
    raw, store, summary = repacked
    assert summary.tasks_failed == 0 and not summary.failed_captures
    for cap in CAPS:
        base = raw / cap.folder
        g = zarr.open_group(L.capture_store_path(store, cap), mode="r")
        fids = [int(x) for x in read_frame_list((base / cat.FRAME_LIST_KEY).read_bytes()).frame_ids]
        assert g.attrs[L.ATTR_FRAME_IDS] == fids
        assert g.attrs[L.ATTR_CAMERA_IDS] == CAMERAS
        img, seg = g[L.IMAGE][...], g[L.SEGMENTATION][...]
        assert img.shape == (N_FRAMES, len(CAMERAS), *IMAGE_HW, 3) and img.dtype == np.uint8
        for ci, cam in enumerate(CAMERAS):
            im = members(base / cat.image_key(cam))
            sg = members(base / cat.segmentation_key(cam))
            for fi, f in enumerate(fids):
                np.testing.assert_array_equal(img[fi, ci], decode_rgb(im[cat.image_member(cam, f)]))
                np.testing.assert_array_equal(
                    seg[fi, ci], decode_labels(sg[datasheet_segmentation_member(f)])
                )
        tex, verts, kps, hp = (
            members(base / k)
            for k in (cat.TEXTURE_KEY, cat.VERTICES_KEY, cat.KEYPOINTS_KEY, cat.HEAD_POSE_KEY)
        )
        for fi, f in enumerate(fids):
            np.testing.assert_array_equal(g[L.UV_TEXTURE][fi], decode_rgb(tex[cat.texture_member(f)]))
            np.testing.assert_array_equal(g[L.VERTICES][fi], read_ply(verts[cat.vertices_member(f)]))
            np.testing.assert_array_equal(g[L.KEYPOINTS_3D][fi], read_keypoints(kps[cat.keypoints_member(f)]))
            np.testing.assert_array_equal(g[L.HEAD_POSE][fi], read_head_pose(hp[cat.head_pose_member(f)]))
        assert np.isnan(g[L.KEYPOINTS_3D][0]).any(), "absent keypoints must be NaN rows"
        enc = g[L.ENCODER_IMAGE][...]
        assert enc.shape == (N_ENCODER_FRAMES, 5, *ENCODER_HW)
        for ei, ecam in enumerate(cat.ENCODER_CAMERAS):
            em = members(base / cat.encoder_image_key(ecam))
            for fi, f in enumerate(fids[:N_ENCODER_FRAMES]):
                np.testing.assert_array_equal(enc[fi, ei], decode_gray(em[cat.encoder_image_member(f)]))
        cal = read_calibration((base / cat.CALIBRATION_KEY).read_bytes())
        np.testing.assert_allclose(g[L.CAMERA_EXTRINSICS][...], cal.extrinsics, rtol=1e-6)
        np.testing.assert_allclose(g[L.CAMERA_DISTORTION][...], cal.distortion, rtol=1e-6)
        expect_k = L.sensor_to_image_intrinsics(cal.intrinsics, IMAGE_HW)
        np.testing.assert_allclose(g[L.CAMERA_INTRINSICS][...], expect_k, rtol=1e-6)
        np.testing.assert_array_equal(
            g[L.TEXTURE_MEAN][...], decode_rgb((base / cat.TEXTURE_MEAN_KEY).read_bytes()).astype(np.float32)
        )
        np.testing.assert_array_equal(
            g[L.VERTEX_MEAN][...], read_npy((base / cat.VERTICES_MEAN_KEY).read_bytes())
        )
        assert g.attrs[L.ATTR_TEXTURE_VAR] == read_scalar_txt((base / cat.TEXTURE_VARIANCE_KEY).read_bytes())
        assert g.attrs[L.ATTR_VERTEX_VAR] == read_scalar_txt((base / cat.VERTICES_VARIANCE_KEY).read_bytes())
        for asset in L.ASSET_ARRAYS:
            assert g[L.valid_name(asset)][...].all(), asset
        assert g.attrs[L.ATTR_COMPLETE] is True
        assert g.attrs[L.ATTR_FORMAT_VERSION] == L.FORMAT_VERSION


def test_layout_shards_and_manifests(repacked):
    raw, store, _ = repacked
    g = zarr.open_group(L.capture_store_path(store, CAPS[0]), mode="r")
    assert g[L.IMAGE].chunks == (1, 1, *IMAGE_HW, 3)
    assert g[L.IMAGE].shards == (SHARD, 1, *IMAGE_HW, 3)
    # every shard file of the image array exists: 3 frame shards x 3 cameras
    shard_files = sorted(Path(L.capture_store_path(store, CAPS[0]), "image", "c").rglob("0"))
    assert len([p for p in shard_files if p.is_file()]) == 3 * len(CAMERAS)
    man = read_repack_manifest(Path(store) / L.MANIFESTS_DIR / REPACK_MANIFEST)
    assert (man["status"] == "done").all()
    img_rows = man[(man.capture == CAPS[0].folder) & (man.asset == "image")]
    # tasks are shard-aligned and disjoint: per camera, [0,4) [4,8) [8,10)
    for cam in CAMERAS:
        r = img_rows[img_rows.camera_id == cam].sort_values("frame_start")
        assert list(zip(r.frame_start, r.frame_stop)) == [(0, 4), (4, 8), (8, 10)]
    tasks = man[man.asset != "meta"]
    assert (tasks.peak_rss_mb > 0).all() and (tasks.seconds >= 0).all()
    s = read_samples(Path(store) / L.MANIFESTS_DIR / SAMPLES_MANIFEST)
    assert len(s) == len(CAPS) * N_FRAMES * len(CAMERAS)
    assert s.valid.all() and s.valid_image.all() and s.valid_segmentation.all()
    first = s[(s.capture == CAPS[0].folder)].iloc[len(CAMERAS) + 1]  # frame 1, camera 1
    assert (first.frame_index, first.camera_index, first.camera_id) == (1, 1, CAMERAS[1])
    assert first.segment == "EXP_neutral_peak" and first.subject == CAPS[0].sid
    assert first.frame_id == g.attrs[L.ATTR_FRAME_IDS][1]


def test_rerun_skips_done_tasks(repacked, client):
    raw, store, first = repacked
    again = run(raw, store, client)
    assert again.tasks_run == 0 and again.tasks_skipped == first.tasks_total and not again.recreated


# flush_seconds=0 applies results as they arrive: the masks of a frame range are then written a few cameras at a
# time (read-modify-write of the range's chunks) instead of once for all cameras
@pytest.mark.parametrize("flush_seconds", [10.0, 0.0])
def test_dropped_and_corrupt_frames_are_masked_and_recorded(raw, tmp_path, client, flush_seconds):
    cap, cam = CAPS[0], CAMERAS[1]
    base = raw / cap.folder
    fids = [int(x) for x in read_frame_list((base / cat.FRAME_LIST_KEY).read_bytes()).frame_ids]
    replace_member(base / cat.image_key(cam), cat.image_member(cam, fids[2]), None)  # dropped
    replace_member(base / cat.image_key(cam), cat.image_member(cam, fids[5]), b"not an avif")  # corrupt
    replace_member(base / cat.HEAD_POSE_KEY, cat.head_pose_member(fids[9]), b"1 2 3")  # bad pose
    (base / cat.segmentation_key(CAMERAS[2])).unlink()  # a whole zip missing
    store = tmp_path / "store"
    summary = run(raw, store, client, flush_seconds=flush_seconds)
    assert summary.tasks_failed == 0
    g = zarr.open_group(L.capture_store_path(store, cap), mode="r")
    vi = g[L.valid_name("image")][...]
    assert not vi[2, 1] and not vi[5, 1] and vi.sum() == vi.size - 2
    assert (g[L.IMAGE][2, 1] == 0).all()
    assert g[L.valid_name("segmentation")][:, 2].sum() == 0 and g[L.valid_name("segmentation")][:, :2].all()
    vh = g[L.valid_name("head_pose")][...]
    assert not vh[9] and vh[:9].all() and np.isnan(g[L.HEAD_POSE][9]).all()
    man = read_repack_manifest(Path(store) / L.MANIFESTS_DIR / REPACK_MANIFEST)
    errs = pd.DataFrame([e for es in man.errors for e in es])
    row = errs[errs.member == cat.image_member(cam, fids[2])].iloc[0]
    assert row.capture == cap.folder and row.file.endswith(cat.image_key(cam)) and "missing" in row.reason
    assert "decode" in errs[errs.member == cat.image_member(cam, fids[5])].iloc[0].reason
    assert (errs.file.str.endswith(cat.segmentation_key(CAMERAS[2])) & (errs.reason == "missing file")).any()
    r = man[(man.asset == "image") & (man.camera_id == cam) & (man.frame_start == 4)].iloc[0]
    assert (r.n_missing, r.n_corrupt, r.n_valid) == (0, 1, 3)
    s = read_samples(Path(store) / L.MANIFESTS_DIR / SAMPLES_MANIFEST)
    s0 = s[s.capture == cap.folder].set_index(["frame_index", "camera_index"])
    assert not s0.loc[(2, 1)].valid and not s0.loc[(2, 1)].valid_image and s0.loc[(2, 0)].valid
    assert not s0.loc[(9, 0)].valid and s0.loc[(9, 0)].valid_image  # head pose invalid -> sample invalid
    assert not s0.loc[(0, 2)].valid_segmentation and s0.loc[(0, 2)].valid
    # the second capture is untouched
    assert s[s.capture == CAPS[1].folder].valid.all()


def test_resume_redoes_missing_shards_and_changed_captures(raw, tmp_path, client):
    store = tmp_path / "store"
    first = run(raw, store, client)
    # a shard file lost after its row was written -> only that task is redone
    spath = Path(L.capture_store_path(store, CAPS[0]))
    shard = spath / "image" / "c" / "1" / "2" / "0" / "0" / "0"
    assert shard.is_file()
    shard.unlink()
    again = run(raw, store, client)
    assert again.tasks_run == 1 and shard.is_file() and not again.recreated
    # a changed raw file of capture 1 -> capture 1 recreated and fully redone, capture 0 skipped
    hp = raw / CAPS[1].folder / cat.HEAD_POSE_KEY
    st = hp.stat()
    os.utime(hp, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = run(raw, store, client)
    assert third.recreated == [CAPS[1].folder]
    per_capture = first.tasks_total // 2
    assert third.tasks_run == per_capture and third.tasks_skipped == per_capture
    # a different downsample redoes everything
    fourth = run(raw, store, client, downsample=2)
    assert sorted(fourth.recreated) == sorted(c.folder for c in CAPS)


def test_an_old_format_or_other_checksum_store_is_recreated(raw, tmp_path, client):
    """A capture store of another format version (e.g. 1: chunks without checksums) or chunk-checksum setting
    is recreated from scratch, never mixed with new shards."""
    store = tmp_path / "store"
    run(raw, store, client, captures=CAPS[0].folder)
    path = L.capture_store_path(store, CAPS[0])
    zarr.open_group(path, mode="r+").attrs[L.ATTR_FORMAT_VERSION] = 1
    assert run(raw, store, client, captures=CAPS[0].folder).recreated == [CAPS[0].folder]
    assert run(raw, store, client, captures=CAPS[0].folder).recreated == []
    plain = run(raw, store, client, captures=CAPS[0].folder, checksum=False)
    assert plain.recreated == [CAPS[0].folder] and plain.tasks_failed == 0
    inner = zarr.open_group(path, mode="r")[L.IMAGE].metadata.to_dict()["codecs"][0]["configuration"][
        "codecs"
    ]
    assert [c["name"] for c in inner] == ["bytes"] + [
        c.to_dict()["name"] for c in L.picture_compressors(L.DEFAULT_CODEC)
    ]


def test_fetch_manifest_hash_drives_redo(raw, tmp_path, client):
    def write_fetch(sha: str):
        rows = []
        for c in CAPS:
            for p in sorted((raw / c.folder).rglob("*")):
                if p.is_file():
                    key = p.relative_to(raw / c.folder).as_posix()
                    rows.append(
                        {
                            "capture": c.folder,
                            "key": key,
                            "path": f"{c.folder}/{key}",
                            "bytes": p.stat().st_size,
                            "etag": "",
                            "sha256": sha if c == CAPS[0] else "x",
                            "status": "ok",
                        }  # fmt: skip
                    )
        (raw / "_manifests").mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), raw / "_manifests" / "fetch.parquet")

    write_fetch("a")
    store = tmp_path / "store"
    run(raw, store, client)
    # touching files does not matter once a fetch manifest describes the capture ...
    for p in (raw / CAPS[0].folder).rglob("*.zip"):
        os.utime(p)
    assert run(raw, store, client).tasks_run == 0
    # ... a changed hash in it does
    write_fetch("b")
    assert run(raw, store, client).recreated == [CAPS[0].folder]


def test_downsample_scales_images_labels_and_intrinsics(raw, tmp_path, client):
    store = tmp_path / "store"
    run(raw, store, client, downsample=2, captures=CAPS[0].folder)
    g = zarr.open_group(L.capture_store_path(store, CAPS[0]), mode="r")
    h, w = IMAGE_HW[0] // 2, IMAGE_HW[1] // 2
    assert g[L.IMAGE].shape == (N_FRAMES, len(CAMERAS), h, w, 3)
    assert g.attrs[L.ATTR_IMAGE_SIZE] == [h, w] and g.attrs[L.ATTR_DOWNSAMPLE] == 2
    base = raw / CAPS[0].folder
    fid = g.attrs[L.ATTR_FRAME_IDS][3]
    src = decode_rgb(members(base / cat.image_key(CAMERAS[0]))[cat.image_member(CAMERAS[0], fid)])
    np.testing.assert_array_equal(g[L.IMAGE][3, 0], resize_rgb(src, (h, w)))
    # box filter at factor 2 = mean of each 2x2 block (Pillow rounds)
    block = src.reshape(h, 2, w, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(g[L.IMAGE][3, 0].astype(np.float64) - block).max() <= 1.0
    lab = decode_labels(members(base / cat.segmentation_key(CAMERAS[0]))[datasheet_segmentation_member(fid)])
    np.testing.assert_array_equal(g[L.SEGMENTATION][3, 0], resize_labels(lab, (h, w)))
    assert set(np.unique(g[L.SEGMENTATION][3, 0])) <= set(np.unique(lab))
    # intrinsics: the stored K maps a world point to where the source pixel lands after downsampling
    cal = read_calibration((base / cat.CALIBRATION_KEY).read_bytes())
    k_src = L.sensor_to_image_intrinsics(cal.intrinsics[0], IMAGE_HW)  # K of the raw 64x96 images
    k_dst = g[L.CAMERA_INTRINSICS][0].astype(np.float64)
    p = np.array([12.0, -7.0, 900.0])
    u_src = (k_src @ p)[:2] / p[2]
    u_dst = (k_dst @ p)[:2] / p[2]
    np.testing.assert_allclose(u_dst, (u_src + 0.5) * 0.5 - 0.5, rtol=1e-5)
    np.testing.assert_allclose(k_dst[0, 0], cal.intrinsics[0, 0, 0] * w / cat.SENSOR_WIDTH, rtol=1e-5)
    np.testing.assert_allclose(k_dst[1, 1], cal.intrinsics[0, 1, 1] * h / cat.SENSOR_HEIGHT, rtol=1e-5)
    # textures are not downsampled
    assert g[L.UV_TEXTURE].shape == (N_FRAMES, TEXTURE, TEXTURE, 3)


def test_store_opens_with_xarray_and_info_cli(repacked):
    import xarray as xr

    raw, store, _ = repacked
    path = L.capture_store_path(store, CAPS[0])
    ds = xr.open_zarr(path, consolidated=False, chunks=None)
    assert ds["image"].dims == ("frame", "camera", "height", "width", "rgb")
    assert ds["image"].dtype == np.uint8
    assert ds.sizes["frame"] == N_FRAMES and ds.sizes["camera"] == len(CAMERAS)
    np.testing.assert_array_equal(ds["image"][4, 2].values, zarr.open_group(path, mode="r")[L.IMAGE][4, 2])
    cam_ids = zarr.open_group(path, mode="r").attrs[L.ATTR_CAMERA_IDS]
    assert list(ds["camera"].values) == cam_ids and ds["frame"].values.dtype == np.int64
    np.testing.assert_array_equal(
        ds["image"].sel(camera=cam_ids[2]).isel(frame=4).values, ds["image"][4, 2].values
    )
    cam = xr.open_zarr(path, group="calibration", consolidated=False, chunks=None)
    assert cam["intrinsics"].shape == (len(CAMERAS), 3, 3)
    valid = xr.open_zarr(path, group="valid", consolidated=False, chunks=None)
    assert bool(valid["image"].all())
    res = CliRunner().invoke(cli, ["info", str(store)])
    assert res.exit_code == 0, res.output
    assert "2 capture(s)" in res.output and CAPS[0].folder in res.output and "0/30" in res.output
    res = CliRunner().invoke(cli, ["info", str(store), "--json"])
    info = json.loads(res.output)
    assert info["captures"][0]["assets"]["image"]["invalid"] == 0

    def walked(p):  # bytes of every file under p, independently of info's one listing per capture
        return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())

    cap = info["captures"][0]
    cpath = L.capture_store_path(store, cap["capture"])
    assert cap["bytes"] == walked(cpath)
    for asset in ("image", "encoder_image"):
        assert cap["assets"][asset]["bytes"] == walked(f"{cpath}/{L.ASSET_ARRAYS[asset]}") > 0


def test_cli_errors_are_clean(tmp_path):
    res = CliRunner().invoke(cli, ["repack", str(tmp_path / "nope"), str(tmp_path / "store")])
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "store").exists()  # a failed command creates nothing
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(
        cli, ["repack", str(tmp_path / "empty"), str(tmp_path / "store"), "--workers", "1"]
    )
    assert res.exit_code == 1 and "no capture folders" in res.output
    assert not (tmp_path / "store").exists()


def test_cli_repack_runs_a_local_cluster(raw, tmp_path):
    store = tmp_path / "store"
    res = CliRunner().invoke(
        cli, ["repack", str(raw), str(store), "--captures", CAPS[1].folder, "--workers", "1", "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert "0 failed" in res.output
    assert L.list_capture_stores(store) == [CAPS[1].folder]


def test_synthetic_release_capture_with_drops(tmp_path, client):
    """A capture from ava256.synth (the format-exact generator) with dropped entries: every drop the
    generator reports is masked invalid and recorded as a missing member; nothing else is."""
    from ava256.synth.generate import generate_capture

    raw = tmp_path / "raw"
    cap = CAPS[0]
    info = generate_capture(
        raw, cap, cameras=3, frames=12, image_size=(48, 72), texture_size=32, drop_rate=0.2, seed=3
    )
    store = tmp_path / "store"
    summary = run(raw, store, client)
    assert summary.tasks_failed == 0
    g = zarr.open_group(L.capture_store_path(store, cap), mode="r")
    fids = g.attrs[L.ATTR_FRAME_IDS]
    assert fids == [int(f) for f in info["frame_ids"]]
    cams = g.attrs[L.ATTR_CAMERA_IDS]
    dropped = info["dropped"]
    vi = g[L.valid_name("image")][...]
    expect = np.array([[f not in set(dropped["image"][c]) for c in cams] for f in fids])
    np.testing.assert_array_equal(vi, expect)
    assert not expect.all(), "the generator was asked for drops"
    for asset in ("head_pose", "vertices", "uv_texture", "keypoints_3d"):
        np.testing.assert_array_equal(
            g[L.valid_name(asset)][...], [f not in set(dropped.get(asset, [])) for f in fids]
        )
    man = read_repack_manifest(Path(store) / L.MANIFESTS_DIR / REPACK_MANIFEST)
    n_drops = sum(len(v) for v in dropped["image"].values())
    assert man[man.asset == "image"].n_missing.sum() == n_drops and man.n_corrupt.sum() == 0
    # valid frames hold exactly what the files decode to
    ci, fi = 1, int(np.flatnonzero(expect[:, 1])[0])
    data = members(raw / cap.folder / cat.image_key(cams[ci]))[cat.image_member(cams[ci], fids[fi])]
    np.testing.assert_array_equal(g[L.IMAGE][fi, ci], decode_rgb(data))


def test_cli_codec_choices_match_the_layout():
    opt = next(p for p in cli.commands["repack"].params if p.name == "codec")
    assert tuple(opt.type.choices) == L.STORE_CODECS and opt.default == L.DEFAULT_CODEC


def test_encode_thread_variant_writes_the_same_store(repacked, tmp_path, client):
    """Compressing in a helper thread (used with spare cores) gives the same arrays as inline encoding."""
    raw, store, _ = repacked
    other = tmp_path / "store"
    s = run(raw, other, client, captures=CAPS[0].folder, encode_thread=True)
    assert s.tasks_failed == 0
    a = zarr.open_group(L.capture_store_path(store, CAPS[0]), mode="r")
    b = zarr.open_group(L.capture_store_path(other, CAPS[0]), mode="r")
    for name in (L.IMAGE, L.SEGMENTATION, L.UV_TEXTURE, L.VERTICES, L.ENCODER_IMAGE):
        np.testing.assert_array_equal(a[name][...], b[name][...])


def test_a_local_cluster_with_spare_cores_compresses_in_a_helper_thread(raw_pristine, tmp_path, client):
    """The helper thread (``benchmarks/repack.py`` variant ``encode-thread``) is used whenever a local cluster
    leaves two cores per worker thread, and not on a given cluster (whose cores repack cannot see)."""
    kw = dict(captures=CAPS[0].folder, max_frames_per_shard=SHARD, task_target_frames=TASK, progress=False)
    local = repack(raw_pristine, tmp_path / "local", workers=1, **kw)
    assert local.tasks_failed == 0 and local.encode_thread == ((os.cpu_count() or 1) >= 2)
    assert not run(raw_pristine, tmp_path / "given", client, captures=CAPS[0].folder).encode_thread


def test_scheduler_address_runs_on_that_cluster(raw_pristine, tmp_path):
    """``--scheduler ADDR``: the same graph on an already running cluster (here a threaded LocalCluster)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as lc:
        s = repack(raw_pristine, tmp_path / "store", captures=CAPS[0].folder, scheduler=lc.scheduler_address,
                   progress=False, max_frames_per_shard=SHARD, task_target_frames=TASK)  # fmt: skip
    assert s.tasks_failed == 0 and s.tasks_run == s.tasks_total > 0
    g = zarr.open_group(L.capture_store_path(tmp_path / "store", CAPS[0]), mode="r")
    assert g[L.valid_name("image")][...].all() and g.attrs[L.ATTR_COMPLETE] is True
