"""Malformed inputs fail with a ValueError that names the problem (or a documented NaN policy)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from ava256.formats import (
    ZipReader,
    decode_labels,
    decode_rgb,
    encode_avif,
    encode_png,
    read_calibration,
    read_frame_list,
    read_head_pose,
    read_keypoints,
    read_krt,
    read_npy,
    read_obj,
    read_ply,
    read_scalar_txt,
    write_keypoints,
    write_ply,
    write_stored_zip,
)
from ava256.formats.scalars import write_npy

GOOD_CAM = {
    "cameraId": "400940",
    "K": [[100.0, 0, 0], [0, 100.0, 0], [50.0, 60.0, 1.0]],
    "distortion": [0, 0, 0, 0],
    "T": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 2.0, 3.0, 1.0]],
}


def _cal(**over):
    return json.dumps({"KRT": [{**GOOD_CAM, **over}]}).encode()


def test_calibration_good_minimal():
    cal = read_calibration(_cal())
    np.testing.assert_allclose(cal.extrinsics[0][:, 3], [1, 2, 3])
    assert cal.intrinsics[0][0, 2] == 50


@pytest.mark.parametrize(
    "data, match",
    [
        (b"{not json", "invalid JSON"),
        (b'{"cams": []}', "'KRT' list"),
        (b'{"KRT": []}', "no cameras"),
        (_cal(K=[[1, 0], [0, 1]]), "K: shape"),
        (_cal(K=[[100.0, 0, 5.0], [0, 100.0, 6.0], [0, 0, 1.0]]), "K: un-transposed last row"),
        (_cal(T=[[1.0, 0, 0, 5.0], [0, 1.0, 0, 5.0], [0, 0, 1.0, 5.0], [0, 0, 0, 1.0]]), "T: un-transposed"),
        (_cal(T=[[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, "x", 0], [0, 0, 0, 1.0]]), "T: not a numeric"),
        (_cal(distortion=[0.1]), "distortion"),
        (json.dumps({"KRT": [GOOD_CAM, GOOD_CAM]}).encode(), "more than once"),
        (json.dumps({"KRT": [{"K": GOOD_CAM["K"]}]}).encode(), "lacks"),
    ],
)
def test_calibration_errors(data, match):
    with pytest.raises(ValueError, match=match):
        read_calibration(data)


_V4 = np.arange(12, dtype=np.float32).reshape(4, 3)
_PLY_BIN = write_ply(_V4)
_PLY_ASCII = write_ply(_V4, binary=False)
_KP = lambda rows: write_npy(np.array(rows, np.float32))  # noqa: E731

# (reader, malformed bytes, what the ValueError must say)
READER_ERRORS = {
    "krt-truncated": (read_krt, b"400069\n1 0 0\n0 1 0\n0 0 1\n", "truncated"),
    "frames-no-columns": (read_frame_list, b"seg,frame\nA,1\n", "lacks"),
    "frames-bad-id": (read_frame_list, b"seg_id,frame_id\nA,1\nA,x\n", "line 3: frame_id 'x'"),
    "frames-duplicate": (read_frame_list, b"seg_id,frame_id\nA,1\nB,1\n", "duplicate"),
    "frames-fields": (read_frame_list, b"seg_id,frame_id\nA,1,2\n", "line 2: 3 fields"),
    "frames-negative": (read_frame_list, b"seg_id,frame_id\nA,-1\n", "negative"),
    "pose-3x3": (read_head_pose, b"1 0 0\n0 1 0\n0 0 1\n", "expected a 3x4"),
    "pose-text": (read_head_pose, b"1 0 0 a\n0 1 0 0\n0 0 1 0\n", "non-numeric"),
    "pose-last-row": (read_head_pose, b"1 0 0 5\n0 1 0 6\n0 0 1 7\n1 0 0 1\n", "last row"),
    "ply-truncated": (read_ply, _PLY_BIN[:-5], "truncated binary body"),
    "ply-trailing": (read_ply, _PLY_BIN + b"\0" * 12, "header says 4 vertices"),
    "ply-ascii-short": (
        read_ply,
        _PLY_ASCII.replace(b"element vertex 4", b"element vertex 5"),
        "truncated ascii",
    ),
    "ply-ascii-long": (
        read_ply,
        _PLY_ASCII.replace(b"element vertex 4", b"element vertex 3"),
        "header says 3 vertices",
    ),
    "ply-magic": (read_ply, b"PNG...", "magic"),
    "ply-no-end-header": (read_ply, _PLY_BIN[:40], "end_header"),
    "ply-no-xyz": (
        read_ply,
        b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n",
        "lacks",
    ),
    "keypoints-id-range": (read_keypoints, _KP([[274, 0, 0, 0, 1, 1]]), "out of range"),
    "keypoints-shape": (read_keypoints, write_npy(np.zeros((3, 5), np.float32)), "shape"),
    "keypoints-duplicate": (read_keypoints, _KP([[3, 0, 0, 0, 1, 1]] * 2), "duplicate"),
    "keypoints-non-integer": (read_keypoints, _KP([[3.5, 0, 0, 0, 1, 1]]), "non-integer"),
    "keypoints-truncated": (read_keypoints, write_npy(np.zeros((2, 6), np.float32))[:-4], "npy"),
    "scalar-two": (read_scalar_txt, b"1 2", "exactly one"),
    "scalar-text": (read_scalar_txt, b"abc", "not a number"),
    "npy-garbage": (read_npy, b"garbage", "npy"),
    "obj-quad": (read_obj, b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nf 1 2 3 4\n", "only triangles"),
    "obj-index": (read_obj, b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "out of range"),
}


@pytest.mark.parametrize("case", list(READER_ERRORS))
def test_reader_errors(case):
    reader, data, match = READER_ERRORS[case]
    with pytest.raises(ValueError, match=match):
        reader(data)


def test_lenient_cases():
    assert len(read_frame_list(b"seg_id,frame_id\n")) == 0
    fl = read_frame_list(b"frame_id,seg_id\r\n7,EXP_a\r\n9,EXP_b\r\n")
    assert fl.frame_ids.tolist() == [7, 9] and fl.segments.tolist() == ["EXP_a", "EXP_b"]
    pose = read_head_pose(b"nan nan nan nan\nnan nan nan nan\nnan nan nan nan\n")
    assert pose.shape == (3, 4) and np.isnan(pose).all()  # returned for masking, not an error
    pose = read_head_pose(b"1 0 0 5\n0 1 0 6\n0 0 1 7\n0 0 0 1\n")
    np.testing.assert_array_equal(pose[:, 3], [5, 6, 7])
    assert np.isnan(read_keypoints(write_npy(np.zeros((0, 6), np.float32)))).all()
    assert read_scalar_txt(b" 1.5e3\n") == 1500.0
    topo = read_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf -3/1 -2/1 -1/1\n")
    assert topo.faces.tolist() == [[0, 1, 2]] and topo.faces_uv.tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError, match="out of range"):
        write_keypoints(np.array([[-1, 0, 0, 0, 1, 1]], np.float32))


def test_ply_big_endian_double_with_extra_props_and_faces():
    v = np.random.default_rng(0).normal(size=(5, 3))
    rec = np.zeros(5, dtype=[("nx", ">f4"), ("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("red", "u1")])
    rec["x"], rec["y"], rec["z"] = v.T
    faces = np.array([(3, 0, 1, 2)], dtype=[("n", "u1"), ("a", ">i4"), ("b", ">i4"), ("c", ">i4")])
    header = (
        b"ply\nformat binary_big_endian 1.0\ncomment made by test\nelement vertex 5\nproperty float nx\n"
        b"property double x\nproperty double y\nproperty double z\nproperty uchar red\n"
        b"element face 1\nproperty list uchar int vertex_indices\nend_header\n"
    )
    out = read_ply(header + rec.tobytes() + faces.tobytes())
    np.testing.assert_allclose(out, v.astype(np.float32))


def test_images_round_trip_and_errors():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (24, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_rgb(encode_png(rgb)), rgb)
    avif = decode_rgb(encode_avif(rgb, 90))
    assert avif.shape == rgb.shape
    labels = rng.integers(0, 11, (24, 16), dtype=np.uint8)
    np.testing.assert_array_equal(decode_labels(encode_png(labels)), labels)
    with pytest.raises(ValueError, match="single-channel"):
        decode_labels(encode_png(rgb))
    with pytest.raises(ValueError, match="cannot decode"):
        decode_rgb(b"not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        decode_rgb(encode_avif(rgb, 63)[:50])
    with pytest.raises(ValueError, match="uint8"):
        encode_avif(rgb.astype(np.float32), 63)


def test_zip_reader(tmp_path):
    path = tmp_path / "cam1.zip"
    write_stored_zip(path, [("cam1/000001.avif", b"abc"), ("cam1/000002.avif", b"defg" * 100)])
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    # add hostile names with the raw zipfile API
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("../evil.txt", b"x")
        zf.writestr("/abs.txt", b"x")
    with ZipReader(path) as zr:
        assert zr.names() == ["cam1/000001.avif", "cam1/000002.avif"]
        assert sorted(zr.unsafe) == sorted(["/abs.txt", "../evil.txt"])
        assert zr.read("cam1/000001.avif") == b"abc"
        assert zr.has("cam1/000002.avif") and not zr.has("../evil.txt")
        with pytest.raises(KeyError):
            zr.read("../evil.txt")
        with pytest.raises(KeyError):
            zr.read("cam1/000003.avif")
    # corrupt one member's data in place -> CRC error naming the member
    raw = bytearray(path.read_bytes())
    pos = raw.find(b"defgdefg")
    raw[pos : pos + 4] = b"XXXX"
    with ZipReader(io.BytesIO(bytes(raw))) as zr:
        assert zr.read("cam1/000001.avif") == b"abc"
        with pytest.raises(zipfile.BadZipFile, match="000002.avif"):
            zr.read("cam1/000002.avif")
    with pytest.raises(zipfile.BadZipFile):
        ZipReader(io.BytesIO(b"not a zip"))
