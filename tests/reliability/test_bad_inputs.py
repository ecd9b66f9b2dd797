"""Bad inputs through repack (real damaged files in a tiny format-exact raw tree): each one yields a clear error
naming capture, file and reason, or a masked sample recorded in the manifests; the job goes on.
docs/reliability.md tables these cases."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rel_helpers import write_raw_captures

from ava256 import capture as cat
from ava256.cli import cli
from ava256.formats.frame_list import FrameList, read_frame_list, write_frame_list
from ava256.formats.head_pose import write_head_pose
from ava256.formats.ply import read_ply, write_ply
from ava256.formats.zips import ZipReader, write_stored_zip
from ava256.manifests.repack import read_repack_manifest
from ava256.manifests.samples import read_samples
from ava256.pipeline.repack import repack
from ava256.store import layout as L

N_FRAMES = 8


def zip_members(path: Path) -> list[tuple[str, bytes]]:
    with ZipReader(path) as z:
        return [(n, z.read(n)) for n in z.names()]


def replace(path: Path, member: str, data: bytes) -> None:
    write_stored_zip(path, [(n, data if n == member else b) for n, b in zip_members(path)])


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, dask_threads):
    """Capture A gets one of each per-frame/per-file damage; capture B a malformed calibration. One repack."""
    raw = tmp_path_factory.mktemp("bad-raw")
    a, b = write_raw_captures(raw, n=2, cameras=2, frames=N_FRAMES, drop_rate=0.0)
    base = raw / a
    fids = [int(x) for x in read_frame_list((base / cat.FRAME_LIST_KEY).read_bytes()).frame_ids]
    cams = sorted(p.stem[3:] for p in (base / "decoder" / "image").glob("cam*.zip"))
    bad = {"fids": fids, "cams": cams, "a": a, "b": b, "raw": raw}

    # corrupted AVIF: cam0, frame 2 (right size, garbage in the middle of the bitstream)
    zpath = base / cat.image_key(cams[0])
    member = cat.image_member(cams[0], fids[2])
    data = bytearray(dict(zip_members(zpath))[member])
    data[len(data) // 3 :] = bytes(len(data) - len(data) // 3)
    replace(zpath, member, bytes(data))
    bad["avif_member"] = member
    # truncated zip: the segmentation zip of cam1 cut in half (its central directory is gone)
    spath = base / cat.segmentation_key(cams[1])
    spath.write_bytes(spath.read_bytes()[: spath.stat().st_size // 2])
    # zip-slip entry names in cam1's image zip (next to its real members)
    ipath = base / cat.image_key(cams[1])
    with zipfile.ZipFile(ipath, "a", compression=zipfile.ZIP_STORED) as z:
        z.writestr("../../../evil.avif", dict(zip_members(zpath))[cat.image_member(cams[0], fids[0])])
        z.writestr("/tmp/evil-abs.avif", b"x")
    # PLY with the wrong vertex count: frame 3
    vpath = base / cat.VERTICES_KEY
    m = cat.vertices_member(fids[3])
    replace(vpath, m, write_ply(read_ply(dict(zip_members(vpath))[m])[:-10]))
    # NaN head pose: frame 4
    hpath = base / cat.HEAD_POSE_KEY
    pose = np.full((3, 4), np.nan, dtype=np.float32)
    replace(hpath, cat.head_pose_member(fids[4]), write_head_pose(pose))
    # frame list with two frames that no zip has
    fl = read_frame_list((base / cat.FRAME_LIST_KEY).read_bytes())
    segs = np.concatenate([fl.segments, np.array(["EXP_free_face"] * 2)])
    ids = np.concatenate([fl.frame_ids, np.array([999_990, 999_991], dtype=np.int64)])
    (base / cat.FRAME_LIST_KEY).write_bytes(write_frame_list(FrameList(segs, ids)))
    # capture B: malformed calibration JSON
    cal = raw / b / cat.CALIBRATION_KEY
    cal.write_bytes(cal.read_bytes()[:-40] + b"}}")

    store = tmp_path_factory.mktemp("bad-store") / "store"
    summary = repack(raw, store, client=dask_threads, progress=False)
    g = L.open_capture_group(L.capture_store_path(store, a), mode="r")
    man = read_repack_manifest(L.manifests_path(store, "repack.parquet"))
    errors = [e for errs in man["errors"] for e in errs]
    return {**bad, "store": store, "summary": summary, "g": g, "man": man, "errors": errors}


def reasons(d, file_suffix: str, member: str | None = None) -> list[str]:
    return [
        e["reason"]
        for e in d["errors"]
        if e["file"].endswith(file_suffix) and (member is None or e["member"] == member)
    ]


def test_corrupted_avif_is_masked_and_recorded(damaged):
    g, cams = damaged["g"], damaged["cams"]
    v = g["valid/image"][...]
    assert not v[2, 0] and v[:N_FRAMES].sum() == 2 * N_FRAMES - 1
    assert (g["image"][2, 0] == 0).all()
    assert reasons(damaged, cat.image_key(cams[0]), damaged["avif_member"])


def test_truncated_zip_masks_that_file_and_is_recorded(damaged):
    g, cams = damaged["g"], damaged["cams"]
    v = g["valid/segmentation"][...]
    assert not v[:, 1].any() and v[:N_FRAMES, 0].all()
    assert any("unreadable zip" in r for r in reasons(damaged, cat.segmentation_key(cams[1])))


def test_zip_slip_entries_are_never_read_or_extracted(damaged):
    g, cams = damaged["g"], damaged["cams"]
    assert g["valid/image"][:N_FRAMES, 1].all()  # the real members of that zip are all there
    with ZipReader(damaged["raw"] / damaged["a"] / cat.image_key(cams[1])) as z:
        assert sorted(z.unsafe) == ["../../../evil.avif", "/tmp/evil-abs.avif"]
        assert not any("evil" in n for n in z.names())
        with pytest.raises(KeyError):
            z.read("../../../evil.avif")
    r = reasons(damaged, cat.image_key(cams[1]), "../../../evil.avif, /tmp/evil-abs.avif")
    assert r and "unsafe member name" in r[0]  # on the record, for every task reading that zip
    # nothing was extracted anywhere in the raw tree, nor where the '../' names point just above it
    # (not rglob over the parent: that is pytest's shared basetemp, where other tests keep hostile fixtures)
    raw = damaged["raw"]
    assert not list(raw.rglob("evil*")) and not list(raw.parent.glob("evil*"))
    assert not Path("/tmp/evil-abs.avif").exists()


def test_ply_with_wrong_vertex_count_is_masked_and_recorded(damaged):
    g = damaged["g"]
    v = g["valid/vertices"][...]
    assert not v[3] and v[:N_FRAMES].sum() == N_FRAMES - 1 and np.isnan(g["vertices"][3]).all()
    r = reasons(damaged, cat.VERTICES_KEY, cat.vertices_member(damaged["fids"][3]))
    assert r and "7306" in r[0]


def test_nan_head_pose_is_masked_and_recorded(damaged):
    g = damaged["g"]
    v = g["valid/head_pose"][...]
    assert not v[4] and v[:N_FRAMES].sum() == N_FRAMES - 1
    assert reasons(damaged, cat.HEAD_POSE_KEY, cat.head_pose_member(damaged["fids"][4]))
    s = read_samples(L.manifests_path(damaged["store"], "samples.parquet"))
    s = s[s["capture"] == damaged["a"]]
    assert not s[s["frame_index"] == 4]["valid"].any()


def test_frame_list_with_unknown_frames_masks_them(damaged):
    g = damaged["g"]
    assert g.attrs[L.ATTR_FRAME_IDS][-2:] == [999_990, 999_991]
    for asset in ("image", "segmentation", "vertices", "head_pose", "uv_texture", "keypoints_3d"):
        assert not g[L.valid_name(asset)][N_FRAMES:].any(), asset
    r = reasons(damaged, cat.HEAD_POSE_KEY, cat.head_pose_member(999_990))
    assert r == ["missing member (dropped frame)"]


def test_malformed_calibration_fails_that_capture_with_a_clear_error(damaged):
    s = damaged["summary"]
    assert list(s.failed_captures) == [damaged["b"]]
    msg = s.failed_captures[damaged["b"]]
    assert damaged["b"] in msg and "calibration" in msg.lower()
    assert L.list_capture_stores(damaged["store"]) == [damaged["a"]]  # the other capture went on
    res = CliRunner().invoke(cli, ["repack", str(damaged["raw"]), str(damaged["store"]), "--workers", "1",
                                   "--no-progress"])  # fmt: skip
    assert res.exit_code == 1 and f"FAILED {damaged['b']}" in res.output and "Traceback" not in res.output
