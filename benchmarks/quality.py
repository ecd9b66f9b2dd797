"""Avatar quality per unit of GPU time: the whole chain as a user runs it, then validation figures and renders.

Chain (each step the real command, in a subprocess): ``ava256 synth`` (synthetic captures, frames rendered in
``--jobs`` processes) -> ``ava256 fetch --source`` (the local bucket tree) -> ``ava256 repack --downsample``
(training resolution) -> ``ava256 split --protocol free-face`` -> ``ava256 train`` for ``--seconds`` of
training time (``--train.max_seconds``; validation and checkpoints not counted) with validation every
``--val-every`` iterations on held-out ``EXP_free_face`` frames -> ``ava256 render``.

Figures, from the run's ``metrics.jsonl``: per validation, the iteration, training seconds, the mean train
image L1 (0..255) over the preceding iterations, validation PSNR (dB), SSIM and L1; plus the train image L1
at iteration 100 (mean of iterations 91-100) and the training rate. Saved: ``results.json``, a
``<variant>_grid.png`` per variant (validation samples of every identity: ground truth above, reconstruction
below) and the render of the first variant under ``renders/``.

Variants (``--variants``, or ``--ablate`` for the built-in ablation table) are config overrides on the same
data, each a fresh run: the ablation of the training defaults (border fade, ground-truth geometry warm-up,
opacity / background initialisation, pixel-unit learning rate, primitive scale, learning rate, loss
normalisation).

Run on a GPU: ``python benchmarks/quality.py [--seconds 300]`` (data generation included, about 8 minutes on
one H200 with 16 CPUs) or ``--ablate --seconds 40``; ``--quick`` is a CPU smoke run (tiny config, tiny data).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name -> config overrides relative to the defaults (the packaged config as shipped)
ABLATIONS: dict[str, list[str]] = {
    "default": [],
    "no border fade": ["--model.fadescale=0"],
    "no gt-geometry warm-up": ["--train.guide_iters=0"],
    "background lr x1": ["--model.pixel_lr_mult=1"],
    "opaque init (alpha_bias 0.5)": ["--model.alpha_bias=0.5"],
    "background init 0": ["--model.bg_init=0"],
    "primitive colour init 50": ["--model.rgb_init=50"],
    "primitive size 1.0": ["--model.prim_size=1.0"],
    "lr 1e-3": ["--train.lr=0.001"],
    "image loss / 255": ["--loss.image=0.00392157"],
}


def run(cmd: list[str], log: Path) -> float:
    """Run an ava256 command (output to ``log``); returns its wall seconds. Raises with the log's tail."""
    t0 = time.perf_counter()
    with log.open("w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
    if p.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd[2:5])} failed ({p.returncode}):\n{tail}")
    return time.perf_counter() - t0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def ava(*args: str) -> list[str]:
    return [sys.executable, "-m", "ava256.cli", *args]


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, float]]:
    """Synthetic captures -> fetch -> repack -> split, once per data parameters (reused if present)."""
    params = {k: getattr(args, k) for k in ("captures", "cameras", "frames", "image_size", "texture_size")}
    params["downsample"] = args.downsample
    store = work / "store"
    marker = work / "data.json"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return store, json.loads(marker.read_text())["seconds"]
    for d in ("bucket", "raw", "store"):
        shutil.rmtree(work / d, ignore_errors=True)
    w, h = args.image_size
    secs = {}
    secs["synth"] = run(
        ava("synth", str(work / "bucket"), "--captures", str(args.captures), "--cameras", str(args.cameras),
            "--frames", str(args.frames), "--image-size", f"{w}x{h}", "--texture-size", str(args.texture_size),
            "-j", str(args.jobs)),
        work / "synth.log",
    )  # fmt: skip
    secs["fetch"] = run(
        ava("fetch", str(work / "raw"), "-n", str(args.captures), "--source", str(work / "bucket" / "ava-256" / "4TB"),
            "-j", str(args.jobs), "--no-progress"),
        work / "fetch.log",
    )  # fmt: skip
    secs["repack"] = run(
        ava("repack", str(work / "raw"), str(store), "--downsample", str(args.downsample),
            "--workers", str(args.jobs), "--no-progress"),
        work / "repack.log",
    )  # fmt: skip
    secs["split"] = run(ava("split", str(store), "--protocol", "free-face"), work / "split.log")
    marker.write_text(json.dumps({"params": params, "seconds": secs}))
    return store, secs


def train_variant(args: argparse.Namespace, store: Path, work: Path, name: str, over: list[str]) -> dict:
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    out = work / "runs" / slug
    shutil.rmtree(out, ignore_errors=True)
    cmd = ava("train", str(store), "--split", "free-face", "--config", args.config, "--out", str(out))
    cmd += [
        f"--train.max_seconds={args.seconds}",
        f"--train.val_every={args.val_every}",
        "--train.iters=10000000",
        "--train.ckpt_every=0",
        "--train.image_every=0",
        f"--data.val_batches={args.val_batches}",
        *args.override,
        *over,
    ]
    wall = run(cmd, work / f"train-{slug}.log")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    steps = [r for r in rows if "loss/image" in r]
    vals = [r for r in rows if "val/psnr" in r]
    table, prev = [], 0
    for v in vals:
        window = [r["loss/image"] for r in steps if prev < r["iter"] <= v["iter"]]
        t = max((r["time_s"] for r in steps if r["iter"] <= v["iter"]), default=0.0)
        table.append(
            {
                "iter": v["iter"],
                "seconds": t,
                "train_l1": sum(window) / max(len(window), 1),
                "psnr": v["val/psnr"],
                "ssim": v["val/ssim"],
                "val_l1": v["val/l1"],
            }
        )
        prev = v["iter"]
    early = [r["loss/image"] for r in steps if 91 <= r["iter"] <= 100]
    last = steps[-1] if steps else {"iter": 0, "time_s": 1.0}
    res = {
        "variant": name,
        "overrides": over,
        "rows": table,
        "l1_at_100": sum(early) / len(early) if early else float("nan"),
        "iterations": last["iter"],
        "it_s": last["iter"] / max(last["time_s"], 1e-9),
        "wall_s": wall,
        "run": str(out),
    }
    grid(store, out, work / f"{slug}_grid.png", args.grid_samples)
    return res


def grid(store: Path, run_dir: Path, path: Path, n: int) -> None:
    """Validation samples spread over identities and cameras: ground truth above, reconstruction below."""
    import numpy as np
    import torch
    from PIL import Image

    from ava256.data import collate_samples
    from ava256.train.checkpoint import latest_checkpoint, load_checkpoint
    from ava256.train.data import open_datasets
    from ava256.train.trainer import build_model, prepare_batch

    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ds, _, info = open_datasets(
        store, "free-face", state["config"]["data"], info=state["info"], parts=("val",)
    )
    model = build_model(state["config"]["model"], info)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    keys = list(ds.keys())
    by_capture: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_capture.setdefault(k[0], []).append(i)
    picks = []
    for j in range(n):  # round-robin over identities, stepping through their cameras
        lst = list(by_capture.values())[j % len(by_capture)]
        picks.append(lst[(j // len(by_capture)) * 7 % len(lst)])
    cols = []
    with torch.no_grad():
        for i in picks:
            b = prepare_batch(collate_samples([ds[i]]), dev, ds)
            o = model(b, sample=False)
            gt, rec = (x[0].float().clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy() for x in
                       (b["image"], o["image"]))  # fmt: skip
            cols.append(np.concatenate([gt, rec], 0))
    Image.fromarray(np.concatenate(cols, 1)).save(path)


def print_table(results: list[dict], device: str) -> None:
    print(f"\ndevice {device}")
    for r in results:
        print(f"\n{r['variant']}: {r['iterations']} iterations, {r['it_s']:.1f} it/s, "
              f"train image L1 at iteration 100: {r['l1_at_100']:.1f}")  # fmt: skip
        print(f"  {'iter':>7} {'seconds':>8} {'train L1':>9} {'val PSNR':>9} {'SSIM':>6} {'val L1':>7}")
        for row in r["rows"]:
            print(
                f"  {row['iter']:>7} {row['seconds']:>8.1f} {row['train_l1']:>9.2f} {row['psnr']:>9.2f} "
                f"{row['ssim']:>6.3f} {row['val_l1']:>7.2f}"
            )
    if len(results) > 1:
        print("\nablation (final validation of each variant)")
        print(
            f"  {'variant':<30} {'iters':>7} {'it/s':>6} {'L1@100':>7} {'train L1':>9} {'val PSNR':>9} {'SSIM':>6}"
        )
        for r in results:
            f = (
                r["rows"][-1]
                if r["rows"]
                else {"train_l1": float("nan"), "psnr": float("nan"), "ssim": float("nan")}
            )
            print(
                f"  {r['variant']:<30} {r['iterations']:>7} {r['it_s']:>6.1f} {r['l1_at_100']:>7.1f} {f['train_l1']:>9.2f} "
                f"{f['psnr']:>9.2f} {f['ssim']:>6.3f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny config and data, seconds.")
    ap.add_argument("--config", default=None, help="config name or file [reference; tiny with --quick]")
    ap.add_argument("--workdir", default="bench-out/quality")
    ap.add_argument("--captures", type=int, default=4)
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--image-size", type=int, nargs=2, default=[667, 1024], metavar=("W", "H"))
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--downsample", type=int, default=2, help="repack factor (2: 334 x 512 images)")
    ap.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="processes of each stage")
    ap.add_argument("--seconds", type=float, default=300.0, help="training seconds of each variant")
    ap.add_argument("--val-every", type=int, default=500, help="iterations between validations")
    ap.add_argument("--val-batches", type=int, default=16)
    ap.add_argument("--grid-samples", type=int, default=8)
    ap.add_argument("--ablate", action="store_true", help="run the built-in ablation table")
    ap.add_argument("--variants", default=None, help="comma list of ablation names to run (see ABLATIONS)")
    ap.add_argument("--no-render", action="store_true", help="skip ava256 render of the first variant")
    ap.add_argument("--out", default=None, help="copy results.json and the PNGs here too")
    ap.add_argument("override", nargs="*", help="config overrides for every variant (after --)")
    args = ap.parse_args()
    if args.quick:
        args.config = args.config or "tiny"
        args.captures, args.cameras, args.frames, args.texture_size = 2, 3, 10, 32
        args.image_size, args.downsample, args.jobs = [48, 64], 2, min(args.jobs, 2)
        args.seconds, args.val_every, args.val_batches, args.grid_samples = 3.0, 5, 1, 2
        args.workdir += "-quick"
    args.config = args.config or "reference"
    work = (ROOT / args.workdir).resolve() if not Path(args.workdir).is_absolute() else Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    store, data_s = prepare(args, work)
    print("data: " + ", ".join(f"{k} {v:.1f} s" for k, v in data_s.items()), flush=True)
    names = list(ABLATIONS) if args.ablate else ["default"]
    if args.variants:
        names = [n.strip() for n in args.variants.split(",")]
        unknown = [n for n in names if n not in ABLATIONS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {list(ABLATIONS)}")
    results = []
    for name in names:
        r = train_variant(args, store, work, name, ABLATIONS[name])
        print(f"[{name}] {r['iterations']} it in {r['wall_s']:.0f} s wall; final "
              f"{r['rows'][-1] if r['rows'] else {}}", flush=True)  # fmt: skip
        results.append(r)
    if not args.no_render:
        run(ava("render", results[0]["run"], str(store), "--out", str(work / "renders"), "--frames", "8"),
            work / "render.log")  # fmt: skip
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print_table(results, device)
    payload = {"device": device, "config": args.config, "data_seconds": data_s, "results": results}
    (work / "results.json").write_text(json.dumps(payload, indent=2))
    if args.out:
        dst = Path(args.out)
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "results.json", dst / "quality.json")
        for png in sorted(work.glob("*_grid.png"))[:5]:
            shutil.copy(png, dst / png.name)
        for name in ("recon_000.png", "transfer_000.png"):
            if (work / "renders" / name).exists():
                shutil.copy(work / "renders" / name, dst / name)


if __name__ == "__main__":
    main()
