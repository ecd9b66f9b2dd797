"""The model on contract-shaped tensors: uv layout, voxel tiling, shapes, gradients, invalid samples."""

from __future__ import annotations

import torch

from ava256.models import Autoencoder, ModelConfig, losses
from ava256.models.decoder import tiles_to_voxels
from ava256.models.uvmap import UVLayout, load_topology
from ava256.train.config import load_config

TINY = load_config("tiny")["model"] | {"voxels": 2}  # 2^3 voxels: cheaper CPU raymarching


def _batch(samples, idx):
    return torch.utils.data.default_collate([samples[i] for i in idx])


def test_uv_layout_covers_grid_and_round_trips_geometry():
    topo = load_topology()
    layout = UVLayout(topo, [32])
    tri, bary = layout.tables(32)
    assert int(tri.min()) >= 0 and torch.allclose(bary.sum(-1), torch.ones(32, 32), atol=1e-5)
    v = torch.as_tensor(topo.vertices)[None]
    back = layout.sample_vertices(layout.to_uv_image(v, 32))
    # resampling through a 32x32 geometry image keeps vertices within a few mm (head ~180 mm wide)
    assert (back - v).abs().median() < 1.0
    pos, rot, cell = layout.surface_frames(v, 32)
    eye = torch.eye(3).expand_as(rot)
    assert torch.allclose(rot @ rot.transpose(-1, -2), eye, atol=1e-4)
    assert pos.shape == (1, 1024, 3) and bool((cell > 0).all())


def test_tiles_to_voxels_indexing():
    p, d, c = 3, 2, 4
    x = torch.arange(c * d * p * d * p * d, dtype=torch.float32).reshape(1, c * d, p * d, p * d)
    vox = tiles_to_voxels(x, c, p, d)
    i, j, ch, z, y, xx = 2, 1, 3, 1, 0, 1
    assert vox[0, i * p + j, ch, z, y, xx] == x[0, ch * d + z, i * d + y, j * d + xx]


def test_forward_shapes_and_gradients(fake_datasets):
    train_ds, _, info = fake_datasets
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**TINY, "n_cameras": info.n_cameras, "n_identities": info.n_identities})
    model = Autoencoder(cfg, info.topology, torch.as_tensor(info.vertmean), info.vertstd)
    batch = _batch(train_ds, [0, 5])
    out = model(batch)
    assert out["image"].shape == batch["image"].shape
    assert out["verts"].shape == batch["verts"].shape
    assert out["mu"].shape == (2, cfg.expr_dim, cfg.code_res, cfg.code_res)
    assert 0 < float(out["alpha"].detach().mean()) <= 1.0
    terms = losses(out, batch, {"image": 1.0, "verts": 0.1, "kl": 1e-3, "primvol": 0.01})
    terms["total"].backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead, dead
    # images are rendered: some primitive gradients and the decoder's voxel outputs receive signal
    assert model.decoder.alpha.out.weight.grad.abs().sum() > 0
    assert model.decoder.transform.weight.grad.abs().sum() > 0


def test_invalid_samples_do_not_contribute(fake_datasets):
    train_ds, _, info = fake_datasets
    cfg = ModelConfig.from_dict({**TINY, "n_cameras": info.n_cameras, "n_identities": info.n_identities})
    model = Autoencoder(cfg, info.topology, torch.as_tensor(info.vertmean), info.vertstd)
    batch = _batch(train_ds, [0, 1])
    out = model(batch, sample=False)
    w = {"image": 1.0, "verts": 0.1, "primvol": 0.01}
    full = losses(out, batch, w)["total"]
    batch2 = dict(batch, valid=torch.tensor([True, False]), image=batch["image"].clone())
    batch2["image"][1] = 0.0  # garbage in an invalid sample changes nothing
    one = losses(out, batch2, w)["total"]
    only_first = losses({k: v[:1] for k, v in out.items() if v is not None}, _batch(train_ds, [0]), w)[
        "total"
    ]
    assert torch.allclose(one, only_first) and not torch.allclose(one, full)
