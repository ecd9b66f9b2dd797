"""Property tests: writers and readers are inverse; keypoints/head pose/frame list/PLY."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ava256.capture import NUM_KEYPOINTS
from ava256.formats import (
    Calibration,
    FrameList,
    read_calibration,
    read_frame_list,
    read_head_pose,
    read_keypoints,
    read_ply,
    write_calibration,
    write_frame_list,
    write_head_pose,
    write_keypoints,
    write_ply,
)

finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(hnp.arrays(np.float32, st.tuples(st.integers(0, 50), st.just(3)), elements=finite32), st.booleans())
def test_ply_round_trip(verts, binary):
    out = read_ply(write_ply(verts, binary=binary))
    assert out.shape == verts.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, verts)


@FAST
@given(hnp.arrays(np.float32, (3, 4), elements=finite32))
def test_head_pose_round_trip(pose):
    np.testing.assert_array_equal(read_head_pose(write_head_pose(pose)), pose)


@FAST
@given(
    st.lists(st.integers(0, NUM_KEYPOINTS - 1), unique=True, max_size=NUM_KEYPOINTS),
    st.randoms(use_true_random=False),
)
def test_keypoints_round_trip(ids, rnd):
    rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
    rows = np.zeros((len(ids), 6), np.float32)
    rows[:, 0] = ids
    rows[:, 1:] = rng.normal(size=(len(ids), 5)).astype(np.float32)
    dense = read_keypoints(write_keypoints(rows))
    assert dense.shape == (NUM_KEYPOINTS, 5) and dense.dtype == np.float32
    present = np.zeros(NUM_KEYPOINTS, bool)
    present[ids] = True
    assert np.isnan(dense[~present]).all()
    np.testing.assert_array_equal(dense[rows[:, 0].astype(int)], rows[:, 1:])


segment = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_-"),
    min_size=1,
    max_size=20,
)


@FAST
@given(st.lists(st.tuples(segment, st.integers(0, 10**7)), unique_by=lambda r: r[1], max_size=60))
def test_frame_list_round_trip(rows):
    fl = FrameList(np.array([r[0] for r in rows], dtype=str), np.array([r[1] for r in rows], dtype=np.int64))
    again = read_frame_list(write_frame_list(fl))
    assert again.segments.tolist() == fl.segments.tolist()
    np.testing.assert_array_equal(again.frame_ids, fl.frame_ids)
    assert again.frame_ids.dtype == np.int64


@FAST
@given(st.integers(1, 6), st.randoms(use_true_random=False))
def test_calibration_round_trip(n, rnd):
    rng = np.random.default_rng(rnd.randint(0, 2**32 - 1))
    ids = sorted({str(400000 + int(x)) for x in rng.integers(0, 999, n)})
    c = len(ids)
    k = np.tile(np.eye(3), (c, 1, 1))
    k[:, 0, 0], k[:, 1, 1] = rng.uniform(5e3, 1e4, c), rng.uniform(5e3, 1e4, c)
    k[:, 0, 2], k[:, 1, 2] = rng.uniform(1000, 1600, c), rng.uniform(1800, 2200, c)
    q, _ = np.linalg.qr(rng.normal(size=(c, 3, 3)))
    ext = np.concatenate([q, rng.normal(0, 1000, (c, 3, 1))], axis=2)
    cal = Calibration(ids, k, ext, rng.normal(0, 0.05, (c, 4)))
    again = read_calibration(write_calibration(cal))
    assert again.camera_ids == ids
    np.testing.assert_array_equal(again.intrinsics, cal.intrinsics)
    np.testing.assert_array_equal(again.extrinsics, cal.extrinsics)
    np.testing.assert_array_equal(again.distortion, cal.distortion)


def test_calibration_subset_and_centers():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3, 3)))
    centers = rng.normal(0, 1000, (3, 3))
    ext = np.concatenate([q, -np.einsum("cij,cj->ci", q, centers)[:, :, None]], axis=2)
    cal = Calibration(["400002", "400010", "400100"], np.tile(np.eye(3), (3, 1, 1)), ext, np.zeros((3, 4)))
    np.testing.assert_allclose(cal.camera_centers(), centers, atol=1e-9)
    sub = cal.subset(["400100", "400002"])
    assert sub.camera_ids == ["400002", "400100"]
    np.testing.assert_array_equal(sub.extrinsics[1], cal.extrinsics[2])
    with pytest.raises(KeyError):
        cal.subset(["999999"])
