"""Command line: argument parsing only; each command calls one library function (imported lazily so that
``ava256 --help`` stays fast and importing the CLI never needs a GPU).

Exit codes, the same for every command (README): 0 done; 1 the work ran and some items failed, or the input
data (a raw tree, a store, a run folder) is bad; 2 a usage error (an unknown option or key, a bad value, a
path that does not exist, a resume the run folder refuses); 130 / 143 stopped by SIGINT / SIGTERM (train
saves a checkpoint first). Errors are one line naming the key or path, never a traceback."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys

import click

#: ``repack --codec`` choices, default first: ``ava256.store.layout.STORE_CODECS`` (a test keeps them equal;
#: spelled here so that ``--help`` needs no zarr import)
STORE_CODECS = ("blosclz", "zstd-fast", "lz4", "blosc-lz4", "zstd", "blosc-zstd", "none", "jpeg")

SIZES = ("4TB", "8TB", "16TB", "32TB")  # the release's sizes (ava256.capture.parse_size)
# Pipeline order for `ava256 --help` (click would sort them by name).
COMMAND_ORDER = ("fetch", "verify", "repack", "info", "split", "train", "render", "demo", "synth")


class BadUsage(click.ClickException):
    """A usage error reported like any other: one line, exit 2 (click's own prints its usage block)."""

    exit_code = 2


def _require_store(store: str) -> str:
    """STORE (a folder or an fsspec URL such as s3://bucket/prefix) if it exists; else a one-line usage error
    (exit 2), before anything is created."""
    from ava256.store.urls import StoreNotFound, require_store

    try:
        return require_store(store)
    except StoreNotFound as exc:
        raise BadUsage(str(exc)) from exc


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        rest = sorted(set(self.commands) - set(COMMAND_ORDER))
        return [c for c in COMMAND_ORDER if c in self.commands] + rest

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:  # click's parse errors: one line too, with where to look
            cmd = e.ctx.command_path if e.ctx is not None else "ava256"
            click.echo(f"Error: {e.format_message()} (see '{cmd} --help')", err=True)
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _next(line: str) -> None:
    """Each stage's last line: what to run next."""
    click.echo(f"next: {line}")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="ava256")
def cli(verbose: int) -> None:
    """AVA-256 toolkit: fetch -> repack -> split -> train -> render.

    Every stage reads and writes files (raw tree, Parquet manifests, Zarr stores), so each can be
    re-run, resumed after a crash, or run on a Dask cluster on its own.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- commands, one block per stage; each block sits under its marker ---------------------------------------

# [cli:synth] ------------------------------------------------------------------------------------------


def _parse_wxh(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT like 64x96, got {value!r}") from None
    return w, h


@cli.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--captures", default=2, type=click.IntRange(1, 256), help="Number of captures (first N ids).")
@click.option("--cameras", default=8, type=click.IntRange(1, 200), help="Dome cameras per capture.")
@click.option("--frames", default=40, type=click.IntRange(1), help="Frames per capture.")
@click.option(
    "--size",
    default="4TB",
    type=click.Choice(SIZES, case_sensitive=False),
    help="Release size to imitate: 4TB, 8TB (667x1024) or 16TB, 32TB (1334x2048).",
)
@click.option("--seed", default=0, type=int, help="Random seed; the output is a pure function of it.")
@click.option(
    "--image-size", default=None, help="Override the image size, WIDTHxHEIGHT (e.g. 64x96 for tests)."
)
@click.option(
    "--texture-size", default=None, type=click.IntRange(4), help="Override the 1024 uv texture size."
)
@click.option("--drop-rate", default=0.001, type=click.FloatRange(0, 1), help="Fraction of dropped frames.")
@click.option("--prefix", default="ava-256", help="Key prefix above the size folder.")
@click.option("--workers", "-j", default=1, type=click.IntRange(1), help="Captures generated in parallel.")
def synth_cmd(
    out, captures, cameras, frames, size, seed, image_size, texture_size, drop_rate, prefix, workers
):
    """Write synthetic, format-exact captures as a bucket-shaped tree OUT/{prefix}/{size}/{capture}/...

    Serve OUT with a local S3 server, or point `ava256 fetch --source OUT/ava-256/4TB` at it."""
    import time
    from pathlib import Path

    from ava256.synth.generate import generate_bucket

    wh = _parse_wxh(image_size)
    t0 = time.perf_counter()
    try:
        ids = generate_bucket(
            Path(out),
            size=size,
            captures=captures,
            cameras=cameras,
            frames=frames,
            seed=seed,
            prefix=prefix,
            image_size=wh,
            texture_size=texture_size,
            workers=workers,
            drop_rate=drop_rate,
        )
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    from ava256.capture import parse_size

    root = Path(out) / prefix / parse_size(size).name if prefix else Path(out) / parse_size(size).name
    nbytes = nfiles = 0
    for cid in ids:
        files = [p for p in (root / cid.folder).rglob("*") if p.is_file()]
        nfiles += len(files)
        nbytes += sum(p.stat().st_size for p in files)
        click.echo(f"{root / cid.folder}  ({len(files)} files)")
    click.echo(
        f"wrote {len(ids)} capture(s), {nfiles} files, {nbytes / 1e6:.1f} MB under {root} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    _next(f"ava256 fetch RAW --source {root} (or serve {out} from an S3 server and fetch from it)")


# [cli:fetch] ------------------------------------------------------------------------------------------


@cli.command("fetch")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--size",
    default="4TB",
    type=click.Choice(SIZES, case_sensitive=False),
    help="Release size: 4TB, 8TB (1024x667), 16TB, 32TB (2048x1334).",
)
@click.option("-n", "n", type=click.IntRange(min=1), default=None, help="Only the first N captures.")
@click.option(
    "--captures",
    default=None,
    help="A CSV of capture ids (columns mcd,sid,mct, like the release's 256_ids.csv) or a comma list of capture "
    "folder names (20230405--1635--AAN112 or m--20230405--1635--AAN112--GHS). [default: the 256 release ids]",
)
@click.option(
    "--assets",
    default="all",
    help="Comma list of meta, image, segmentation, head_pose, keypoints_3d, vertices, uv_texture, encoder_image "
    "(meta = calibration + frame lists, always included).",
)
@click.option("--cameras", default=None, help="Comma list of dome camera ids (e.g. 400940,401031).")
@click.option("--workers", "-j", default=8, type=click.IntRange(min=1), help="Concurrent downloads.")
@click.option("--processes", is_flag=True, help="Use worker processes instead of threads (LocalCluster).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler (tcp://host:8786).")
@click.option("--endpoint-url", default=None, help="S3 endpoint of a copy (e.g. http://127.0.0.1:9000).")
@click.option(
    "--source",
    default=None,
    help="s3://bucket[/prefix] (prefix holds the size folders; default prefix ava-256) or a local directory "
    "(a bucket root, a size folder, or a folder of captures). [default: the public release bucket]",
)
@click.option("--retries", default=6, type=click.IntRange(min=1), help="Attempts per object before it fails.")
@click.option("--reserve", default=0.0, type=click.FloatRange(min=0), help="GB of disk to leave free on OUT.")
@click.option("--fsync/--no-fsync", default=True, help="Flush each file to disk before its rename.")
@click.option(
    "--rebuild-manifest",
    is_flag=True,
    help="Only rebuild OUT/_manifests/fetch.parquet from the files in OUT (re-hashing them), e.g. after it was "
    "torn; downloads nothing. The next fetch checks the rebuilt rows against the source.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def fetch_cmd(
    out: str,
    size: str,
    n: int | None,
    captures: str | None,
    assets: str,
    cameras: str | None,
    workers: int,
    processes: bool,
    scheduler: str | None,
    endpoint_url: str | None,
    source: str | None,
    retries: int,
    reserve: float,
    fsync: bool,
    rebuild_manifest: bool,
    progress: bool,
) -> None:
    """Download captures into OUT/<mcd--mct--sid>/... (keys as in the bucket) with size + ETag checks, sha256,
    resume and retries; writes OUT/_manifests/fetch.parquet. Re-running skips what is already there.
    Exits 1 if any object or capture failed (they are listed, and a re-run retries them)."""
    from ava256.pipeline.fetch import FetchOptions, fetch

    if rebuild_manifest:
        _rebuild_manifest(out)
        return
    if source and "://" not in source and not source.startswith("s3:") and not os.path.isdir(source):
        raise BadUsage(f"--source {source}: no such directory")
    opts = FetchOptions(
        size=size, n=n, captures=captures, assets=assets, cameras=cameras, workers=workers,
        endpoint_url=endpoint_url, source=source, scheduler=scheduler, processes=processes,
        progress=progress, retries=retries, reserve_bytes=int(reserve * 1e9), fsync=fsync,
    )  # fmt: skip
    try:
        summary = fetch(out, opts)
    except (ValueError, LookupError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary.lines():
        click.echo(line)
    if not summary.ok:
        _next(f"ava256 fetch {shlex.quote(out)} ... again (the same options) retries the failed objects")
        raise SystemExit(1)
    _next(
        f"ava256 repack {shlex.quote(out)} STORE (ava256 verify {shlex.quote(out)} re-hashes the files first)"
    )


def _rebuild_manifest(out: str) -> None:
    from ava256.pipeline.fetch import rebuild_manifest

    try:
        summary = rebuild_manifest(out)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary.lines():
        click.echo(line)
    _next(
        f"ava256 fetch {shlex.quote(out)} ... (the same options as before) checks them and fetches the rest"
    )


# [cli:verify] ------------------------------------------------------------------------------------------


@cli.command("verify")
@click.argument("out")
@click.option("--workers", "-j", default=8, type=click.IntRange(min=1), help="Files hashed concurrently.")
@click.option("--processes", is_flag=True, help="Use worker processes instead of threads (LocalCluster).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler (tcp://host:8786).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
def verify_cmd(out: str, workers: int, processes: bool, scheduler: str | None, progress: bool) -> None:
    """Check OUT, which is either a fetched raw tree or a repacked store.

    A raw tree (OUT/_manifests/fetch.parquet): re-hash every file against the fetch manifest; missing or
    corrupt files are reported and marked there, so `ava256 fetch` downloads them again.
    A store (OUT/<capture>.zarr): read every chunk of every array, checking its crc32c; each bad chunk is
    reported (capture, array, chunk) and its repack tasks marked, so `ava256 repack` redoes them.
    Exits 1 if anything is bad."""
    from ava256.store.layout import MANIFESTS_DIR

    is_url = "://" in out
    if not is_url and not os.path.isdir(out):
        raise BadUsage(f"{out} does not exist (or is not a folder)")
    from ava256.pipeline.verify import is_raw_tree, verify
    from ava256.pipeline.verify_store import is_store, verify_store

    if not is_url and is_raw_tree(out):
        _report_verify(verify, out, workers, scheduler, processes, progress,
                       f"ava256 fetch {shlex.quote(out)} ... (the same options as before) downloads them again")  # fmt: skip
        _next(f"ava256 repack {shlex.quote(out)} STORE")
        return
    if not is_store(out):
        raise click.ClickException(
            f"{out} is neither a fetched raw tree (no fetch manifest {MANIFESTS_DIR}/fetch.parquet) nor a repacked "
            "store (no <mcd--mct--sid>.zarr capture groups)"
        )
    _report_verify(verify_store, out, workers, scheduler, processes, progress,
                   f"ava256 repack RAW {shlex.quote(out)} (the same options as before) rewrites the marked tasks")  # fmt: skip
    _next(f"ava256 split {shlex.quote(out)} --protocol free-face")


def _report_verify(
    run, out: str, workers: int, scheduler, processes: bool, progress: bool, redo: str
) -> None:
    """Run a verifier (``verify`` or ``verify_store``), print its lines; on a problem print ``redo`` as the next
    step and exit 1."""
    try:
        summary = run(out, workers, scheduler=scheduler, processes=processes, progress=progress)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary.lines():
        click.echo(line)
    if not summary.clean:
        _next(redo)
        raise SystemExit(1)


# [cli:repack] ------------------------------------------------------------------------------------------
@cli.command("repack")
@click.argument("raw", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("store", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--captures",
    default=None,
    help="Only these captures: a comma list of folders (mcd--mct--sid) or a CSV file with columns mcd,sid,mct. "
    "Default: every capture folder under RAW.",
)
@click.option(
    "--downsample",
    type=click.IntRange(min=1),
    default=1,
    help="Store camera images (and labels) at 1/k of the "
    "raw size: area filter for images, nearest for labels; intrinsics are scaled to match.",
)
@click.option(
    "--codec",
    type=click.Choice(STORE_CODECS),
    default=STORE_CODECS[0],
    show_default=True,
    help="Codec of the picture arrays. Lossless: blosclz (Blosc, a Zarr v3 core codec) is the cheapest to read; "
    "zstd-fast (Zstandard at a fast level) writes 9 % fewer bytes at a little less repack CPU but reads slower; "
    "lz4 (numcodecs LZ4) is not a Zarr v3 codec; blosc-zstd is the smallest. "
    "jpeg: one JPEG (quality 90, 4:4:4) per image, texture and headset image, ~0.9x the source AVIF bytes at ~42 dB, "
    "decoded on the GPU when training on CUDA; labels stay lossless (docs/store-format.md).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Local Dask worker processes [default: CPU count].",
)
@click.option(
    "--scheduler",
    default=None,
    help="Address of a running Dask scheduler (tcp://host:8786) instead of a local cluster.",
)
@click.option(
    "--max-member-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="A zip member declaring more MB is recorded corrupt without being inflated [default: per asset: "
    "64 for images, labels and textures, 16 for meshes and IR images, 1 for poses and keypoints].",
)
@click.option(
    "--cameras",
    default=None,
    help="Store only these cameras: a comma list of camera ids or a file of them [default: all].",
)
@click.option(
    "--frames",
    default=None,
    metavar="START:STOP[:STEP]",
    help="Store only these rows of each capture's frame list (after --segments), Python slice semantics, "
    "e.g. 0:1000:10 [default: all].",
)
@click.option(
    "--segments",
    default=None,
    help="Store only frames of these segments (comma list of frame-list segment names) [default: all].",
)
@click.option(
    "--assets",
    default=None,
    help="Store only these assets (comma list of image, segmentation, uv_texture, vertices, keypoints_3d, "
    "head_pose, encoder_image); calibration and stats are always stored. Training needs image, vertices, "
    "uv_texture and head_pose [default: all].",
)
@click.option(
    "--progress/--no-progress", default=True, help="Show progress (a bar, or plain lines in a log)."
)
def repack_cmd(
    raw,
    store,
    captures,
    downsample,
    codec,
    workers,
    scheduler,
    max_member_mb,
    cameras,
    frames,
    segments,
    assets,
    progress,
):
    """Decode the raw tree RAW (as written by `ava256 fetch`) into sharded Zarr v3 stores under STORE:
    STORE/<capture>.zarr plus STORE/_manifests/{repack,samples}.parquet. Re-running skips finished work;
    a capture whose raw files changed is redone. With --cameras/--frames/--segments/--assets only that
    selection is stored; it is part of the store: re-running a capture with another selection is refused
    (use a new STORE, or delete STORE/<capture>.zarr)."""
    from ava256.pipeline.repack import discover_captures, parse_captures_arg, repack
    from ava256.pipeline.selection import parse_selection

    try:
        selection = parse_selection(cameras, frames, segments, assets)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        if not discover_captures(raw, parse_captures_arg(captures)):  # before the store (and its lock) exists
            raise ValueError(f"no capture folders (mcd--mct--sid) under {raw}")
        summary = repack(
            raw,
            store,
            captures=captures,
            downsample=downsample,
            codec=codec,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            max_member_mb=max_member_mb,
            selection=selection,
        )
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a write that names no file (ENOSPC): the store
            raise click.ClickException(f"[Errno {exc.errno}] {exc.strerror}: writing under {store}") from exc
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"repack: {summary.line()}")
    for cap, file, reason in summary.failures:  # one line per failed task or capture
        click.echo(f"  FAILED {cap} {file}: {reason}", err=True)
    if summary.failed_captures or summary.tasks_failed:
        _next(
            f"fix or re-fetch the inputs named above, then ava256 repack {shlex.quote(raw)} {shlex.quote(store)} redoes them"
        )
        raise SystemExit(1)
    _next(f"ava256 split {shlex.quote(store)} --protocol free-face")


# [cli:info] ------------------------------------------------------------------------------------------
@cli.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_cmd(store, as_json):
    """Summarise a repacked STORE: captures, frames, cameras, sizes, invalid counts per asset.

    STORE is a local folder or an fsspec URL (e.g. s3://bucket/prefix, credentials and endpoint from the
    usual AWS_* environment variables), as given to repack."""
    import json

    from ava256.store.info import format_store_info, store_info

    _require_store(store)
    try:
        info = store_info(store)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(info, indent=2) if as_json else format_store_info(info))


# [cli:split] ------------------------------------------------------------------------------------------


@cli.command("split")
@click.argument("store")
@click.option(
    "--protocol",
    required=True,
    type=click.Choice(["free-face", "holdout-20", "holdout-12", "cameras"]),
    help="free-face: hold out each capture's EXP_free_face frames (val = first half, test = second half); "
    "holdout-20 / holdout-12: hold out 20 / 12 subjects (a quarter val, the rest test); "
    "cameras: hold out ~10% of the dome cameras (half val, half test).",
)
@click.option("--seed", default=0, type=int, help="Seed of the held-out subject/camera choice.")
@click.option(
    "--name",
    default=None,
    help="Split name (folder under STORE/_splits). [default: PROTOCOL or PROTOCOL-seedS]",
)
@click.option(
    "--held-out-cameras",
    default=None,
    type=click.IntRange(min=2),
    help="cameras protocol: how many cameras to hold out. [default: max(2, round(cameras / 10))]",
)
def split_cmd(store: str, protocol: str, seed: int, name: str | None, held_out_cameras: int | None) -> None:
    """Write deterministic train/val/test partitions of STORE's samples manifest to
    STORE/_splits/NAME/{train,val,test}.parquet (+ split.json). Invalid samples are excluded and counted.

    STORE is a local folder or an fsspec URL (e.g. s3://bucket/prefix), as given to repack."""
    from ava256.pipeline.split import run_split

    _require_store(store)
    try:
        info = run_split(store, protocol, seed, name, held_out_cameras=held_out_cameras)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"split {info['name']} ({protocol}, seed {seed}) -> {info['path']}")
    click.echo(f"  {'part':<6}{'samples':>10}{'subjects':>10}{'captures':>10}{'cameras':>9}")
    for part in ("train", "val", "test"):
        click.echo(
            f"  {part:<6}{info['counts'][part]:>10}{info['subjects'][part]:>10}"
            f"{info['captures'][part]:>10}{info['cameras'][part]:>9}"
        )
    click.echo(f"  invalid samples excluded: {info['invalid_excluded']} of {info['samples']}")
    _next(f"ava256 train {shlex.quote(store)} --split {info['name']}")


# [cli:train] ------------------------------------------------------------------------------------------


@cli.command(
    "train",
    context_settings=dict(ignore_unknown_options=True, allow_extra_args=True),
)
@click.argument("store")
@click.option(
    "--split", "split", required=True, help="Split name (STORE/_splits/<name>/{train,val}.parquet)."
)
@click.option(
    "--config",
    "config",
    default="reference",
    help="YAML config file, or a packaged one: 'tiny' (CPU, seconds) or 'reference' (GPU).",
)
@click.option(
    "--out", "out", type=click.Path(file_okay=False), default=None, help="Run folder [runs/<split>]."
)
@click.option(
    "--progress/--no-progress", default=True, help="Show progress (a bar, or plain lines in a log)."
)
@click.pass_context
def train_cmd(
    ctx: click.Context, store: str, split: str, config: str, out: str | None, progress: bool
) -> None:
    """Train the universal decoder on STORE's split (resumes from OUT's newest checkpoint).

    Any config key can be overridden with --section.key=value, e.g. --train.lr=1e-4 --data.batch_size=8; on
    resume only run-length, logging and loader keys may change (others are refused, exit 2).
    Multi-GPU: torchrun --nproc_per_node=N -m ava256.cli train ... (DDP is detected from the environment).
    SIGINT / SIGTERM save a checkpoint at the current iteration and exit 130 / 143.
    Writes OUT/checkpoints/ckpt_*.pt, OUT/metrics.jsonl, OUT/tb/ (TensorBoard), OUT/val.json, OUT/config.yaml.
    STORE is a local folder or an fsspec URL (e.g. s3://bucket/prefix), as given to repack; OUT is local.
    """
    from pathlib import Path

    from ava256.train.config import ConfigError, apply_overrides, load_config
    from ava256.train.control import ResumeConflict
    from ava256.train.trainer import shutdown_distributed, train

    _require_store(store)
    run = Path(out) if out else Path("runs") / split
    try:
        cfg = apply_overrides(load_config(config), ctx.args)
    except (ConfigError, FileNotFoundError) as e:
        raise BadUsage(str(e)) from e
    try:
        res = train(store, split, cfg, run, progress=progress, echo=lambda m: click.echo(m, err=True))
    except ResumeConflict as e:
        raise BadUsage(str(e)) from e
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e)) from e
    shutdown_distributed()  # under torchrun: leave the process group cleanly before reporting
    if not res.main:  # DDP: rank 0 reports
        if res.stopped_by:
            sys.exit(128 + res.stopped_by)
        return
    if res.stopped_by:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun may signal again while we report
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        argv = ["ava256", "train", store, "--split", split, "--config", config, "--out", str(run), *ctx.args]
        world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if world > 1:
            nodes = [f"--nnodes={world // local}"] if world > local else []  # + the job's rendezvous options
            argv = ["torchrun", *nodes, f"--nproc_per_node={local}", "-m", "ava256.cli", *argv[1:]]
        name = signal.Signals(res.stopped_by).name
        click.echo(
            f"stopped by {name} at iteration {res.iteration} of {cfg['train']['iters']}; "
            f"checkpoint {res.checkpoint}"
        )
        click.echo(f"resume with: {shlex.join(argv)}")
        sys.exit(128 + res.stopped_by)
    if res.iteration > res.start_iteration or res.val:
        click.echo(
            f"trained iterations {res.start_iteration}..{res.iteration} in {res.seconds:.1f} s "
            f"({res.samples_per_s:.1f} samples/s); last loss "
            f"{res.losses[-1] if res.losses else float('nan'):.4f}; val {res.val}; run folder {res.out}"
        )
    else:
        click.echo(f"nothing to do: {res.out} is already at iteration {res.iteration}")
    _next(
        f"ava256 render {shlex.quote(str(run))} {shlex.quote(store)} --out {shlex.quote(str(run / 'render'))}"
    )


# [cli:render] ------------------------------------------------------------------------------------------


@cli.command("render")
@click.argument("ckpt", type=click.Path(exists=True))
@click.argument("store")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--split", default=None, help="Split name [the one the checkpoint trained on].")
@click.option(
    "--part", default="val", type=click.Choice(["train", "val", "test"]), help="Split part to render."
)
@click.option("--frames", default=24, type=click.IntRange(1), help="Frames of the driver capture to render.")
@click.option("--camera", default=None, help="Camera id to render from [most frontal].")
@click.option(
    "--identities", default=3, type=click.IntRange(0), help="Identities to transfer the expression onto."
)
@click.option("--fps", default=8.0, type=click.FloatRange(0.1), help="Animation frame rate.")
def render_cmd(
    ckpt: str,
    store: str,
    out: str,
    split: str | None,
    part: str,
    frames: int,
    camera: str | None,
    identities: int,
    fps: float,
) -> None:
    """Render CKPT (a checkpoint or a run folder) on STORE: reconstructions and cross-identity expression
    transfer (the first capture's expression codes decoded with other identities), as PNGs and GIFs
    (MP4 too with an ffmpeg backend), plus render.json. STORE is a local folder or an fsspec URL."""
    from ava256.train.render import render

    _require_store(store)
    try:
        res = render(
            ckpt,
            store,
            out,
            split=split,
            part=part,
            frames=frames,
            camera=camera,
            identities=identities,
            fps=fps,
        )
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(
        f"{len(res.files)} files in {out}: {res.frames} frames, identities {res.identities}, recon PSNR {res.psnr:.2f} dB"
    )
    _next(f"open {os.path.join(out, 'transfer.gif')} (summary in {os.path.join(out, 'render.json')})")


# [cli:demo] ------------------------------------------------------------------------------------------


@cli.command("demo")
@click.option("--workdir", default="ava256-demo", type=click.Path(file_okay=False), help="Working directory.")
@click.option("--workers", "-j", default=4, type=click.IntRange(min=1), help="Dask workers of each stage.")
def demo_cmd(workdir: str, workers: int) -> None:
    """Run the whole chain offline on synthetic captures: generate a bucket, serve it from a local S3 server,
    fetch, verify, repack (4x downsampled), split (free-face), train a tiny model (loss going down) and
    render reconstructions + expression transfer. Re-running in the same WORKDIR redoes nothing."""
    from ava256.demo import run_demo

    try:
        run_demo(workdir, workers=workers, echo=click.echo)
    except (ValueError, LookupError, OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc


def main() -> None:
    cli(prog_name="ava256")


if __name__ == "__main__":
    main()
