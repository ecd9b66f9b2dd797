"""``ava256 repack --cameras/--frames/--segments/--assets`` on a tiny real capture: only the selection is
stored, its values are the full repack's slices, samples/info/split see exactly it, the selection is part of
the store's identity (another one is refused), and a re-run with the same one skips everything."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner
from repack_data import CAMERAS, N_ENCODER_FRAMES

from ava256 import capture as cat
from ava256.cli import cli
from ava256.manifests.samples import SAMPLES_MANIFEST
from ava256.pipeline.repack import repack
from ava256.pipeline.selection import Selection, parse_selection
from ava256.store import layout as L

CAP = cat.release_capture_ids()[0]
SEL = parse_selection(
    cameras=f"{CAMERAS[2]},{CAMERAS[0]}",
    frames="1::2",
    assets="image,vertices,uv_texture,head_pose,encoder_image",
)
ROWS = [1, 3, 5, 7, 9]  # rows of the 10-frame list that 1::2 keeps


@pytest.fixture(scope="module")
def stores(one_capture_raw, tmp_path_factory):
    raw, root = one_capture_raw, tmp_path_factory.mktemp("stores")
    full = repack(raw, root / "full", workers=1, progress=False, max_frames_per_shard=2)
    sel = repack(raw, root / "sel", workers=1, progress=False, max_frames_per_shard=2, selection=SEL)
    assert full.tasks_failed == sel.tasks_failed == 0 and not sel.failed_captures
    return raw, root, sel


def groups(root):
    a = zarr.open_group(L.capture_store_path(root / "full", CAP), mode="r")
    b = zarr.open_group(L.capture_store_path(root / "sel", CAP), mode="r")
    return a, b


def test_only_the_selection_is_stored_with_the_full_repacks_values(stores):
    _, root, _ = stores
    a, b = groups(root)
    full_ids = list(a.attrs[L.ATTR_FRAME_IDS])
    assert b.attrs[L.ATTR_FRAME_IDS] == [full_ids[i] for i in ROWS]
    assert b.attrs[L.ATTR_SEGMENTS] == [a.attrs[L.ATTR_SEGMENTS][i] for i in ROWS]
    assert b.attrs[L.ATTR_CAMERA_IDS] == [CAMERAS[0], CAMERAS[2]]
    assert Selection.from_attrs(b.attrs[L.ATTR_SELECTION]) == SEL
    assert a.attrs[L.ATTR_SELECTION] is None
    assert b.attrs[L.ATTR_ASSETS] == ["image", "uv_texture", "vertices", "head_pose", "encoder_image"]
    for name in (L.SEGMENTATION, L.KEYPOINTS_3D, L.valid_name("segmentation")):
        assert name not in b and name in a, name
    cams = [0, 2]
    np.testing.assert_array_equal(b[L.IMAGE][...], a[L.IMAGE][...][ROWS][:, cams])
    np.testing.assert_array_equal(b[L.valid_name("image")][...], a[L.valid_name("image")][...][ROWS][:, cams])
    for name in (L.UV_TEXTURE, L.VERTICES, L.HEAD_POSE):
        np.testing.assert_array_equal(b[name][...], a[name][...][ROWS], err_msg=name)
    for name in (L.CAMERA_INTRINSICS, L.CAMERA_EXTRINSICS, L.CAMERA_DISTORTION):
        np.testing.assert_array_equal(b[name][...], a[name][...][cams], err_msg=name)
    np.testing.assert_array_equal(b[L.COORD_FRAME][...], np.asarray(b.attrs[L.ATTR_FRAME_IDS]))
    np.testing.assert_array_equal(b[L.VERTEX_MEAN][...], a[L.VERTEX_MEAN][...])
    # encoder frames: those among the selected frames (the encoder list is the first 4 frames: rows 1, 3)
    enc_full = list(a.attrs[L.ATTR_ENCODER_FRAME_IDS])
    assert len(enc_full) == N_ENCODER_FRAMES and b.attrs[L.ATTR_ENCODER_FRAME_IDS] == [
        enc_full[1],
        enc_full[3],
    ]
    np.testing.assert_array_equal(b[L.ENCODER_IMAGE][...], a[L.ENCODER_IMAGE][...][[1, 3]])


def test_samples_info_and_split_see_exactly_the_selection(stores):
    _, root, _ = stores
    _, b = groups(root)
    samples = pd.read_parquet(L.manifests_path(root / "sel", SAMPLES_MANIFEST))
    assert len(samples) == len(ROWS) * 2
    assert set(samples["camera_id"].astype(str)) == {CAMERAS[0], CAMERAS[2]}
    assert sorted(set(samples["frame_id"].astype(int))) == sorted(b.attrs[L.ATTR_FRAME_IDS])
    runner = CliRunner()
    res = runner.invoke(cli, ["info", str(root / "sel"), "--json"])
    assert res.exit_code == 0, res.output
    cap = json.loads(res.output)["captures"][0]
    assert (cap["frames"], cap["cameras"]) == (len(ROWS), 2)
    assert cap["selection"]["frames"] == [1, None, 2] and "segmentation" not in cap["assets"]
    res = runner.invoke(cli, ["split", str(root / "sel"), "--protocol", "free-face"])
    assert res.exit_code == 0, res.output


def test_same_selection_skips_everything_and_another_is_refused(stores):
    raw, root, first = stores
    again = repack(raw, root / "sel", workers=1, progress=False, max_frames_per_shard=2, selection=SEL)
    assert again.tasks_run == 0 and again.recreated == []
    assert again.tasks_skipped == again.tasks_total == first.tasks_total > 0
    before = zarr.open_group(L.capture_store_path(root / "sel", CAP), mode="r").attrs.asdict()
    other = Selection(cameras=SEL.cameras, frames=(0, None, 2), assets=SEL.assets)
    with pytest.raises(
        ValueError, match=r"holds the selection \[--cameras .* this run asks for \[.*--frames 0::2"
    ):
        repack(raw, root / "sel", workers=1, progress=False, max_frames_per_shard=2, selection=other)
    res = CliRunner().invoke(cli, ["repack", str(raw), str(root / "sel"), "--no-progress", "--workers", "1"])
    assert res.exit_code == 1 and "this run asks for [everything]" in res.output and "new STORE" in res.output
    after = zarr.open_group(L.capture_store_path(root / "sel", CAP), mode="r").attrs.asdict()
    assert after == before
    # the full store refuses a selection the same way
    with pytest.raises(ValueError, match=r"holds the selection \[everything\]"):
        repack(raw, root / "full", workers=1, progress=False, max_frames_per_shard=2, selection=SEL)


def test_segments_then_frames_and_an_unknown_camera(stores, tmp_path):
    raw, root, _ = stores
    a, _ = groups(root)
    sel = parse_selection(segments="EXP_free_face", frames="::2", assets="head_pose")
    s = repack(raw, tmp_path / "seg", workers=1, progress=False, selection=sel)
    assert s.tasks_failed == 0
    g = zarr.open_group(L.capture_store_path(tmp_path / "seg", CAP), mode="r")
    free = [i for i, x in enumerate(a.attrs[L.ATTR_SEGMENTS]) if x == "EXP_free_face"][::2]
    assert free == [3, 5] and g.attrs[L.ATTR_FRAME_IDS] == [a.attrs[L.ATTR_FRAME_IDS][i] for i in free]
    assert g.attrs[L.ATTR_ASSETS] == ["head_pose"] and g.attrs[L.ATTR_ENCODER_FRAME_IDS] == []
    assert L.IMAGE not in g and g.attrs[L.ATTR_CAMERA_IDS] == CAMERAS
    np.testing.assert_array_equal(g[L.HEAD_POSE][...], a[L.HEAD_POSE][...][free])
    bad = repack(raw, tmp_path / "bad", workers=1, progress=False, selection=Selection(cameras=("999999",)))
    assert "selected camera(s) 999999 not in" in bad.failed_captures[CAP.folder]
    none = repack(raw, tmp_path / "none", workers=1, progress=False, selection=Selection(segments=("EXP_x",)))
    assert "keeps none of the 10 frames" in none.failed_captures[CAP.folder]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "0:10:0"], "STEP must be > 0"),
        (["--frames", "10"], "expected START:STOP"),
        (["--frames", "a:b"], "must be integers"),
        (["--assets", "image,mesh"], "unknown asset(s) mesh"),
        (["--cameras", ","], "empty list"),
    ],
)
def test_bad_selection_options_are_one_line_usage_errors(tmp_path, args, message):
    res = CliRunner().invoke(cli, ["repack", str(tmp_path), str(tmp_path / "store"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "store").exists()


def test_selection_attrs_round_trip():
    assert Selection().to_attrs() is None and Selection.from_attrs(None) == Selection()
    assert Selection.from_attrs(json.loads(json.dumps(SEL.to_attrs()))) == SEL
    assert Selection(cameras=("b", "a", "b"), assets=("head_pose", "image")) == Selection(
        cameras=("a", "b"), assets=("image", "head_pose")
    )
    assert SEL.describe().startswith(f"--cameras {CAMERAS[0]},{CAMERAS[2]} --frames 1::2 --assets image,")
