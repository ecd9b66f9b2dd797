"""The asset registry: its naming facts agree with the fetch catalog, its arrays are those the layout creates,
and every decoder turns a member synth writes into the stored per-frame slice of its array."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from ava256 import capture as cap
from ava256.assets import CAMERA, FRAME, REGISTRY, asset, names
from ava256.capture import NUM_VERTICES, CaptureId
from ava256.formats import write_head_pose
from ava256.store import layout as L
from ava256.synth.generate import generate_capture

GEOM = L.CaptureGeometry(
    n_frames=3,
    camera_ids=("a", "b"),
    image_hw=(24, 16),
    texture_size=16,
    n_vertices=NUM_VERTICES,
    n_encoder_frames=2,
    encoder_hw=(16, 16),
    assets=tuple(REGISTRY),
)


def test_registry_names_the_fetch_catalogs_assets_in_store_order():
    assert list(REGISTRY) == list(cap.FRAME_ARCHIVES) == list(L.ASSET_ARRAYS)
    assert set(cap.ASSETS) == {"meta", *REGISTRY}
    assert names(CAMERA) == ("image", "segmentation")
    assert names() == tuple(REGISTRY)
    for name, a in REGISTRY.items():
        assert a.name == name and a.archive is cap.frame_archive(name)
        assert cap.asset_keys(name, ["1", "2"]) == a.archive.keys(["1", "2"])
    with pytest.raises(ValueError, match="unknown asset 'images'"):
        asset("images")


def test_every_registry_array_is_what_the_layout_creates():
    specs = L.array_specs(GEOM)
    for name, a in REGISTRY.items():
        spec = specs[a.array]
        assert (spec.per, spec.dtype, spec.dims) == (a.axis, a.dtype, a.dims)
        lead = 1 if a.axis == FRAME else 2
        assert spec.shape[lead:] == a.frame_shape(GEOM)
        assert L.valid_name(name) in specs
        assert L.ASSET_ARRAYS[name] == a.array


@pytest.fixture(scope="module")
def synth_capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    cid = CaptureId("20230101", "0000", "REG")
    res = generate_capture(
        root, cid, cameras=2, frames=3, image_size=(32, 48), texture_size=16, encoder_size=16, drop_rate=0
    )
    return root / cid.folder, res


def test_every_decoder_gives_the_stored_per_frame_slice_of_a_synth_member(synth_capture):
    root, res = synth_capture
    geom = L.CaptureGeometry(**{**GEOM.__dict__, "camera_ids": tuple(res["camera_ids"])})
    specs = L.array_specs(geom)
    source_hw = {
        "image": (48, 32),
        "segmentation": (48, 32),
        "uv_texture": (16, 16),
        "vertices": (NUM_VERTICES,),
        "encoder_image": (16, 16),
    }
    for name, a in REGISTRY.items():
        camera = a.archive.cameras(res["camera_ids"])[0]
        frame = (res["encoder_frame_ids"] if name == "encoder_image" else res["frame_ids"])[0]
        with zipfile.ZipFile(root / a.archive.archive_key(camera)) as z:
            data = z.read(a.archive.member(camera, frame))
        x = a.decode(data, source_hw.get(name), geom.image_hw if a.axis == CAMERA else None)
        spec = specs[a.array]
        assert x.shape == spec.shape[1 if a.axis == FRAME else 2 :], name
        assert x.dtype == np.dtype(spec.dtype), name
        if name in source_hw:  # members of another size than the probe found are refused
            wrong = tuple(n + 1 for n in source_hw[name])
            with pytest.raises(ValueError, match="decoded shape"):
                a.decode(data, wrong, geom.image_hw if a.axis == CAMERA else None)


def test_head_pose_decoder_refuses_a_lost_head():
    pose = np.zeros((3, 4), np.float32)
    pose[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        REGISTRY["head_pose"].decode(write_head_pose(pose), None, None)
