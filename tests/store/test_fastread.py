"""ChunkReader: direct single-chunk reads of sharded Zarr v3 arrays equal zarr's own reads, for every codec
the repack writes (and one whose header is unknown), with and without the chunk checksum, partial and missing
shards/chunks, and it refuses to hand back damaged or stale data, as plain zarr does."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, GzipCodec

from ava256.store import layout as L
from ava256.store.fastread import ChunkReader


def make_array(
    path,
    codec,
    dtype="uint8",
    fill=0,
    shape=(10, 3, 6, 5),
    shards=(4, 1, 6, 5),
    chunks=(1, 1, 6, 5),
    checksum=True,
):
    compressors = L.picture_compressors(codec) if isinstance(codec, str) else list(codec)
    compressors += [Crc32cCodec()] if checksum else []
    return zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        compressors=compressors,
        fill_value=fill,
        zarr_format=3,
    )


def all_chunks(a: zarr.Array, r: ChunkReader):
    grid = [-(-s // c) for s, c in zip(a.shape, r.chunk_shape)]
    for co in np.ndindex(*grid):
        yield co, tuple(slice(c * k, (c + 1) * k) for c, k in zip(co, r.chunk_shape))


@pytest.mark.parametrize("codec", [*L.CODECS, "gzip"])
@pytest.mark.parametrize("checksum", [True, False])
def test_every_chunk_equals_zarr(tmp_path, codec, checksum):
    rng = np.random.default_rng(0)
    compressors = [GzipCodec(level=1)] if codec == "gzip" else codec
    a = make_array(tmp_path / "a", compressors, checksum=checksum)
    data = rng.integers(0, 255, a.shape, dtype=np.uint8)
    a[:7] = data[:7]  # frames 7..9 never written: part of shard 1 missing, shard 2 absent
    a[9, 1] = data[9, 1]  # one chunk in the last (partial) shard
    r = ChunkReader.for_array(a)
    assert r is not None
    for co, sl in all_chunks(a, r):
        np.testing.assert_array_equal(r.read(co), a[sl], err_msg=str(co))
    assert r.read((8, 0, 0, 0)).max() == 0  # fill value
    out = np.full(r.chunk_shape, 7, dtype=np.uint8)
    assert r.read((2, 1, 0, 0), out=out) is out and np.array_equal(out, a[2:3, 1:2])
    with pytest.raises(ValueError, match="C-contiguous"):
        r.read((2, 1, 0, 0), out=np.empty((1, 1, 5, 6), np.uint8))
    with pytest.raises(IndexError):
        r.read((10, 0, 0, 0))


def test_float_arrays_nan_fill_and_counts(tmp_path):
    from zarr.codecs import BloscCodec

    a = make_array(
        tmp_path / "v",
        [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
        dtype="float32",
        fill=float("nan"),
        shape=(6, 7306, 3),
        shards=(6, 7306, 3),
        chunks=(1, 7306, 3),
    )
    v = np.random.default_rng(1).normal(size=(6, 7306, 3)).astype(np.float32)
    a[:5] = v[:5]
    r = ChunkReader.for_array(a)
    for f in range(5):
        np.testing.assert_array_equal(r.read((f, 0, 0))[0], v[f])
    assert np.isnan(r.read((5, 0, 0))).all()
    # one index read for the shard (cached), one pread per present chunk
    assert r.counts["index_reads"] == 1 and r.counts["chunk_reads"] == 5


def test_unsupported_layouts_fall_back_and_say_so(tmp_path, caplog):
    plain = zarr.create_array(
        store=str(tmp_path / "p"), shape=(4, 4), chunks=(2, 2), dtype="uint8", zarr_format=3
    )
    mem = zarr.create_array(
        store=zarr.storage.MemoryStore(),
        shape=(4, 4),
        chunks=(1, 4),
        shards=(4, 4),
        dtype="uint8",
        zarr_format=3,
    )
    with caplog.at_level("WARNING"):
        assert ChunkReader.for_array(plain) is None  # not sharded
        assert ChunkReader.for_array(mem) is None  # not a local file system
        assert ChunkReader.for_array(mem) is None
    text = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(text) == 2 and all("read through zarr" in t for t in text), text


def test_a_flipped_byte_in_a_chunk_is_refused_by_zarr_and_by_the_reader(tmp_path):
    """Every chunk carries its crc32c: a byte flipped inside one chunk's data on disk makes plain zarr and the
    reader raise for that chunk (not return other pixels), and only for that chunk."""
    for codec in ("blosclz", "none"):
        a = make_array(
            tmp_path / codec, codec, shape=(8, 2, 16, 16), shards=(4, 1, 16, 16), chunks=(1, 1, 16, 16)
        )
        data = np.random.default_rng(2).integers(0, 255, a.shape, dtype=np.uint8)
        a[...] = data
        shard = tmp_path / codec / "c" / "0" / "1" / "0" / "0"
        r = ChunkReader.for_array(a)
        index = r.fmt.parse_index(shard.read_bytes()[-r.fmt.index_nbytes :], str(shard))
        offset, nbytes = (int(x) for x in index[2])  # frame 2 of camera 1
        raw = bytearray(shard.read_bytes())
        raw[offset + nbytes // 2] ^= 0x10
        shard.write_bytes(bytes(raw))
        fresh = zarr.open_array(str(tmp_path / codec), mode="r")
        with pytest.raises(ValueError, match="checksum"):
            fresh[2, 1]
        with pytest.raises(ValueError, match="checksum"):
            ChunkReader.for_array(fresh).read((2, 1, 0, 0))
        np.testing.assert_array_equal(fresh[3, 1], data[3, 1])
        np.testing.assert_array_equal(ChunkReader.for_array(fresh).read((1, 1, 0, 0))[0, 0], data[1, 1])


def test_corrupt_index_and_rewritten_shards(tmp_path):
    a = make_array(tmp_path / "a", "lz4")
    a[...] = np.full(a.shape, 5, np.uint8)
    r = ChunkReader.for_array(a)
    assert r.read((0, 0, 0, 0)).min() == 5
    # the shard is rewritten (new size/mtime): the cached index is not reused
    a[0:4, 0] = np.arange(4 * 30, dtype=np.uint8).reshape(4, 6, 5)
    np.testing.assert_array_equal(r.read((1, 0, 0, 0)), a[1:2, 0:1])
    # a flipped byte in the index is caught by its checksum
    shard = tmp_path / "a" / "c" / "1" / "2" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(1, 1))
    with pytest.raises(ValueError, match="checksum"):
        ChunkReader.for_array(a).read((5, 2, 0, 0))
    # a truncated shard
    shard.write_bytes(bytes(raw[:20]))
    with pytest.raises(ValueError, match="shorter than its index"):
        ChunkReader.for_array(a).read((5, 2, 0, 0))


@pytest.mark.parametrize("codec", ["blosclz", "none"])
def test_an_fsspec_store_is_read_by_ranged_requests_batched_and_equal_to_zarr(codec, monkeypatch):
    """A store at an fsspec URL (``memory://`` here; ``s3://`` in tests/pipeline/test_s3_store.py): every chunk
    equals zarr's, absent shards and chunks read as the fill value, and a batch of chunks costs one request per
    shard index once, then at most one per chunk (fewer where chunks of a shard are adjacent); a small shard
    is read whole once, then costs nothing."""
    from ava256.store import fastread
    from ava256.store.fastread import read_chunks

    monkeypatch.setattr(fastread, "SMALL_SHARD", 0)  # these shards are tiny: first the ranged reads
    url = f"memory://fastread-{codec}"
    a = zarr.create_array(store=url, shape=(10, 3, 6, 5), chunks=(1, 1, 6, 5), shards=(4, 1, 6, 5),
                          dtype="uint8", compressors=L.picture_compressors(codec) + [Crc32cCodec()],
                          fill_value=0, zarr_format=3, overwrite=True)  # fmt: skip
    data = np.random.default_rng(3).integers(0, 255, a.shape, dtype=np.uint8)
    a[:7] = data[:7]
    a[9, 1] = data[9, 1]
    r = ChunkReader.for_array(zarr.open_array(url, mode="r"))
    assert r is not None and r.remote
    for co, sl in all_chunks(a, r):
        np.testing.assert_array_equal(r.read(co), a[sl], err_msg=str(co))
    shards = 3 * 3  # 3 shards along frames x 3 cameras, absent ones included
    assert r.counts["index_reads"] == shards

    fresh = ChunkReader.for_array(zarr.open_array(url, mode="r"))
    coords = [(0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0), (5, 1, 0, 0), (9, 1, 0, 0), (8, 2, 0, 0)]
    outs = read_chunks([(fresh, co, None) for co in coords])
    for co, got in zip(coords, outs):
        np.testing.assert_array_equal(got[0, 0], a[co[0], co[1]])
    # shards (0,0), (1,1), (2,1), (2,2): 4 index reads; frames 0-2 of camera 0 are adjacent: 1 request,
    # (5,1) and (9,1) one each, (8,2) is absent (no request)
    assert fresh.counts["index_reads"] == 4 and fresh.counts["requests"] == 4 + 3
    read_chunks([(fresh, co, None) for co in coords])  # warm: the indexes are cached
    assert fresh.counts["index_reads"] == 4 and fresh.counts["requests"] == 4 + 3 + 3

    monkeypatch.undo()  # small shards (these are ~100 bytes) are read whole once, then kept
    small = ChunkReader.for_array(zarr.open_array(url, mode="r"))
    outs = read_chunks([(small, co, None) for co in coords])
    assert small.counts["requests"] == 4 + 3  # 4 indexes, 3 whole shards (the fourth is absent)
    more = [(3, 0, 0, 0), (4, 1, 0, 0), (6, 1, 0, 0), (9, 1, 0, 0), (0, 0, 0, 0)]  # all in kept shards
    for co, got in zip(coords + more, outs + read_chunks([(small, co, None) for co in more])):
        np.testing.assert_array_equal(got[0, 0], a[co[0], co[1]])
    assert small.counts["requests"] == 4 + 3
