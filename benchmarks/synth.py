"""Realism of synthetic AVIF data: bytes, encode and decode cost vs. the release's real sample files.

Rows (each measured side by side in one run):

- camera image, 4TB/8TB style: the real ``021924.png`` resized to 667 x 1024 vs. synthetic 667 x 1024
  views, AVIF at quality 63 (the release's quality for that size);
- camera image, 16TB/32TB style (skipped with ``--quick``): the real image at its 1334 x 2048 vs. synthetic
  1334 x 2048 views at quality 70;
- uv texture: the real ``021924_avgtex.png`` (1024 x 1024) vs. synthetic 1024 x 1024 textures at quality 63.

Encoders run at Pillow's default speed and at the synthetic generator's speed (``AVIF_SPEED``). Synthetic
figures are means over several views (different cameras/frames); times are medians over repetitions with
real and synthetic decodes interleaved (robust to a busy machine). The reference files come from
``../shared/reference`` beside the repository; rows that need them are skipped if it is absent.

Run: ``python benchmarks/synth.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ava256.capture import release_capture_ids
from ava256.formats import decode_rgb, encode_avif
from ava256.synth.generate import AVIF_SPEED, sample_frames

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"


def _encode(img: np.ndarray, quality: int, speed: int | None, reps: int) -> tuple[bytes, float]:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        data = encode_avif(img, quality, speed=speed)
        times.append(time.perf_counter() - t)
    return data, statistics.median(times) * 1e3


def _measure(
    real: np.ndarray | None, synth: list[np.ndarray], quality: int, speed: int | None, reps: int
) -> dict:
    """bytes / encode ms / decode ms of the real image and the mean over synthetic ones."""
    out: dict = {}
    enc_reps = max(1, reps // 3)
    s_data, s_enc = zip(*[_encode(x, quality, speed, enc_reps) for x in synth])
    r_data, r_enc = _encode(real, quality, speed, enc_reps) if real is not None else (None, float("nan"))
    r_dec, s_dec = [], [[] for _ in synth]
    for _ in range(reps):  # interleave real and synthetic decodes
        if r_data is not None:
            t = time.perf_counter()
            decode_rgb(r_data)
            r_dec.append(time.perf_counter() - t)
        for j, d in enumerate(s_data):
            t = time.perf_counter()
            decode_rgb(d)
            s_dec[j].append(time.perf_counter() - t)
    out["real"] = (
        (len(r_data), r_enc, statistics.median(r_dec) * 1e3) if r_data is not None else (float("nan"),) * 3
    )
    out["synth"] = (
        float(np.mean([len(d) for d in s_data])),
        float(np.mean(s_enc)),
        float(np.mean([statistics.median(x) for x in s_dec])) * 1e3,
    )
    out["synth_range"] = (min(len(d) for d in s_data), max(len(d) for d in s_data))
    return out


def _load(name: str, size: tuple[int, int] | None = None) -> np.ndarray | None:
    p = REFERENCE / name
    if not p.exists():
        return None
    im = Image.open(p).convert("RGB")
    if size is not None and im.size != size:
        im = im.resize(size, Image.LANCZOS)
    return np.asarray(im)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer views and repetitions, no 16TB row")
    ap.add_argument("--views", type=int, default=None, help="synthetic views per row")
    ap.add_argument("--reps", type=int, default=None, help="decode repetitions")
    ap.add_argument("--captures", type=int, default=None, help="synthetic identities to average over")
    args = ap.parse_args()
    views = args.views or (2 if args.quick else 4)  # per identity
    reps = args.reps or (5 if args.quick else 15)
    if not REFERENCE.is_dir():
        print(f"reference assets not found at {REFERENCE}: real rows are skipped")

    rows = []
    t0 = time.perf_counter()
    ids = release_capture_ids()[: args.captures or (1 if args.quick else 3)]
    imgs4, texs = [], []
    for cid in ids:  # identities differ (skin tone, shape, camera placement): average over a few
        i, t = sample_frames(size="4TB", views=views, texture_size=1024, capture=cid)
        imgs4 += i
        texs += t
    gen_s = (time.perf_counter() - t0) / len(imgs4)
    cases = [
        ("image 667x1024", 63, _load("021924.png", (667, 1024)), imgs4),
        ("uv texture 1024", 63, _load("021924_avgtex.png"), texs),
    ]
    if not args.quick:
        imgs16 = []
        for cid in ids:
            imgs16 += sample_frames(size="16TB", views=max(2, views // 2), texture_size=1024, capture=cid)[0]
        cases.insert(1, ("image 1334x2048", 70, _load("021924.png", (1334, 2048)), imgs16))
    for speed in (None, AVIF_SPEED):
        for name, q, real, synth in cases:
            m = _measure(real, synth, q, speed, reps)
            rows.append((name, q, "default" if speed is None else str(speed), m))

    hdr = (
        f"{'asset':<16} {'q':>3} {'speed':>7} | {'real B':>8} {'synth B':>8} {'ratio':>5} | "
        f"{'real enc':>8} {'syn enc':>8} {'ratio':>5} | {'real dec':>8} {'syn dec':>8} {'ratio':>5}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, q, sp, m in rows:
        rb, re_, rd = m["real"]
        sb, se, sd = m["synth"]
        print(
            f"{name:<16} {q:>3} {sp:>7} | {rb:>8.0f} {sb:>8.0f} {sb / rb:>5.2f} | "
            f"{re_:>6.0f}ms {se:>6.0f}ms {se / re_:>5.2f} | {rd:>6.1f}ms {sd:>6.1f}ms {sd / rd:>5.2f}"
        )
    print(
        f"\nsynthetic bytes range per row (min..max over {len(imgs4)} views): "
        + "; ".join(f"{n} q{q} {sp}: {m['synth_range'][0]}..{m['synth_range'][1]}" for n, q, sp, m in rows)
    )
    print(f"synthetic render (image 667x1024 + texture 1024, no encode): {gen_s * 1e3:.0f} ms per view")


if __name__ == "__main__":
    main()
