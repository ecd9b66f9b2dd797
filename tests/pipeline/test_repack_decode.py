"""Repack decoding: header-only probes, corrupt pixels recorded per frame."""

from __future__ import annotations

import numpy as np
import pytest

from ava256.formats.images import decode_rgb, encode_avif, encode_png
from ava256.pipeline import repack_tasks as rt


def _picture(h: int = 48, w: int = 40, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 5 + yy * (3 + k)) % 256 for k in range(c)], -1)
    return (base + rng.integers(0, 20, base.shape)).clip(0, 255).astype(np.uint8)


def test_image_header_gives_the_decoded_size_without_decoding():
    """The probe's header read gives the height and width every decoder returns, refuses what the decoders
    refuse at the header, and the label check refuses what ``decode_labels`` refuses."""
    from ava256.formats.images import decode_gray, decode_labels, image_header, label_size

    rgb, grey = _picture(48, 40), _picture(30, 52)[..., 0]
    for blob, decoded in (
        (encode_avif(rgb, 63), decode_rgb),
        (encode_png(rgb), decode_rgb),
        (encode_avif(grey, 70), decode_gray),
        (encode_png(grey), decode_labels),
    ):
        h, w, _mode = image_header(blob)
        assert (h, w) == decoded(blob).shape[:2]
    assert label_size(encode_png(grey)) == (30, 52)
    with pytest.raises(ValueError, match="single-channel"):
        label_size(encode_png(rgb))
    with pytest.raises(ValueError, match="header"):
        image_header(b"not an image")


def test_probe_reads_headers_skips_unreadable_members_and_tasks_record_corrupt_pixels(tmp_path):
    """The probe takes image sizes from the first member whose header parses: members with no image header are
    skipped; a member with a valid header and corrupt pixels gives the size, and its task records it as
    corrupt (masked), with the other frames intact."""
    from repack_data import CAMERAS, IMAGE_HW, replace_member, write_capture

    from ava256 import capture as cat
    from ava256.formats.frame_list import read_frame_list
    from ava256.formats.zips import ZipReader
    from ava256.pipeline import repack as rp
    from ava256.store import layout as L

    cap = cat.release_capture_ids()[0]
    base = write_capture(tmp_path / "raw", cap)
    fids = [int(x) for x in read_frame_list((base / cat.FRAME_LIST_KEY).read_bytes()).frame_ids]
    cam = CAMERAS[0]
    with ZipReader(base / cat.image_key(cam)) as z:
        good = z.read(cat.image_member(cam, fids[1]))
    replace_member(base / cat.image_key(cam), cat.image_member(cam, fids[0]), b"garbage, no header")
    replace_member(base / cat.image_key(cam), cat.image_member(cam, fids[1]), good[: len(good) // 2])
    src = rp.discover_captures(tmp_path / "raw")[0]
    plan = rt.probe_capture(src, 1)
    assert plan.source_image_hw == IMAGE_HW and plan.geometry.image_hw == IMAGE_HW
    tasks = [
        t
        for t in rt.plan_tasks(plan, str(tmp_path / "unused.zarr"), L.array_specs(plan.geometry))
        if t.asset == "image" and t.camera_id == cam and t.frame_start == 0
    ]
    res = rt.run_task(tasks[0], write=False)
    assert res.row.status == "done"
    assert res.row.n_corrupt == 2 and not res.valid[0] and not res.valid[1] and all(res.valid[2:])
