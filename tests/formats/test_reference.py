"""Readers against the real files of the public release (../shared/reference)."""

from __future__ import annotations

import numpy as np
import pytest

from ava256.capture import NUM_VERTICES
from ava256.formats import (
    decode_rgb,
    read_calibration,
    read_krt,
    read_obj,
    read_ply,
    write_calibration,
    write_ply,
)


def test_calibration_json_untransposes(ref_bytes):
    cal = read_calibration(ref_bytes("camera_calibration.json"))
    assert cal.camera_ids == ["400940"]
    k = cal.intrinsics[0]
    assert k[0, 0] == pytest.approx(10355.088822966874)
    assert k[1, 1] == pytest.approx(10348.63046928018)
    assert k[0, 2] == pytest.approx(1413.0678767818574)
    assert k[1, 2] == pytest.approx(1783.6004577007388)
    assert k[0, 1] == 0 and np.array_equal(k[2], [0, 0, 1])
    rt = cal.extrinsics[0]
    # translation in the last column, rotation orthonormal
    np.testing.assert_allclose(rt[:, 3], [-854.7404175868919, 576.3864655587835, 988.4146443065116])
    np.testing.assert_allclose(rt[:, :3] @ rt[:, :3].T, np.eye(3), atol=1e-9)
    assert cal.distortion.shape == (1, 4)
    assert cal.projection_models == ["Pinhole"]
    assert cal.distortion_models == ["RadialAndTangential"]
    # camera about 1.4 m from the world origin, as on the capture dome
    assert 1000 < np.linalg.norm(cal.camera_centers()[0]) < 2000


def test_calibration_round_trip(ref_bytes):
    cal = read_calibration(ref_bytes("camera_calibration.json"))
    again = read_calibration(write_calibration(cal))
    assert again.camera_ids == cal.camera_ids
    np.testing.assert_array_equal(again.intrinsics, cal.intrinsics)
    np.testing.assert_array_equal(again.extrinsics, cal.extrinsics)
    np.testing.assert_array_equal(again.distortion, cal.distortion)


def test_krt_text(ref_bytes):
    cal = read_krt(ref_bytes("KRT"))
    assert len(cal) == 38
    assert cal.camera_ids == sorted(cal.camera_ids)
    i = cal.index("400069")
    np.testing.assert_allclose(
        cal.intrinsics[i], [[7724.681, 0, 797.0469], [0, 7724.834, 924.32745], [0, 0, 1]]
    )
    np.testing.assert_allclose(cal.extrinsics[i][:, 3], [-270.26154, -291.6677, 121.37361])
    r = cal.extrinsics[:, :, :3]
    np.testing.assert_allclose(r @ r.transpose(0, 2, 1), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)


def test_face_topology_obj_counts(ref_bytes):
    topo = read_obj(ref_bytes("face_topology.obj"))
    assert topo.vertices.shape == (7306, 3)
    assert topo.uvs.shape == (5779, 2)
    assert topo.faces.shape == (11432, 3) and topo.faces_uv.shape == (11432, 3)
    assert topo.faces.min() == 0 and topo.faces.max() == 7305
    assert topo.faces_uv.min() >= 0 and topo.faces_uv.max() == 5778
    assert 0 <= topo.uvs.min() and topo.uvs.max() <= 1


@pytest.mark.parametrize("binary", [True, False])
def test_real_mesh_ply_round_trip(ref_bytes, binary):
    verts = np.frombuffer(ref_bytes("021924.bin"), dtype="<f4").reshape(-1, 3)
    assert verts.shape == (NUM_VERTICES, 3)
    out = read_ply(write_ply(verts, binary=binary))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, verts)


def test_real_image_decodes(ref_bytes):
    img = decode_rgb(ref_bytes("021924.png"))
    assert img.shape == (2048, 1334, 3) and img.dtype == np.uint8
    assert img.std() > 10  # a real photo, not a flat image
