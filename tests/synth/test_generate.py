"""Synthetic captures are format-exact and internally coherent."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
from helpers.synth_data import CAMERAS, FRAMES, IMAGE_SIZE, TEXTURE_SIZE

from ava256 import capture as cap
from ava256.capture import ASSETS, ENCODER_CAMERAS, NUM_VERTICES, SENSOR_HEIGHT, SENSOR_WIDTH, capture_keys
from ava256.formats import (
    ZipReader,
    decode_gray,
    decode_labels,
    decode_rgb,
    read_calibration,
    read_frame_list,
    read_head_pose,
    read_keypoints,
    read_npy,
    read_ply,
    read_scalar_txt,
)
from ava256.synth.generate import generate_bucket, generate_capture, parse_size_dims
from ava256.topology import face_topology


def _capture_dir(synth_bucket, k=0):
    root, ids = synth_bucket.raw, synth_bucket.captures
    return root / ids[k].folder


def test_tree_has_every_key_of_the_catalog(synth_bucket):
    root, ids = synth_bucket.raw, synth_bucket.captures
    assert ids == list(cap.release_capture_ids()[:2])
    for cid in ids:
        cal = read_calibration((root / cid.folder / cap.CALIBRATION_KEY).read_bytes())
        assert len(cal) == CAMERAS
        keys = capture_keys(ASSETS, cal.camera_ids)
        missing = [k for k in keys if not (root / cid.folder / k).is_file()]
        assert missing == []
        # nothing else (no temp files)
        files = {
            p.relative_to(root / cid.folder).as_posix() for p in (root / cid.folder).rglob("*") if p.is_file()
        }
        assert files == set(keys)


def test_calibration_is_a_dome_looking_at_the_head(synth_bucket):
    d = _capture_dir(synth_bucket)
    cal = read_calibration((d / cap.CALIBRATION_KEY).read_bytes())
    assert cal.camera_ids == sorted(cal.camera_ids) and all(len(c) == 6 for c in cal.camera_ids)
    assert np.all((cal.intrinsics[:, 0, 0] > 9000) & (cal.intrinsics[:, 0, 0] < 11000))
    with ZipReader(d / cap.HEAD_POSE_KEY) as zr:
        pose = read_head_pose(zr.read(zr.names()[0]))
    head = pose[:, 3].astype(np.float64)
    centers = cal.camera_centers()
    dist = np.linalg.norm(centers - head, axis=1)
    assert np.all((dist > 450) & (dist < 1100))  # framing like the release: face fills the frame
    for i in range(len(cal)):
        pc = cal.extrinsics[i] @ np.append(head, 1.0)
        assert pc[2] > 0
        uv = (cal.intrinsics[i] @ pc)[:2] / pc[2]
        assert (
            0.2 * SENSOR_WIDTH < uv[0] < 0.8 * SENSOR_WIDTH
            and 0.2 * SENSOR_HEIGHT < uv[1] < 0.8 * SENSOR_HEIGHT
        )


def test_frame_lists(synth_bucket):
    d = _capture_dir(synth_bucket)
    fl = read_frame_list((d / cap.FRAME_LIST_KEY).read_bytes())
    assert len(fl) == FRAMES
    assert {"EXP_neutral_peak", "EXP_free_face"} <= set(fl.segments.tolist())
    assert np.all(np.diff(fl.frame_ids) > 0)
    efl = read_frame_list((d / cap.ENCODER_FRAME_LIST_KEY).read_bytes())
    assert len(efl) == FRAMES


def test_small_frame_counts_keep_neutral_and_free_face(tmp_path):
    from ava256.synth.generate import make_frame_list

    fl = make_frame_list(0, cap.release_capture_ids()[0], 2)
    assert fl.segments.tolist() == ["EXP_neutral_peak", "EXP_free_face"]


def test_images_segmentation_and_coherence(synth_bucket):
    d = _capture_dir(synth_bucket)
    cal = read_calibration((d / cap.CALIBRATION_KEY).read_bytes())
    fl = read_frame_list((d / cap.FRAME_LIST_KEY).read_bytes())
    with ZipReader(d / cap.HEAD_POSE_KEY) as zr:
        poses = {n: read_head_pose(zr.read(n)) for n in zr.names()}
    w, h = IMAGE_SIZE
    for i, cid in enumerate(cal.camera_ids):
        with zipfile.ZipFile(d / cap.image_key(cid)) as zf:
            assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        with ZipReader(d / cap.image_key(cid)) as zi, ZipReader(d / cap.segmentation_key(cid)) as zs:
            assert zi.names() == [cap.image_member(cid, f) for f in fl.frame_ids.tolist()]
            assert zs.names() == [cap.segmentation_member(cid, f) for f in fl.frame_ids.tolist()]
            fid = int(fl.frame_ids[0])
            img = decode_rgb(zi.read(cap.image_member(cid, fid)))
            lab = decode_labels(zs.read(cap.segmentation_member(cid, fid)))
        assert zi.read  # closed readers keep their API
        assert img.shape == (h, w, 3) and lab.shape == (h, w)
        assert lab.max() <= 10 and (lab == 0).any() and (lab == 2).any()
        head = np.isin(lab, [1, 2, 6, 7, 8, 9, 10])
        # the head is brighter than the dark background
        assert img[head].mean() > img[lab == 0].mean() + 10
        # and it lies where the head pose projects into this camera
        t = poses[cap.head_pose_member(fid)][:, 3].astype(np.float64)
        k = cal.intrinsics[i].copy()
        k[0] *= w / SENSOR_WIDTH
        k[1] *= h / SENSOR_HEIGHT
        pc = cal.extrinsics[i] @ np.append(t, 1.0)
        proj = (k @ pc)[:2] / pc[2]
        ys, xs = np.nonzero(head)
        assert abs(xs.mean() - proj[0]) < 0.2 * w and abs(ys.mean() - proj[1]) < 0.2 * h


def test_head_poses_plausible(synth_bucket):
    d = _capture_dir(synth_bucket)
    with ZipReader(d / cap.HEAD_POSE_KEY) as zr:
        assert len(zr.names()) == FRAMES
        poses = np.stack([read_head_pose(zr.read(n)) for n in zr.names()])
    r = poses[:, :, :3].astype(np.float64)
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-5)
    angle = np.degrees(np.arccos(np.clip((np.trace(r, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert angle.max() < 45 and angle.max() > 0.5  # moves, but plausibly
    assert np.linalg.norm(poses[:, :, 3], axis=1).max() < 200


def test_meshes_mean_and_variance(synth_bucket):
    d = _capture_dir(synth_bucket)
    with ZipReader(d / cap.VERTICES_KEY) as zr:
        assert len(zr.names()) == FRAMES
        verts = np.stack([read_ply(zr.read(n)) for n in zr.names()])
    assert verts.shape == (FRAMES, NUM_VERTICES, 3)
    base = face_topology().vertices
    assert np.abs(verts - base).max() < 40  # head frame: near the template
    assert np.abs(verts - verts[0]).max() > 1  # expressions change the mesh
    mean = read_npy((d / cap.VERTICES_MEAN_KEY).read_bytes())
    np.testing.assert_allclose(mean, verts.mean(0), atol=1e-3)
    var = read_scalar_txt((d / cap.VERTICES_VARIANCE_KEY).read_bytes())
    assert var == pytest.approx(float(np.mean((verts - verts.mean(0)) ** 2)), rel=1e-3)


def test_keypoints_have_missing_rows(synth_bucket):
    d = _capture_dir(synth_bucket)
    with ZipReader(d / cap.KEYPOINTS_KEY) as zr:
        kps = np.stack([read_keypoints(zr.read(n)) for n in zr.names()])
        raw = read_npy(zr.read(zr.names()[0]))
    assert raw.ndim == 2 and raw.shape[1] == 6 and raw.shape[0] < 274
    absent = np.isnan(kps[..., 0])
    assert absent.any() and (~absent).sum() > 0.8 * absent.size
    with ZipReader(d / cap.HEAD_POSE_KEY) as zr:
        head = read_head_pose(zr.read(zr.names()[0]))[:, 3]
    assert np.nanmax(np.linalg.norm(kps[0, :, :3] - head, axis=1)) < 300  # world coordinates, on the head
    assert np.nanmin(kps[..., 4]) >= 2


def test_uv_textures_and_stats(synth_bucket):
    d = _capture_dir(synth_bucket)
    with ZipReader(d / cap.TEXTURE_KEY) as zr:
        names = zr.names()
        assert names[0].startswith("color/") and names[0].endswith(".avif") and len(names) == FRAMES
        tex = decode_rgb(zr.read(names[0]))
    assert tex.shape == (TEXTURE_SIZE, TEXTURE_SIZE, 3)
    mean = decode_rgb((d / cap.TEXTURE_MEAN_KEY).read_bytes())
    assert mean.shape == (TEXTURE_SIZE, TEXTURE_SIZE, 3)
    assert np.abs(mean.astype(float) - tex).mean() < 20
    assert read_scalar_txt((d / cap.TEXTURE_VARIANCE_KEY).read_bytes()) > 0


def test_encoder_images(synth_bucket):
    d = _capture_dir(synth_bucket)
    efl = read_frame_list((d / cap.ENCODER_FRAME_LIST_KEY).read_bytes())
    for name in ENCODER_CAMERAS:
        with ZipReader(d / cap.encoder_image_key(name)) as zr:
            assert zr.names() == [cap.encoder_image_member(f) for f in efl.frame_ids.tolist()]
            g = decode_gray(zr.read(zr.names()[0]))
            rgb = decode_rgb(zr.read(zr.names()[0]))
        side = round(400 * IMAGE_SIZE[0] / 667)
        assert g.shape == (side, side) and g.std() > 5
        assert np.abs(rgb.astype(int) - rgb[..., :1]).max() <= 2  # greyscale-looking


def test_captures_differ(synth_bucket):
    root, ids = synth_bucket.raw, synth_bucket.captures
    a = (root / ids[0].folder / cap.VERTICES_MEAN_KEY).read_bytes()
    b = (root / ids[1].folder / cap.VERTICES_MEAN_KEY).read_bytes()
    assert a != b


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_deterministic_and_seed_dependent(tmp_path):
    cid = cap.release_capture_ids()[5]
    kw = dict(
        cameras=2, frames=3, image_size=(16, 24), texture_size=16, assets=["image", "vertices", "head_pose"]
    )
    generate_capture(tmp_path / "a", cid, seed=1, **kw)
    generate_capture(tmp_path / "b", cid, seed=1, **kw)
    generate_capture(tmp_path / "c", cid, seed=2, **kw)
    da, db, dc = (_digest(tmp_path / x / cid.folder) for x in "abc")
    assert da == db
    assert da[cap.CALIBRATION_KEY] != dc[cap.CALIBRATION_KEY]
    # only the chosen assets (plus meta) were written
    assert not (tmp_path / "a" / cid.folder / cap.KEYPOINTS_KEY).exists()


def test_forced_drops_are_missing_entries(tmp_path):
    cid = cap.release_capture_ids()[7]
    frames, cameras = 10, 3
    res = generate_capture(
        tmp_path,
        cid,
        cameras=cameras,
        frames=frames,
        image_size=(16, 24),
        texture_size=16,
        drop_rate=0.2,
        assets=["image", "segmentation", "head_pose", "vertices", "uv_texture", "keypoints_3d"],
    )
    d = tmp_path / cid.folder
    dropped = res["dropped"]
    n_img = sum(len(v) for v in dropped["image"].values())
    assert n_img in (6, 7)  # floor(0.2 * 30) plus maybe one
    for camera_id, fids in dropped["image"].items():
        expect = [f for f in res["frame_ids"] if f not in fids]
        with ZipReader(d / cap.image_key(camera_id)) as zr:
            assert zr.names() == [cap.image_member(camera_id, f) for f in expect]
        with ZipReader(d / cap.segmentation_key(camera_id)) as zr:
            assert zr.names() == [cap.segmentation_member(camera_id, f) for f in expect]
    for asset, key, member in (
        ("head_pose", cap.HEAD_POSE_KEY, cap.head_pose_member),
        ("vertices", cap.VERTICES_KEY, cap.vertices_member),
        ("uv_texture", cap.TEXTURE_KEY, cap.texture_member),
        ("keypoints_3d", cap.KEYPOINTS_KEY, cap.keypoints_member),
    ):
        assert len(dropped[asset]) == 2
        with ZipReader(d / key) as zr:
            assert zr.names() == [member(f) for f in res["frame_ids"] if f not in dropped[asset]]


def test_all_dropped_still_writes_archives(tmp_path):
    cid = cap.release_capture_ids()[1]
    res = generate_capture(
        tmp_path, cid, cameras=1, frames=2, image_size=(16, 24), drop_rate=1.0, assets=["image"]
    )
    with ZipReader(tmp_path / cid.folder / cap.image_key(res["camera_ids"][0])) as zr:
        assert zr.names() == []


def test_release_image_sizes(tmp_path):
    assert parse_size_dims("4TB", None) == (667, 1024)
    assert parse_size_dims("32TB", None) == (1334, 2048)
    cid = cap.release_capture_ids()[2]
    res = generate_capture(tmp_path, cid, cameras=1, frames=1, texture_size=16, assets=["image"], drop_rate=0)
    with ZipReader(tmp_path / cid.folder / cap.image_key(res["camera_ids"][0])) as zr:
        img = decode_rgb(zr.read(zr.names()[0]))
    assert img.shape == (1024, 667, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cameras=0), "at least one camera"),
        (dict(frames=0), "at least one"),
        (dict(size="3TB"), "unknown release size"),
        (dict(drop_rate=1.5), "drop_rate"),
        (dict(image_size=(2, 2)), "at least 4"),
        (dict(assets=["pictures"]), "unknown asset"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_capture(tmp_path, cap.release_capture_ids()[0], **kwargs)


def test_bucket_workers_do_not_change_output(tmp_path):
    kw = dict(captures=2, cameras=1, frames=2, image_size=(8, 12), texture_size=8, assets=["head_pose"])
    generate_bucket(tmp_path / "one", workers=1, **kw)
    generate_bucket(tmp_path / "two", workers=2, **kw)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_cli_synth(tmp_path):
    from click.testing import CliRunner

    from ava256.cli import cli

    r = CliRunner().invoke(
        cli,
        [
            "synth",
            str(tmp_path),
            "--captures",
            "1",
            "--cameras",
            "2",
            "--frames",
            "3",
            "--image-size",
            "16x24",
            "--texture-size",
            "16",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 1 capture(s)" in r.output
    cid = cap.release_capture_ids()[0]
    assert (tmp_path / "ava-256" / "4TB" / cid.folder / cap.CALIBRATION_KEY).is_file()
    bad = CliRunner().invoke(cli, ["synth", str(tmp_path), "--image-size", "big"])
    assert bad.exit_code != 0 and "WIDTHxHEIGHT" in bad.output
    bad = CliRunner().invoke(cli, ["synth", str(tmp_path), "--size", "5TB"])
    assert bad.exit_code == 2 and "5TB" in bad.output and "Traceback" not in bad.output  # a usage error
