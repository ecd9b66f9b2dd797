"""ZarrSampleDataset over a real repacked store: the contract dict, validity, chunk access, camera math
end to end, statistics, and an exactly-resumable multi-worker loader."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ava256.data import ZarrSampleDataset, collate_samples, finish_batch, make_loader, split_dataset
from ava256.data.iostats import CountingStore
from ava256.data.loader import ThreadLoader, batch_size_of
from ava256.manifests.splits import read_split_part
from ava256.pipeline.split import read_samples
from ava256.store import layout as L

CONTRACT_KEYS = {
    "image",
    "camrot",
    "campos",
    "focal",
    "princpt",
    "verts",
    "tex",
    "neut_verts",
    "neut_tex",
    "idindex",
    "camindex",
    "pixelcoords",
    "valid",
    "capture",
    "frame_index",
}


def group(store: Path, cap: str) -> zarr.Group:
    return L.open_capture_group(L.capture_store_path(store, cap))


def test_sample_dict_contract(tiny_data):
    ds = split_dataset(tiny_data.store, "free-face", "train", downsample=tiny_data.downsample)
    H, W = ds.image_size
    T, V = ds.texture_size, ds.n_vertices
    assert (H, W) == (48, 32) and T == 64 and V == 7306
    s = ds[3]
    assert set(s) == CONTRACT_KEYS
    shapes = {
        "image": (3, H, W),
        "camrot": (3, 3),
        "campos": (3,),
        "focal": (2,),
        "princpt": (2,),
        "verts": (V, 3),
        "tex": (3, T, T),
        "neut_verts": (V, 3),
        "neut_tex": (3, T, T),
        "pixelcoords": (H, W, 2),
        "idindex": (),
        "camindex": (),
        "valid": (),
    }
    for k, shape in shapes.items():
        assert tuple(s[k].shape) == shape, k
        assert s[k].dtype == {"idindex": torch.int64, "camindex": torch.int64, "valid": torch.bool}.get(
            k, torch.float32
        ), k
    assert bool(s["valid"]) and 0 <= s["image"].min() and s["image"].max() <= 255 and s["image"].max() > 1
    cap, f, c = ds.sample_key(3)
    assert s["capture"] == cap and s["frame_index"] == f
    g = group(tiny_data.store, cap)
    np.testing.assert_array_equal(s["image"].permute(1, 2, 0).numpy(), g[L.IMAGE][f, c].astype(np.float32))
    K = g[L.CAMERA_INTRINSICS][c]
    assert s["focal"].tolist() == [K[0, 0], K[1, 1]] and s["princpt"].tolist() == [K[0, 2], K[1, 2]]
    assert s["idindex"] == ds.captures.index(cap) and s["camindex"] == ds.camera_ids.index(
        g.attrs["camera_ids"][c]
    )
    # Normalisation: undoing it gives back the stored vertices.
    back = s["verts"] * ds.stats.vert_std + ds.stats.vert_mean
    np.testing.assert_allclose(back.numpy(), g[L.VERTICES][f], rtol=1e-5, atol=1e-3)
    assert abs(float(s["tex"].mean())) < 3  # roughly centred


def test_invalid_samples_are_never_returned(tiny_data):
    samples = read_samples(tiny_data.store)
    n_invalid = int((~samples["valid"]).sum())
    assert n_invalid > 0, "fixture should contain dropped frames"
    ds = ZarrSampleDataset(tiny_data.store, samples)
    assert len(ds) == int(samples["valid"].sum()) and ds.excluded["manifest_invalid"] == n_invalid
    masks = {}
    for cap, f, c in ds.keys():
        if cap not in masks:
            g = group(tiny_data.store, cap)
            masks[cap] = (
                g["valid/image"][...],
                g["valid/vertices"][...] & g["valid/uv_texture"][...] & g["valid/head_pose"][...],
            )
        assert masks[cap][0][f, c] and masks[cap][1][f]
    # A manifest that claims an invalid sample is valid: the store's masks win, and it is counted.
    lying = samples.copy()
    lying["valid"] = True
    ds2 = ZarrSampleDataset(tiny_data.store, lying)
    assert len(ds2) == len(ds) and ds2.excluded == {"manifest_invalid": 0, "store_invalid": n_invalid}
    assert all(torch.isfinite(ds2[i]["verts"]).all() for i in range(0, len(ds2), 7))


def test_a_sample_reads_only_its_four_chunks(tiny_data):
    counting = CountingStore.local(tiny_data.store)
    df = read_split_part(tiny_data.store, "free-face", "train")
    ds = ZarrSampleDataset(counting, df)
    cap, f0, _ = ds.sample_key(0)
    ds[0]  # warm the per-capture cache (array metadata, neutral mesh and texture)
    i = next(
        i
        for i in range(1, len(ds))
        if ds.sample_key(i)[0] == cap and ds.sample_key(i)[2] != ds.sample_key(0)[2]
    )
    _, f, c = ds.sample_key(i)
    counting.reset()
    ds[i]
    g = group(tiny_data.store, cap)
    specs = {n: g[n] for n in (L.IMAGE, L.VERTICES, L.UV_TEXTURE, L.HEAD_POSE)}
    expected = set()
    for name, arr in specs.items():
        shard = arr.shards[0]
        coords = (
            [f // shard] + ([c] if name == L.IMAGE else []) + [0] * (arr.ndim - (2 if name == L.IMAGE else 1))
        )
        expected.add(f"{cap}{L.STORE_SUFFIX}/{name}/c/" + "/".join(map(str, coords)))
    assert set(counting.keys) == expected
    # Partial reads of the shards: (shard index + one chunk) per array, far less than the shard files.
    shard_bytes = sum((tiny_data.store / k).stat().st_size for k in expected)
    chunk_bytes = 48 * 32 * 3 + 7306 * 3 * 4 + 64 * 64 * 3 + 48  # uncompressed sizes
    assert (
        counting.requests == 8 and counting.bytes <= chunk_bytes + 4096 and counting.bytes < shard_bytes / 2
    )


def test_camera_in_head_frame_projects_the_mesh_onto_the_head(tiny_data):
    """End to end: the mesh (head frame) projected with camrot/campos/focal/princpt lands on the rendered
    head (non-background segmentation) of the returned image."""
    ds = split_dataset(tiny_data.store, "free-face", "train")
    hits = []
    for i in range(0, len(ds), 5):
        s = ds[i]
        cap, f, c = ds.sample_key(i)
        v = (s["verts"] * ds.stats.vert_std + ds.stats.vert_mean).double()
        xc = (s["camrot"].double() @ (v - s["campos"].double()).T).T
        assert (xc[:, 2] > 0).all()
        u = s["focal"][0] * xc[:, 0] / xc[:, 2] + s["princpt"][0]
        w = s["focal"][1] * xc[:, 1] / xc[:, 2] + s["princpt"][1]
        H, W = ds.image_size
        inside = (u > -0.5) & (u < W - 0.5) & (w > -0.5) & (w < H - 0.5)
        assert inside.float().mean() > 0.5  # the head may be cropped by the frame, not missed
        seg = group(tiny_data.store, cap)[L.SEGMENTATION][f, c]
        ui = u[inside].round().long().numpy()
        wi = w[inside].round().long().numpy()
        hits.append(float((seg[wi, ui] != 0).mean()))
    assert np.mean(hits) > 0.85, hits  # ignoring the head pose gives ~0.73 here; the right math ~0.92


def test_statistics_index_tables_and_errors(tiny_data):
    train = split_dataset(tiny_data.store, "free-face", "train")
    val = split_dataset(tiny_data.store, "free-face", "val", stats=train.stats, captures=train.captures)
    assert val.stats is train.stats and val.captures == train.captures
    assert train.stats.captures == tuple(sorted(tiny_data.captures))
    state = train.stats.state_dict()
    from ava256.data import NormStats

    again = NormStats.from_state_dict(pickle.loads(pickle.dumps(state)))
    assert torch.equal(again.tex_mean, train.stats.tex_mean) and again.vert_std == train.stats.vert_std
    df = read_split_part(tiny_data.store, "free-face", "train")
    with pytest.raises(ValueError, match="repacked with --downsample 2, the loader wants 8"):
        ZarrSampleDataset(tiny_data.store, df, downsample=8)
    with pytest.raises(ValueError, match="captures not in `captures`"):
        ZarrSampleDataset(tiny_data.store, df, captures=train.captures[:1])
    ghost = df.assign(capture="20990101--0000--ZZZ999")
    with pytest.raises(FileNotFoundError, match="20990101--0000--ZZZ999"):
        ZarrSampleDataset(tiny_data.store, ghost)
    with pytest.raises(ValueError, match="no valid samples"):
        ZarrSampleDataset(tiny_data.store, df.assign(valid=False))


def keys_of(batch) -> list[tuple[str, int, int]]:
    return list(zip(batch["capture"], batch["frame_index"].tolist(), batch["camindex"].tolist()))


@pytest.mark.parametrize("workers", ["threads", "processes"])
def test_loader_with_workers_resumes_exactly(tiny_data, workers):
    ds = split_dataset(tiny_data.store, "free-face", "train")
    assert pickle.loads(pickle.dumps(ds))[5]["frame_index"] == ds[5]["frame_index"]  # workers reopen stores
    loader = make_loader(ds, batch_size=4, num_workers=2, seed=7, workers=workers)
    epoch: list = []
    state = None
    for b, batch in enumerate(loader):
        assert batch["image"].shape[0] == batch_size_of(batch) and batch["valid"].all()
        pc = batch["pixelcoords"]
        assert pc.shape == (batch_size_of(batch), *ds.image_size, 2) and pc[-1, 5, 7].tolist() == [7.0, 5.0]
        assert all(batch[k].is_contiguous() for k in ("image", "tex", "neut_tex", "pixelcoords"))  # pinnable
        epoch += keys_of(batch)
        loader.sampler.advance(batch_size_of(batch))
        if b == 2:
            state = loader.sampler.state_dict()  # checkpoint after 3 batches (workers have prefetched more)
    assert len(epoch) == len(ds) and len(set(epoch)) == len(ds)
    assert state == {**state, "epoch": 0, "position": 12}
    resumed = make_loader(
        split_dataset(tiny_data.store, "free-face", "train"),
        batch_size=4,
        num_workers=2,
        seed=7,
        workers=workers,
    )
    resumed.sampler.load_state_dict(state)
    rest = [k for batch in resumed for k in keys_of(batch)]
    assert rest == epoch[12:]
    # Next epoch: a different order of the same samples.
    loader.sampler.next_epoch()
    second = [k for batch in loader for k in keys_of(batch)]
    assert sorted(second) == sorted(epoch) and second != epoch


def test_thread_loader_errors_early_stop_and_compact_batches(tiny_data):
    df = read_split_part(tiny_data.store, "free-face", "train")
    ds = ZarrSampleDataset(tiny_data.store, df, normalize=False)
    loader = make_loader(ds, batch_size=3, num_workers=3, shuffle=False, drop_last=True)
    assert isinstance(loader, ThreadLoader) and len(loader) == len(ds) // 3
    batches = list(loader)
    assert len(batches) == len(ds) // 3
    want = collate_samples(ds.__getitems__([3, 4, 5]))
    assert all(torch.equal(batches[1][k], want[k]) for k in ("image", "tex", "verts", "camrot"))
    # stopping early leaves no thread behind
    before = threading.active_count()
    for i, _ in enumerate(make_loader(ds, batch_size=2, num_workers=2)):
        if i == 1:
            break
    assert threading.active_count() <= before
    # an unreadable chunk skips its samples, each listed at its batch with its array and chunk
    cap = ds.sample_key(0)[0]
    shard = next(
        p for p in (tiny_data.store / f"{cap}{L.STORE_SUFFIX}" / L.UV_TEXTURE / "c").rglob("*") if p.is_file()
    )
    broken = tiny_data.store.parent / "broken"
    import shutil

    shutil.copytree(tiny_data.store, broken)
    bad = broken / shard.relative_to(tiny_data.store)
    bad.write_bytes(bad.read_bytes()[:100])
    bad_ds = ZarrSampleDataset(broken, df, normalize=False)
    got = list(make_loader(bad_ds, batch_size=2, num_workers=2, shuffle=False))
    skipped = [b for batch in got for b in batch.get("bad_samples", [])]
    assert skipped and all(b.array == L.UV_TEXTURE and b.capture == cap for b in skipped)
    assert all("shorter than its index" in b.reason for b in skipped)
    kept = sum(int(batch["idindex"].shape[0]) for batch in got if "idindex" in batch)
    assert kept + len(skipped) == len(ds)  # every sample is either delivered or on the record
    with pytest.raises(ValueError, match="workers must be one of"):
        make_loader(ds, workers="fibers")


def test_dataframe_with_categoricals_and_extra_columns(tiny_data):
    df = read_split_part(tiny_data.store, "free-face", "test")
    cat = df.astype({"capture": "category", "camera_id": "category"}).assign(extra=1)
    a, b = ZarrSampleDataset(tiny_data.store, df), ZarrSampleDataset(tiny_data.store, cat)
    assert list(a.keys()) == list(b.keys()) and len(a) == len(df)


COMPACT_KEYS = CONTRACT_KEYS - {"neut_tex", "neut_verts", "pixelcoords"}


def test_compact_batches_finished_on_the_device_equal_the_contract_batch(tiny_data, monkeypatch):
    df = read_split_part(tiny_data.store, "free-face", "val")
    full = ZarrSampleDataset(tiny_data.store, df)
    compact = ZarrSampleDataset(tiny_data.store, df, normalize=False, stats=full.stats, neutral_cache=1)
    assert len(full.captures) == 2
    idx = [0, 3, len(df) - 1]  # both captures
    want = collate_samples([full[i] for i in idx])
    got_c = collate_samples([compact[i] for i in idx])
    assert set(got_c) == COMPACT_KEYS
    H, W = full.image_size
    T = full.texture_size
    assert got_c["image"].dtype == torch.uint8 and got_c["image"].shape == (3, H, W, 3)
    assert got_c["tex"].dtype == torch.uint8 and got_c["tex"].shape == (3, T, T, 3)
    got = finish_batch(got_c, compact, "cpu")
    assert set(got) == set(want)
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-4, msg=k)
        else:
            assert got[k] == v
    # the neutral conditioning is cached on the device per capture (LRU of neutral_cache = 1 here): the last
    # capture is a hit (its neutral frame is not read again), the first was evicted (read again on its miss)
    first, last = want["capture"][0], want["capture"][-1]
    assert first != last
    read, neutral = [], compact.neutral
    monkeypatch.setattr(compact, "neutral", lambda cap: read.append(cap) or neutral(cap))
    compact.device_constants([last], torch.device("cpu"))
    assert read == []
    compact.device_constants([first], torch.device("cpu"))
    assert read == [first]
    with pytest.raises(ValueError, match="compact batch"):
        finish_batch(want, full)


def test_fast_reads_equal_zarr_reads_and_touch_only_four_chunks(tiny_data):
    df = read_split_part(tiny_data.store, "free-face", "train")
    for normalize in (True, False):
        fast = ZarrSampleDataset(tiny_data.store, df, normalize=normalize)
        slow = ZarrSampleDataset(tiny_data.store, df, normalize=normalize, fast_reads=False, stats=fast.stats)
        idx = [0, 7, len(df) - 1]
        a, b = fast.__getitems__(idx), slow.__getitems__(idx)
        for sa, sb in zip(a, b):
            for k, v in sb.items():
                assert torch.equal(sa[k], v) if isinstance(v, torch.Tensor) else sa[k] == v, k
        cap = fast.sample_key(idx[0])[0]
        assert fast.uses_fast_reads(cap) and not slow.uses_fast_reads(cap)
        assert slow.read_counts() == {}
    before = fast.read_counts(cap)
    i = next(i for i in range(1, len(fast)) if fast.sample_key(i)[0] == cap)
    fast[i]
    after = fast.read_counts(cap)
    reads = {name: after[name]["chunk_reads"] - before[name]["chunk_reads"] for name in after}
    assert reads == {L.IMAGE: 1, L.HEAD_POSE: 1, L.VERTICES: 1, L.UV_TEXTURE: 1}  # one chunk each


def test_batched_reads_equal_single_samples_and_skip_the_stack_copy(tiny_data):
    ds = split_dataset(tiny_data.store, "free-face", "train")
    idx = [5, 0, len(ds) - 1, 17]
    items = ds.__getitems__(idx)
    batch = collate_samples(items)
    for k in ("tex", "image"):  # no copy: the batch is the memory the samples already sit in
        assert batch[k].data_ptr() == items[0][k].data_ptr(), k
        assert batch[k].untyped_storage().data_ptr() == items[-1][k].untyped_storage().data_ptr(), k
    from torch.utils.data import default_collate

    want = default_collate([ds[i] for i in idx])  # one sample at a time, plain stacking
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(batch[k], v), k
        else:
            assert batch[k] == v, k
    # Through worker processes (batch tensors in shared memory) the values are the same.
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, sampler=idx, num_workers=1, collate_fn=collate_samples
    )
    (got,) = list(loader)
    for k in ("image", "tex", "neut_tex", "verts", "camrot", "pixelcoords"):
        assert torch.equal(got[k], want[k]), k


def test_a_flipped_byte_in_an_image_chunk_fails_its_sample_and_an_old_format_store_is_refused(
    tiny_data, tmp_path
):
    """A byte flipped on disk inside the image chunk of one sample: reading that sample raises (the chunk's
    crc32c), through the chunk reader and through zarr; the other samples still read. A store of an older
    format version is refused with a message that says to re-run repack."""
    import shutil

    from ava256.store.fastread import ChunkReader

    store = tmp_path / "store"
    shutil.copytree(tiny_data.store, store)
    df = read_split_part(store, "free-face", "train")
    ds = ZarrSampleDataset(store, df)
    cap, f, c = ds.sample_key(3)
    image = zarr.open_array(str(L.capture_store_path(store, cap)), path=L.IMAGE, mode="r")
    reader = ChunkReader.for_array(image)
    shard = Path(reader.directory) / reader.fmt.shard_key((f // image.shards[0], c, 0, 0, 0))
    raw = bytearray(shard.read_bytes())
    index = reader.fmt.parse_index(bytes(raw[-reader.fmt.index_nbytes :]), str(shard))
    offset, nbytes = (int(x) for x in index[f % image.shards[0]])
    raw[offset + nbytes // 3] ^= 0x01
    shard.write_bytes(bytes(raw))
    other = next(i for i in range(len(ds)) if ds.sample_key(i)[0] != cap or ds.sample_key(i)[2] != c)
    for fast in (True, False):
        ds = ZarrSampleDataset(store, df, fast_reads=fast)
        with pytest.raises(ValueError, match="checksum"):
            ds[3]
        assert ds[other]["image"].shape[0] == 3

    g = zarr.open_group(str(L.capture_store_path(store, cap)), mode="r+")
    g.attrs[L.ATTR_FORMAT_VERSION] = 1
    with pytest.raises(ValueError, match=r"format version 1, expected \d+; re-run repack"):
        ZarrSampleDataset(store, df)


def test_worker_batches_are_allocated_straight_in_shared_memory():
    """A DataLoader worker's batch tensors are allocated in shared memory without a copy (torch's private
    ``TypedStorage._new_shared``, as torch's own default_collate does): this fails if torch drops it, where the
    loader would fall back to copying (``benchmarks/loader.py`` prints what that costs)."""
    from ava256.data.dataset import direct_shared_alloc, shared_empty

    assert direct_shared_alloc()
    t = shared_empty((2, 3, 4), torch.float32)
    assert t.is_shared() and tuple(t.shape) == (2, 3, 4) and t.dtype == torch.float32
    t.fill_(1.0)
    assert float(t.sum()) == 24.0
