from __future__ import annotations

import numpy as np

from ava256.capture import NUM_VERTICES
from ava256.topology import face_topology, region_weights


def test_face_topology_shape_and_validity():
    t = face_topology()
    assert t.vertices.shape == (NUM_VERTICES, 3) and t.vertices.dtype == np.float32
    assert t.uvs.shape == (NUM_VERTICES, 2)
    assert 0.0 <= t.uvs.min() and t.uvs.max() <= 1.0
    assert 10_000 <= len(t.faces) <= 14_000
    assert t.faces.min() == 0 and t.faces.max() == NUM_VERTICES - 1
    np.testing.assert_array_equal(t.faces, t.faces_uv)
    # no degenerate triangles, and almost every vertex is used
    f = t.faces
    assert np.all((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    assert len(np.unique(f)) > 0.99 * NUM_VERTICES
    area = 0.5 * np.linalg.norm(
        np.cross(t.vertices[f[:, 1]] - t.vertices[f[:, 0]], t.vertices[f[:, 2]] - t.vertices[f[:, 0]]), axis=1
    )
    assert area.min() > 0
    # head-sized (mm), facing +z with the nose the front-most point near x = 0
    extent = t.vertices.max(0) - t.vertices.min(0)
    assert np.all((extent > 100) & (extent < 300))
    nose = t.vertices[np.argmax(t.vertices[:, 2])]
    assert abs(nose[0]) < 10


def test_face_topology_deterministic_copies():
    a, b = face_topology(), face_topology()
    np.testing.assert_array_equal(a.vertices, b.vertices)
    a.vertices[:] = 0
    assert face_topology().vertices.any()


def test_region_weights():
    w = region_weights()
    assert set(w) == {"jaw", "smile", "brow", "blink", "cheek"}
    for v in w.values():
        assert v.shape == (NUM_VERTICES,) and 0 <= v.min() and v.max() <= 1 and (v > 0.5).sum() > 50
    verts = face_topology().vertices
    # the jaw region sits below the brow region (y down)
    assert verts[w["jaw"] > 0.5, 1].mean() > verts[w["brow"] > 0.5, 1].mean() + 50


def test_topology_obj_round_trip():
    from ava256.formats import read_obj, write_obj

    t = face_topology()
    back = read_obj(write_obj(t))
    np.testing.assert_array_equal(back.vertices, t.vertices)
    np.testing.assert_array_equal(back.uvs, t.uvs)
    np.testing.assert_array_equal(back.faces, t.faces)
    np.testing.assert_array_equal(back.faces_uv, t.faces_uv)
