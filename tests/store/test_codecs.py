"""The ``ava256.jpeg`` Zarr v3 codec: zarr opens jpeg stores by the installed entry point (no ava256 import, no
warning), the shard writer writes the bytes zarr writes, the chunk reader reads what zarr reads, the crc32c of
every chunk still catches damage, and the loss is what the docs state."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from ava256.store import layout as L
from ava256.store.codecs import JpegCodec, decode_jpeg, encode_jpeg
from ava256.store.fastread import ChunkReader
from ava256.store.shards import shard_writer


def smooth_pictures(n: int, h: int = 48, w: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    """(n, h, w[, 3]) uint8 pictures with photo-like smooth content (gradients and blobs, a little noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        c = rng.uniform(0.2, 0.8, (3, 4))
        img = np.stack(
            [c[k, 0] + c[k, 1] * x + c[k, 2] * y + 0.2 * np.sin(6 * c[k, 3] * (x + y)) for k in range(3)], -1
        )
        img = np.clip(img * 255 + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
        out.append(img if channels == 3 else img[..., 0])
    return np.stack(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def jpeg_array(path, shape=(6, 2, 48, 64, 3), shards=(4, 1, 48, 64, 3), quality=90) -> zarr.Array:
    chunks = (1,) * (len(shape) - len(shape[-3:] if shape[-1] == 3 else shape[-2:])) + tuple(
        shape[-3:] if shape[-1] == 3 else shape[-2:]
    )
    return zarr.create_array(
        str(path), shape=shape, dtype="uint8", chunks=chunks, shards=shards, fill_value=0,
        serializer=JpegCodec(quality=quality), compressors=[Crc32cCodec()],
    )  # fmt: skip


def test_plain_zarr_opens_a_jpeg_store_by_entry_point_without_warnings(tmp_path):
    a = jpeg_array(tmp_path / "a.zarr")
    pics = smooth_pictures(12).reshape(6, 2, 48, 64, 3)
    a[...] = pics
    code = (
        "import sys, warnings, numpy as np, zarr; warnings.simplefilter('error');"
        f"x = zarr.open_array({str(tmp_path / 'a.zarr')!r}, mode='r')[...];"
        "print(x.shape, int(x.sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    back = a[...]
    assert out.stdout.split()[-1] == str(int(back.sum()))
    assert psnr(back, pics) > 38


@pytest.mark.parametrize("channels", [3, 1])
def test_quality_and_size_on_smooth_pictures(channels):
    pic = smooth_pictures(1, 96, 128, channels)[0]
    data = encode_jpeg(pic[None], 90, "4:2:0")
    back = decode_jpeg(data, (1, *pic.shape))[0]
    assert back.shape == pic.shape and back.dtype == np.uint8
    assert psnr(back, pic) > 38
    assert len(data) < pic.nbytes / 4


def test_bad_bytes_and_wrong_shapes_are_value_errors():
    pic = smooth_pictures(1)[0]
    data = encode_jpeg(pic, 90, "4:2:0")
    with pytest.raises(ValueError, match="not a decodable JPEG"):
        decode_jpeg(b"\xff\xd8garbage", pic.shape)
    with pytest.raises(ValueError, match="expected"):
        decode_jpeg(data, (1, 48, 32, 3))
    with pytest.raises(ValueError, match="not one"):
        encode_jpeg(np.zeros((2, 8, 8, 3), np.uint8), 90, "4:2:0")
    with pytest.raises(ValueError, match="quality"):
        JpegCodec(quality=0)
    with pytest.raises(ValueError, match="uint8"):
        zarr.create_array(
            {}, shape=(1, 8, 8, 3), dtype="float32", chunks=(1, 8, 8, 3), serializer=JpegCodec()
        )


def test_shard_writer_and_chunk_reader_cover_jpeg_arrays(tmp_path, caplog):
    """Byte-identical shards to zarr's write path (a fill-value frame left out), chunk reads equal zarr's, the
    JPEG payload is a plain JFIF file, and a flipped byte is refused by the crc32c."""
    ref, ours = jpeg_array(tmp_path / "ref.zarr"), jpeg_array(tmp_path / "ours.zarr")
    pics = smooth_pictures(12).reshape(6, 2, 48, 64, 3)
    with caplog.at_level("WARNING"), shard_writer(ours) as w:
        assert w is not None
        for s0 in (0, 4):
            f = w.open_shard((s0 // 4, 1, 0, 0, 0))
            for i in range(s0, min(s0 + 4, 6)):
                f.append(pics[i, 1] if i != 2 else None)
            f.close()
    ref[:, 1] = pics[:, 1]
    ref[2, 1] = 0
    for rel in ("c/0/1/0/0/0", "c/1/1/0/0/0"):
        assert (tmp_path / "ours.zarr" / rel).read_bytes() == (tmp_path / "ref.zarr" / rel).read_bytes()
    r = ChunkReader.for_array(ours)
    assert r is not None and not caplog.records
    for i in range(6):
        np.testing.assert_array_equal(r.read((i, 1, 0, 0, 0)), ref[i : i + 1, 1:2])
    shard = tmp_path / "ours.zarr" / "c/0/1/0/0/0"
    raw = bytearray(shard.read_bytes())
    assert raw[:2] == b"\xff\xd8"  # the first chunk's payload is a JFIF file
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    r2 = ChunkReader.for_array(zarr.open_array(str(tmp_path / "ours.zarr"), mode="r"))
    with pytest.raises(ValueError, match="checksum"):
        r2.read((0, 1, 0, 0, 0))


def test_capture_group_with_jpeg_keeps_labels_lossless(tmp_path):
    geom = L.CaptureGeometry(
        n_frames=3, camera_ids=("a",), image_hw=(32, 48), texture_size=16, n_vertices=10, n_encoder_frames=2,
        encoder_hw=(24, 24), assets=tuple(L.ASSET_ARRAYS),
    )  # fmt: skip
    g = L.create_capture_group(tmp_path / "c.zarr", geom, {}, codec="jpeg")

    def serializer(name):
        return g[name].metadata.to_dict()["codecs"][0]["configuration"]["codecs"][0]["name"]

    assert serializer(L.IMAGE) == serializer(L.UV_TEXTURE) == serializer(L.ENCODER_IMAGE) == "ava256.jpeg"
    assert serializer(L.SEGMENTATION) == serializer(L.VERTICES) == "bytes"
    for name in (L.IMAGE, L.SEGMENTATION, L.UV_TEXTURE, L.ENCODER_IMAGE):
        assert ChunkReader.for_array(g[name]) is not None
    with pytest.raises(ValueError, match="unknown codec"):
        L.array_specs(geom, "webp")
