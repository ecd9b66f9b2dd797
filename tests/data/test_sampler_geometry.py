"""Sampler (seeded, DDP-aware, exactly resumable), camera-in-head-frame math, normalisation, collate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ava256.data.geometry import camera_in_head_frame, focal_principal, pixel_coords
from ava256.data.loader import collate_samples, pin_batch
from ava256.data.normalization import CaptureStats, combine_stats
from ava256.data.sampler import ResumableSampler


def rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# --- geometry -------------------------------------------------------------------------------------------------


def test_camera_in_head_frame_known_case():
    # Head translated +100 mm along world x, not rotated; camera at the world origin, axes = world axes.
    head = np.hstack([np.eye(3), [[100.0], [0.0], [0.0]]])
    ext = np.hstack([np.eye(3), np.zeros((3, 1))])
    camrot, campos = camera_in_head_frame(ext, head)
    np.testing.assert_allclose(camrot, np.eye(3))
    np.testing.assert_allclose(campos, [-100.0, 0.0, 0.0])
    # Head turned 90 degrees about world z: the camera, seen from the head, turns the other way.
    rz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    head = np.hstack([rz, [[0.0], [0.0], [0.0]]])
    ext = np.hstack([np.eye(3), [[0.0], [0.0], [-500.0]]])  # camera centre at world z = +500
    camrot, campos = camera_in_head_frame(ext, head)
    np.testing.assert_allclose(camrot, rz, atol=1e-6)
    np.testing.assert_allclose(campos, [0.0, 0.0, 500.0], atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_camera_in_head_frame_projects_like_world_composition(seed):
    rng = np.random.default_rng(seed)
    Rc, Rh = rotation(rng), rotation(rng)
    tc, th = rng.normal(scale=800, size=3), rng.normal(scale=300, size=3)
    ext, head = np.hstack([Rc, tc[:, None]]), np.hstack([Rh, th[:, None]])
    camrot, campos = camera_in_head_frame(ext, head)
    x_head = rng.normal(scale=100, size=(20, 3))
    via_world = (Rc @ (Rh @ x_head.T + th[:, None]) + tc[:, None]).T
    via_head = (camrot.astype(np.float64) @ (x_head - campos.astype(np.float64)).T).T
    np.testing.assert_allclose(
        via_head, via_world, rtol=0, atol=2e-3 * max(1.0, np.abs(via_world).max() / 1000)
    )
    assert abs(np.linalg.det(camrot) - 1) < 1e-5


def test_focal_principal_and_pixel_coords():
    f, c = focal_principal(np.array([[10.0, 0, 3.5], [0, 11.0, 4.5], [0, 0, 1]]))
    assert f.tolist() == [10.0, 11.0] and c.tolist() == [3.5, 4.5]
    pc = pixel_coords(3, 4)
    assert pc.shape == (3, 4, 2) and pc.dtype == np.float32
    assert pc[2, 1].tolist() == [1.0, 2.0]  # (x, y) of row 2, column 1


# --- normalisation --------------------------------------------------------------------------------------------


def test_combine_stats_law_of_total_variance():
    rng = np.random.default_rng(0)
    caps = [
        CaptureStats(
            f"c{i}",
            rng.uniform(0, 255, (4, 4, 3)),
            float(rng.uniform(10, 100)),
            rng.normal(size=(5, 3)) * 50,
            float(rng.uniform(1, 9)),
        )
        for i in range(3)
    ]
    s = combine_stats(caps)
    tm = np.mean([c.tex_mean for c in caps], axis=0)
    np.testing.assert_allclose(s.tex_mean.numpy(), tm.transpose(2, 0, 1), rtol=1e-5)
    tv = np.mean([c.tex_var for c in caps]) + np.mean([(c.tex_mean - tm) ** 2 for c in caps])
    assert math.isclose(s.tex_std, math.sqrt(tv), rel_tol=1e-9)
    vm = np.mean([c.vert_mean for c in caps], axis=0)
    # The reference code's vertex formula.
    vv = sum(np.sum((c.vert_mean - vm) ** 2) for c in caps) / (vm.size * 3) + np.mean(
        [c.vert_var for c in caps]
    )
    assert math.isclose(s.vert_std, math.sqrt(vv), rel_tol=1e-9)
    one = combine_stats(caps[:1])
    assert math.isclose(one.tex_std, math.sqrt(caps[0].tex_var))
    with pytest.raises(ValueError, match="no captures"):
        combine_stats([])


# --- sampler --------------------------------------------------------------------------------------------------


def consume(sampler: ResumableSampler, k: int) -> list[int]:
    out = []
    for i in sampler:
        if len(out) == k:
            break
        out.append(i)
        sampler.advance(1)
    return out


def test_sampler_epoch_is_a_seeded_permutation():
    s = ResumableSampler(50, seed=3)
    e0 = list(s)
    assert sorted(e0) == list(range(50)) and e0 != list(range(50))
    assert list(ResumableSampler(50, seed=3)) == e0
    assert list(ResumableSampler(50, seed=4)) != e0
    s.next_epoch()
    assert list(s) != e0 and sorted(s) == list(range(50))
    assert list(ResumableSampler(7, shuffle=False)) == list(range(7))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), world=st.integers(1, 4), k=st.integers(0, 30), seed=st.integers(0, 5))
def test_sampler_resume_yields_exactly_the_rest(n, world, k, seed):
    ranks = [ResumableSampler(n, seed=seed, rank=r, world=world) for r in range(world)]
    full = [list(s) for s in ranks]
    per_rank = -(-n // world)
    assert all(len(f) == per_rank for f in full)
    assert set().union(*map(set, full)) == set(range(n))  # together the ranks cover every index
    k = min(k, per_rank)
    for s, f in zip(ranks, full):
        assert consume(s, k) == f[:k]
    state = ranks[0].state_dict()
    assert state["position"] == k * world and state["epoch"] == 0
    for r, f in enumerate(full):
        resumed = ResumableSampler(n, seed=seed, rank=r, world=world)
        resumed.load_state_dict(state)
        assert list(resumed) == f[k:]
        assert len(resumed) == per_rank - k


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 50), w1=st.integers(1, 4), w2=st.integers(1, 4), k=st.integers(0, 12))
def test_sampler_resume_with_other_world_size_covers_the_rest(n, w1, w2, k):
    first = [ResumableSampler(n, seed=1, rank=r, world=w1) for r in range(w1)]
    k = min(k, n // w1)
    seen = set()
    for s in first:
        seen |= set(consume(s, k))
    state = first[0].state_dict()
    rest: list[int] = []
    for r in range(w2):
        s = ResumableSampler(n, seed=1, rank=r, world=w2)
        s.load_state_dict(state)
        rest += list(s)
    remaining = ResumableSampler(n, seed=1).epoch_order()[min(k * w1, n) :]
    # Every not-yet-consumed index comes exactly once, plus fewer than w2 wrap-around pads.
    assert set(remaining) <= set(rest) and 0 <= len(rest) - len(remaining) < w2
    assert seen | set(remaining) == set(range(n))


def test_sampler_state_checks_and_epochs():
    s = ResumableSampler(10, seed=2)
    consume(s, 4)
    s2 = ResumableSampler(11, seed=2)
    with pytest.raises(ValueError, match="covers 10 samples"):
        s2.load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="order would differ"):
        ResumableSampler(10, seed=3).load_state_dict(s.state_dict())
    s.next_epoch()
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["position"] == 0 and len(s) == 10
    s.set_epoch(1)  # no-op in the current epoch
    consume(s, 3)
    s.set_epoch(1)
    assert len(s) == 7
    with pytest.raises(ValueError, match="empty dataset"):
        ResumableSampler(0)
    d = ResumableSampler(10, rank=1, world=3, drop_last=True)
    assert len(list(d)) == 3


# --- collate --------------------------------------------------------------------------------------------------


def test_collate_drops_none_and_stacks():
    a = {"x": torch.zeros(2), "capture": "c", "frame_index": 1}
    b = {"x": torch.ones(2), "capture": "d", "frame_index": 2}
    batch = collate_samples([a, None, b])
    assert batch["x"].shape == (2, 2) and batch["capture"] == ["c", "d"]
    assert batch["frame_index"].tolist() == [1, 2]
    assert collate_samples([None]) is None
    const = torch.arange(6.0).reshape(2, 3)
    c = collate_samples([{"k": const, "x": torch.zeros(1)}, {"k": const, "x": torch.ones(1)}])
    assert c["k"].shape == (2, 2, 3) and c["k"].is_contiguous() and torch.equal(c["k"][1], const)
    assert c["x"].tolist() == [[0.0], [1.0]]
    # Consecutive slots of one batch tensor are handed over as that memory (no copy); anything else is stacked.
    base = torch.arange(12.0).reshape(2, 2, 3).clone()
    whole = collate_samples([{"k": base[0]}, {"k": base[1]}])["k"]
    assert whole.data_ptr() == base.data_ptr() and whole.shape == base.shape and torch.equal(whole, base)
    assert collate_samples([{"k": base[1]}, {"k": base[0]}])["k"].tolist() == [
        base[1].tolist(),
        base[0].tolist(),
    ]
    one = collate_samples([{"k": base[0]}])["k"]  # one slot: a batch of one, never the whole tensor
    assert one.shape == (1, 2, 3) and torch.equal(one[0], base[0])
    same = pin_batch(batch)
    assert same["x"].is_pinned() == torch.cuda.is_available()
