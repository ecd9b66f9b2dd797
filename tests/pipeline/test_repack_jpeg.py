"""``ava256 repack --codec jpeg`` on tiny real captures: pictures are JPEGs close to a direct decode, labels and
every other array exact, the store's identity includes the codec, and the loader reads it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from repack_data import CAMERAS

from ava256 import capture as cat
from ava256.formats.images import decode_rgb
from ava256.formats.zips import ZipReader
from ava256.pipeline.repack import repack
from ava256.store import layout as L

CAP = cat.release_capture_ids()[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def jpeg_store(one_capture_raw, tmp_path_factory):
    raw, root = one_capture_raw, tmp_path_factory.mktemp("stores")
    lossless = repack(raw, root / "lossless", workers=1, progress=False, max_frames_per_shard=4)
    jpeg = repack(raw, root / "jpeg", workers=1, progress=False, codec="jpeg", max_frames_per_shard=4)
    assert lossless.tasks_failed == jpeg.tasks_failed == 0
    return raw, root


def test_pictures_are_close_and_the_rest_exact(jpeg_store):
    raw, root = jpeg_store
    a = zarr.open_group(L.capture_store_path(root / "lossless", CAP), mode="r")
    b = zarr.open_group(L.capture_store_path(root / "jpeg", CAP), mode="r")
    assert b.attrs[L.ATTR_CODEC] == "jpeg" and a.attrs[L.ATTR_CODEC] == L.DEFAULT_CODEC
    with ZipReader(raw / CAP.folder / cat.image_key(CAMERAS[0])) as z:
        direct = decode_rgb(z.read(cat.image_member(CAMERAS[0], int(b.attrs[L.ATTR_FRAME_IDS][0]))))
    np.testing.assert_array_equal(a[L.IMAGE][0, 0], direct)
    for name in (L.IMAGE, L.UV_TEXTURE, L.ENCODER_IMAGE):
        x, y = a[name][...], b[name][...]
        assert x.shape == y.shape and psnr(x, y) > 25, (
            name
        )  # noisy test pictures; photos: benchmarks/codecs.py
        assert not np.array_equal(x, y), f"{name}: jpeg is lossy, an exact copy means it was not applied"
    for name in (L.SEGMENTATION, L.VERTICES, L.HEAD_POSE, L.valid_name("image")):
        np.testing.assert_array_equal(a[name][...], b[name][...])


def test_the_codec_is_part_of_the_store_identity(jpeg_store):
    """Re-running with the other codec recreates the capture instead of mixing codecs in one store."""
    raw, root = jpeg_store
    shutil.copytree(root / "jpeg", root / "swap")
    again = repack(raw, root / "swap", workers=1, progress=False, codec="jpeg", max_frames_per_shard=4)
    assert again.tasks_run == 0
    swapped = repack(raw, root / "swap", workers=1, progress=False, codec="blosclz", max_frames_per_shard=4)
    assert swapped.tasks_run > 0
    g = zarr.open_group(L.capture_store_path(root / "swap", CAP), mode="r")
    assert g.attrs[L.ATTR_CODEC] == "blosclz"
    assert "ava256.jpeg" not in str(g[L.IMAGE].metadata.to_dict())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_shipped_jpeg_batches_finish_like_pixel_batches(jpeg_store, device):
    """Compact samples that carry JPEG bytes (decoded by finish_batch: nvJPEG on CUDA, Pillow on the CPU) give
    the batch that pixel samples (decoded by the workers) give: equal on the CPU, within 1 level on a GPU."""
    import torch

    from ava256.data import ZarrSampleDataset, collate_samples, finish_batch
    from ava256.data.pictures import gpu_jpeg_decoder
    from ava256.manifests.samples import SAMPLES_MANIFEST, read_samples

    if device == "cuda" and (not torch.cuda.is_available() or gpu_jpeg_decoder("cuda") is None):
        pytest.skip("needs a CUDA device with torchvision's nvJPEG decoder")
    _, root = jpeg_store
    rows = read_samples(root / "jpeg" / L.MANIFESTS_DIR / SAMPLES_MANIFEST)
    plain = ZarrSampleDataset(root / "jpeg", rows, normalize=False)
    shipped = ZarrSampleDataset(root / "jpeg", rows, normalize=False, ship_jpeg=True, stats=plain.stats)
    idx = [0, 3, 7, 11]
    a = collate_samples(plain.__getitems__(idx))
    b = collate_samples(shipped.__getitems__(idx))
    assert "image" not in b and len(b["image_jpeg"]) == len(b["tex_jpeg"]) == 4
    assert bytes(b["image_jpeg"][0][:2].numpy()) == b"\xff\xd8"
    fa, fb = finish_batch(a, plain, device), finish_batch(b, shipped, device)
    assert fa.keys() == fb.keys()
    for k in ("image", "tex", "verts", "neut_tex"):
        diff = (fa[k].float() - fb[k].float()).abs()
        if device == "cpu":
            assert diff.max().item() == 0, k
        else:
            scale = 1.0 if k == "image" else float(plain.stats.tex_std) ** -1
            assert diff.mean().item() <= scale, k


def test_training_on_shipped_jpeg_batches_equals_training_on_pixel_batches(jpeg_store, tmp_path):
    """The trainer takes batches that carry JPEG bytes (on the CPU finish_batch decodes them with Pillow, as
    the workers would): a few tiny iterations give the same losses either way."""
    from ava256.data import ZarrSampleDataset
    from ava256.manifests.samples import SAMPLES_MANIFEST, read_samples
    from ava256.train.config import apply_overrides, load_config
    from ava256.train.data import dataset_info
    from ava256.train.trainer import train

    _, root = jpeg_store
    rows = read_samples(root / "jpeg" / L.MANIFESTS_DIR / SAMPLES_MANIFEST)
    over = ["--train.iters=3", "--train.val_every=0", "--train.image_every=0", "--train.ckpt_every=0"]
    losses = []
    for ship in (False, True):
        ds = ZarrSampleDataset(root / "jpeg", rows, normalize=False, ship_jpeg=ship)
        cfg = apply_overrides(load_config("tiny"), over)
        res = train(
            None, None, cfg, tmp_path / f"run-{ship}", datasets=(ds, None, dataset_info(ds)), progress=False
        )
        losses.append(res.losses)
    assert len(losses[0]) == 3 and losses[0] == losses[1]
