"""``ava256 demo``: the whole chain on synthetic data, offline, one step per function.

Steps: synthetic bucket -> local S3 server (moto, loopback) -> ``fetch`` -> ``verify`` -> ``repack`` -> ``split`` ->
``train`` (tiny model) -> ``render``. Each step is a function ``step_<name>(demo)`` in :data:`STEPS`; each reads what earlier steps put on the
:class:`Demo` (paths, the server) and reports through ``demo.echo``. Every step is idempotent: re-running the
demo in the same workdir reuses the bucket and finds the raw tree already fetched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_SIZE = "4TB"
DEMO_CAPTURES = 2
DEMO_CAMERAS = 4
DEMO_FRAMES = 12
DEMO_IMAGE_SIZE = (167, 256)  # (W, H): the 4TB images downsampled 4x, so the demo takes seconds
DEMO_TEXTURE_SIZE = 256
DEMO_DOWNSAMPLE = 4  # repack to 42 x 64 images: the tiny model trains on a CPU in seconds per iteration
DEMO_PROTOCOL = "free-face"
DEMO_TRAIN_ITERS = 40


@dataclass
class Demo:
    """State shared by the demo steps. Paths are under ``workdir``; ``server`` lives until the demo ends."""

    workdir: Path
    echo: Callable[[str], None] = print
    workers: int = 4
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    bucket_root: Path | None = None  # bucket-shaped synthetic tree (ava-256/4TB/<capture>/...)
    captures: list = field(default_factory=list)  # CaptureIds
    server: object = None  # LocalS3Server
    endpoint_url: str = ""
    source: str = ""  # s3://bucket/prefix of the demo bucket
    raw: Path | None = None  # fetched raw tree
    store: Path | None = None  # repacked Zarr stores + manifests
    split: str = ""  # split name under STORE/_splits/
    run: Path | None = None  # training run folder (checkpoints, metrics, TensorBoard)
    results: dict = field(default_factory=dict)  # step name -> summary object

    @property
    def folders(self) -> list[str]:
        return [c.folder for c in self.captures]


def step_generate(demo: Demo) -> None:
    """Write a synthetic bucket (2 captures, 4 cameras, 12 frames, real AVIF/PNG/PLY/npy files)."""
    from ava256.capture import release_capture_ids
    from ava256.synth.generate import generate_bucket

    root = demo.workdir / "bucket"
    marker = demo.workdir / "bucket.json"  # beside the bucket, so that it is not uploaded
    params = dict(size=DEMO_SIZE, captures=DEMO_CAPTURES, cameras=DEMO_CAMERAS, frames=DEMO_FRAMES,
                  image_size=list(DEMO_IMAGE_SIZE), texture_size=DEMO_TEXTURE_SIZE, seed=0)  # fmt: skip
    demo.bucket_root = root
    demo.captures = list(release_capture_ids()[:DEMO_CAPTURES])
    if marker.exists() and json.loads(marker.read_text()) == params:
        demo.echo(f"[generate] reusing synthetic bucket {root}")
        return
    t0 = time.perf_counter()
    generate_bucket(
        root, size=DEMO_SIZE, captures=DEMO_CAPTURES, cameras=DEMO_CAMERAS, frames=DEMO_FRAMES, seed=0,
        image_size=DEMO_IMAGE_SIZE, texture_size=DEMO_TEXTURE_SIZE, workers=min(2, demo.workers),
    )  # fmt: skip
    marker.write_text(json.dumps(params))
    files = [p for p in root.rglob("*") if p.is_file()]
    demo.echo(
        f"[generate] {len(demo.captures)} synthetic captures x {DEMO_CAMERAS} cameras x {DEMO_FRAMES} frames: "
        f"{len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB in {root} "
        f"({time.perf_counter() - t0:.1f} s)"
    )


def step_serve(demo: Demo) -> None:
    """Start a local S3 server on loopback and upload the bucket to it (as s3://ava256-local/ava-256/...)."""
    from ava256.synth.server import LOCAL_BUCKET, LocalS3Server, upload_tree

    server = demo.stack.enter_context(LocalS3Server())
    n = upload_tree(server.endpoint_url, LOCAL_BUCKET, demo.bucket_root, workers=demo.workers)
    demo.server, demo.endpoint_url = server, server.endpoint_url
    demo.source = f"s3://{LOCAL_BUCKET}/ava-256"
    demo.echo(f"[serve] local S3 server {server.endpoint_url}: {n} objects in {demo.source}/{DEMO_SIZE}/")


def step_fetch(demo: Demo) -> None:
    """``ava256 fetch RAW --source s3://ava256-local/ava-256 --endpoint-url …``: download, check, manifest."""
    from ava256.pipeline.fetch import fetch

    demo.raw = demo.workdir / "raw"
    summary = fetch(demo.raw, size=DEMO_SIZE, captures=demo.folders, source=demo.source,
                    endpoint_url=demo.endpoint_url, workers=demo.workers, progress=False)  # fmt: skip
    demo.results["fetch"] = summary
    for line in summary.lines():
        demo.echo(f"[fetch] {line.strip()}")
    if not summary.ok:
        raise RuntimeError(f"demo fetch failed for {len(summary.failed)} object(s)")


def step_verify(demo: Demo) -> None:
    """``ava256 verify RAW``: re-hash every fetched file against the manifest."""
    from ava256.pipeline.verify import verify

    report = verify(demo.raw, demo.workers, progress=False)
    demo.results["verify"] = report
    for line in report.lines():
        demo.echo(f"[verify] {line.strip()}")
    if not report.clean:
        raise RuntimeError("demo verify found problems")


def step_repack(demo: Demo) -> None:
    """``ava256 repack RAW STORE``: decode the raw tree into per-capture sharded Zarr stores + manifests
    (re-running finds every task done and skips it)."""
    from ava256.pipeline.repack import repack
    from ava256.store.info import format_store_info, store_info

    demo.store = demo.workdir / "store"
    summary = repack(demo.raw, demo.store, workers=demo.workers, downsample=DEMO_DOWNSAMPLE, progress=False)
    demo.results["repack"] = summary
    demo.echo(f"[repack] {summary.line()}")
    for line in format_store_info(store_info(demo.store)).splitlines()[:2]:
        demo.echo(f"[repack] {line}")
    if summary.failed_captures or summary.tasks_failed:
        raise RuntimeError(f"demo repack failed: {summary.line()}")


def step_split(demo: Demo) -> None:
    """``ava256 split STORE --protocol free-face``: hold out each capture's EXP_free_face frames."""
    from ava256.pipeline.split import run_split

    info = run_split(demo.store, DEMO_PROTOCOL, seed=0)
    demo.split = info["name"]
    demo.results["split"] = info
    counts = ", ".join(f"{part} {info['counts'][part]}" for part in ("train", "val", "test"))
    demo.echo(f"[split] {DEMO_PROTOCOL}: {counts} samples -> {info['path']}")


def step_train(demo: Demo) -> None:
    """``ava256 train STORE --split free-face --config tiny``: a tiny universal decoder on the CPU (or GPU),
    reading only Zarr; shows the loss going down. Re-running resumes from the run's newest checkpoint."""
    from ava256.train.config import apply_overrides, load_config
    from ava256.train.trainer import train

    demo.run = demo.workdir / "run"
    cfg = apply_overrides(load_config("tiny"), [f"--train.iters={DEMO_TRAIN_ITERS}", "--train.val_every=0"])
    res = train(demo.store, demo.split, cfg, demo.run, progress=False)
    demo.results["train"] = res
    if res.losses:
        k = max(1, len(res.losses) // 5)
        first, last = sum(res.losses[:k]) / k, sum(res.losses[-k:]) / k
        demo.echo(
            f"[train] iterations {res.start_iteration}..{res.iteration} in {res.seconds:.1f} s: "
            f"mean loss of the first {k} {first:.3f} -> last {k} {last:.3f} ({100 * (last / first - 1):+.1f}%)"
        )
    else:
        demo.echo(f"[train] {demo.run} is already at iteration {res.iteration}")
    if res.val:
        demo.echo("[train] validation " + ", ".join(f"{k} {v:.3f}" for k, v in res.val.items()))


def step_render(demo: Demo) -> None:
    """``ava256 render RUN STORE --out render``: reconstructions and cross-identity expression transfer."""
    from ava256.train.render import render

    out = demo.workdir / "render"
    res = render(demo.run, demo.store, out, frames=6, identities=1, fps=4.0)
    demo.results["render"] = res
    kinds = sorted({p.suffix for p in res.files})
    demo.echo(
        f"[render] {len(res.files)} files ({', '.join(kinds)}) in {out}: {res.frames} frames, "
        f"transfer onto {', '.join(res.identities) or 'no other identity'}; recon PSNR {res.psnr:.2f} dB"
    )


#: The demo, in order.
STEPS: list[Callable[[Demo], None]] = [
    step_generate,
    step_serve,
    step_fetch,
    step_verify,
    step_repack,
    step_split,
    step_train,
    step_render,
]


def run_demo(
    workdir: str | Path = "ava256-demo", *, workers: int = 4, echo: Callable[[str], None] = print
) -> Demo:
    """Run every step of :data:`STEPS` in ``workdir``; returns the :class:`Demo` (its server already stopped)."""
    demo = Demo(Path(workdir).expanduser().resolve(), echo=echo, workers=workers)
    demo.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with demo.stack:
        for step in STEPS:
            step(demo)
    demo.echo(f"[demo] done in {time.perf_counter() - t0:.1f} s; everything is under {demo.workdir}")
    return demo
