"""Picture codecs of the store, side by side: bytes per image against the source AVIF, PSNR against the lossless
decode, the repack cost per image against pure AVIF decode, the loader's decode rate, and the 8TB release's
store size.

Sources are made as the release makes them: a portrait photo at 667 x 1024 encoded as AVIF quality 63 (the 8TB
release). Each codec stores it at ``--downsample`` (2: 333 x 512, the reference model's training size; 1: full
size). Per image, one process, one thread:

- repack ratio: AVIF decode time / (AVIF decode + resample + encode + crc32c), what one repack worker's images/s
  is against pure AVIF decode (the fetch and zip reads are left out: the same for every codec);
- loader: decodes per second of one stored picture (what a CPU loader thread does per sample's image).

Run: ``python benchmarks/codecs.py [--image PHOTO.png] [--downsample 2] [--quick]``. Without ``--image`` the
source is a procedural face-like picture (smoother than a photo: JPEG looks better on it than on a real one).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import google_crc32c
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ava256.store import layout as L  # noqa: E402
from ava256.store.chunks import compressor_from_json  # noqa: E402
from ava256.store.codecs import decode_jpeg, encode_jpeg  # noqa: E402
from ava256.store.resample import resize_rgb  # noqa: E402

RELEASE_8TB_IMAGES = 204.8e6  # camera images of the 8TB release (256 captures x ~10,000 frames x 80 cameras)


def procedural_photo(w: int = 667, h: int = 1024, seed: int = 0) -> np.ndarray:
    """A face-like (h, w, 3) uint8 picture: a lit ellipse on a dark background, features, skin-like noise."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
    head = ((x - 0.5) / 0.33) ** 2 + ((y - 0.48) / 0.36) ** 2 < 1
    shade = np.clip(1.2 - 1.4 * np.hypot(x - 0.42, y - 0.38), 0.15, 1)
    img = np.where(head[..., None], shade[..., None] * np.array([225, 170, 140]), np.array([30, 32, 38]))
    for cx, cy, r, col in ((0.38, 0.42, 0.035, (40, 30, 25)), (0.62, 0.42, 0.035, (40, 30, 25)),
                           (0.5, 0.66, 0.06, (150, 60, 60))):  # fmt: skip
        img[((x - cx) / r) ** 2 + ((y - cy) / (r * 0.5)) ** 2 < 1] = col
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def avif(pic: np.ndarray, quality: int = 63) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pic).save(out, "AVIF", quality=quality)
    return out.getvalue()


def decode_avif(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def pillow_codec(fmt: str, **kw):
    def enc(a: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(a).save(out, fmt, **kw)
        return out.getvalue()

    def dec(data: bytes, shape) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

    return enc, dec


def lossless(name: str):
    comps = L.picture_compressors(name)
    c = compressor_from_json(comps[0].to_dict()) if comps else None

    def enc(a: np.ndarray) -> bytes:
        return bytes(c.encode(np.ascontiguousarray(a))) if c is not None else a.tobytes()

    def dec(data: bytes, shape) -> np.ndarray:
        raw = c.decode(data) if c is not None else data
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)

    return enc, dec


def candidates(quick: bool) -> dict[str, tuple]:
    q, s = L.JPEG_QUALITY, L.JPEG_SUBSAMPLING
    out = {name: lossless(name) for name in ([L.DEFAULT_CODEC, "blosclz", "lz4"] if quick else L.CODECS)}
    out[f"jpeg q{q} {s} (default of --codec jpeg)"] = (
        lambda a: encode_jpeg(a, q, s),
        lambda d, shape: decode_jpeg(d, shape),
    )
    if not quick:
        out["jpeg q95 4:2:0"] = (
            lambda a: encode_jpeg(a, 95, "4:2:0"),
            lambda d, shape: decode_jpeg(d, shape),
        )
        out["jpeg q90 4:2:0"] = (
            lambda a: encode_jpeg(a, 90, "4:2:0"),
            lambda d, shape: decode_jpeg(d, shape),
        )
        out["webp q90"] = pillow_codec("WEBP", quality=90)
        out["webp lossless"] = pillow_codec("WEBP", lossless=True)
        out["avif q90 (re-encode)"] = pillow_codec("AVIF", quality=90)
    return out


def timed(fn, repeats: int):
    t = time.perf_counter()
    for _ in range(repeats):
        r = fn()
    return r, (time.perf_counter() - t) / repeats


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, help="a portrait camera photo (any size; resized to 667 x 1024)")
    ap.add_argument("--downsample", type=int, default=2, help="stored size = 667 x 1024 / k [default 2]")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per step [default 20, quick 3]")
    ap.add_argument(
        "--quick", action="store_true", help="two lossless codecs and jpeg, 3 repeats (a smoke run)"
    )
    args = ap.parse_args()
    n = args.repeats or (3 if args.quick else 20)
    if args.image:
        with Image.open(args.image) as im:
            photo = np.asarray(im.convert("RGB").resize((667, 1024), Image.LANCZOS))
        what = f"{args.image.name} resized to 667 x 1024"
    else:
        photo = procedural_photo()
        what = "procedural face-like picture, 667 x 1024"
    src = avif(photo)
    decoded, t_avif = timed(lambda: decode_avif(src), n)
    k = args.downsample
    h, w = decoded.shape[0] // k, decoded.shape[1] // k
    stored, t_resize = timed(lambda: resize_rgb(decoded, (h, w)) if k > 1 else decoded, n)
    print(f"source: {what}, AVIF q63 {len(src) / 1e3:.1f} kB, decode {t_avif * 1e3:.1f} ms; "
          f"stored at {w} x {h} (resample {t_resize * 1e3:.1f} ms); {n} repeats, 1 thread")  # fmt: skip
    rows = []
    for name, (enc, dec) in candidates(args.quick).items():
        data, t_enc = timed(lambda enc=enc: enc(stored), n)
        _, t_crc = timed(lambda data=data: google_crc32c.value(data), n)
        back, t_dec = timed(lambda dec=dec, data=data: dec(data, stored.shape), n)
        rows.append((name, len(data), psnr(back, stored), t_enc + t_crc, t_dec))
    print()
    print("| codec | kB/image | vs source AVIF | PSNR dB | encode ms | repack vs AVIF decode | loader decodes/s "
          "| 8TB release store (TiB) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, nbytes, p, t_e, t_d in rows:
        ratio = t_avif / (t_avif + (t_resize if k > 1 else 0) + t_e)
        tib = nbytes * RELEASE_8TB_IMAGES / 2**40
        print(f"| {name} | {nbytes / 1e3:.1f} | {nbytes / len(src):.2f}x | {p:.1f} | {t_e * 1e3:.2f} | "
              f"{ratio:.2f}x | {1 / t_d:.0f} | {tib:.1f} |")  # fmt: skip
    print(f"\n(AVIF source of the whole 8TB release's camera images: {len(src) * RELEASE_8TB_IMAGES / 2**40:.1f} "
          f"TiB at this picture's size)")  # fmt: skip


if __name__ == "__main__":
    main()
