"""The training loop: single process or torchrun DDP, bf16 autocast, checkpoints, TensorBoard, validation."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ava256.atomic import atomic_write_text
from ava256.data import ResumableSampler, batch_size_of, collate_samples, make_loader
from ava256.data.loader import BAD_SAMPLES
from ava256.models import Autoencoder, ModelConfig, losses, psnr, ssim
from ava256.progress import Progress
from ava256.train.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ava256.train.control import StopSignals, check_resume, cpu_time_warning, isolated_rng, start_banner
from ava256.train.data import DataInfo, open_datasets
from ava256.train.ddp import check_replicas, scaled_lr, wrap

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run did. ``losses``: total loss of every iteration this call ran, in order."""

    out: Path
    start_iteration: int
    iteration: int
    losses: list[float] = field(default_factory=list)
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    samples_per_s: float = 0.0
    stopped_by: int = 0  # the signal (SIGINT, SIGTERM) that stopped the run after saving, 0 if none
    checkpoint: Path | None = None  # the newest checkpoint this call saved
    main: bool = True  # rank 0 (the rank that reports)


class BadDataError(ValueError):
    """Too many samples of the recent window could not be read: the store needs ``ava256 verify``."""


class BadSampleWindow:
    """Counts skipped (unreadable) samples over the last ``window`` samples drawn; :meth:`add` raises
    :class:`BadDataError` once more than ``limit`` of them (at least one sample) were bad, so one bad chunk
    never stops a run but a damaged store does."""

    def __init__(self, limit: float, window: int, store: object = None):
        from collections import deque

        self.limit, self.window, self.store = float(limit), max(1, int(window)), store
        self.allowed = max(1, math.floor(self.limit * self.window))
        self._batches: deque[tuple[int, int]] = deque()  # (samples drawn, bad) per batch
        self._drawn = self._bad = 0
        self.total = 0

    def add(self, drawn: int, bad: list[Any]) -> None:
        self._batches.append((drawn, len(bad)))
        self._drawn += drawn
        self._bad += len(bad)
        self.total += len(bad)
        while self._batches and self._drawn - self._batches[0][0] >= self.window:
            d, b = self._batches.popleft()
            self._drawn -= d
            self._bad -= b
        if bad and self._bad > self.allowed:
            last = bad[-1]
            raise BadDataError(
                f"{self._bad} of the last {self._drawn} samples could not be read (over data.bad_sample_limit="
                f"{self.limit} of data.bad_sample_window={self.window}); the last: {last.where()}: {last.reason}. "
                f"Run `ava256 verify {self.store or 'STORE'}`, then `ava256 repack RAW STORE` rewrites the bad chunks"
            )


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed() -> _Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return _Dist(rank, world, local, device)
    return _Dist(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))


def shutdown_distributed() -> None:
    """End this process's part in a DDP job (the process group :func:`train` joined), after a barrier so no
    rank leaves while another still talks to it. Call once at the end of the program; a no-op without one.
    Objects that hold the group (DDP wrappers) are collected first, so none outlives it."""
    if not dist.is_initialized():
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def all_ranks_have_samples(n_ok: int, device: torch.device) -> bool:
    """Whether every rank's batch has a readable sample. A rank whose whole batch was unreadable cannot take
    part in the gradient all-reduce, so under DDP all ranks skip that step together (one scalar all-reduce)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n_ok > 0
    flag = torch.tensor([float(n_ok > 0)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def prepare_batch(batch: dict[str, Any], device: torch.device, dataset: Any = None) -> dict[str, Any]:
    """A loader batch as the model takes it, on ``device``: tensors moved (non-blocking from pinned memory),
    and a compact batch (``ZarrSampleDataset(normalize=False)``) completed, converted and normalised on the
    device by ``ava256.data.finish_batch`` with its ``dataset``."""
    if "image_jpeg" in batch or batch["image"].dtype == torch.uint8:
        from ava256.data import finish_batch

        if dataset is None:
            raise ValueError("a compact (uint8) batch needs the dataset it came from")
        return finish_batch(batch, dataset, device)
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _due(iteration: int, every: object) -> bool:
    """True when a periodic action (log, image, checkpoint, validation) is due; ``every <= 0`` disables it."""
    n = int(every)  # type: ignore[call-overload]
    return n > 0 and iteration % n == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(model_cfg: dict[str, Any], info: DataInfo) -> Autoencoder:
    """The autoencoder for a data set (its topology, vertex normalisation, camera and identity counts)."""
    mc = ModelConfig.from_dict({**model_cfg, "n_cameras": info.n_cameras, "n_identities": info.n_identities})
    return Autoencoder(mc, info.topology, torch.as_tensor(info.vertmean), info.vertstd)


def image_grid(gt: torch.Tensor, pred: torch.Tensor, n: int = 4) -> torch.Tensor:
    """(3, n*H, 2*W) float 0..1: each row a sample, ground truth left, reconstruction right."""
    g, p = gt[:n].float().cpu() / 255, pred[:n].detach().float().cpu().clamp(0, 255) / 255
    rows = torch.cat([g, p], dim=-1)  # (n, 3, H, 2W)
    return torch.cat(list(rows), dim=-2).clamp(0, 1)


@torch.no_grad()
def evaluate(
    model: Autoencoder,
    dataset: Dataset,
    batch_size: int,
    max_batches: int,
    device: torch.device,
    amp: bool,
) -> dict[str, float]:
    """PSNR (dB), SSIM and L1 (0..255) of reconstructions (mean expression code) on the first
    ``max_batches`` batches of ``dataset`` in order."""
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_samples
    )
    sums = {"psnr": 0.0, "ssim": 0.0, "l1": 0.0}
    count = 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        if batch is not None:
            batch.pop(BAD_SAMPLES, None)  # unreadable samples are skipped (the dataset logged them)
        if not batch:
            continue
        batch = prepare_batch(batch, device, dataset)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(batch, sample=False)
        pred, gt = out["image"].float(), batch["image"].float()
        valid = batch["valid"].bool()
        if not valid.any():
            continue
        pred, gt = pred[valid], gt[valid]
        sums["psnr"] += float(psnr(pred, gt).sum())
        sums["ssim"] += float(ssim(pred, gt).sum())
        sums["l1"] += float((pred.clamp(0, 255) - gt).abs().flatten(1).mean(1).sum())
        count += int(valid.sum())
    model.train(was_training)
    return {k: v / max(count, 1) for k, v in sums.items()} | {"samples": float(count)}


def _summary_writer(folder: Path, iteration: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # tensorboard is a dependency

    return SummaryWriter(str(folder), purge_step=iteration + 1 if iteration else None)


class _Metrics:
    """Append-only ``metrics.jsonl`` (one JSON object per line) on the main rank."""

    def __init__(self, path: Path, resume_iteration: int):
        self.path = path
        if path.exists():  # drop lines a killed run wrote after its last checkpoint
            keep = [
                ln
                for ln in path.read_text().splitlines()
                if ln and json.loads(ln)["iter"] <= resume_iteration
            ]
            atomic_write_text(path, "".join(k + "\n" for k in keep))
        self.f = path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def train(
    store: str | os.PathLike[str] | None,
    split: str | None,
    cfg: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    datasets: tuple[Dataset, Dataset | None, DataInfo] | None = None,
    stop_after: int | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume) the autoencoder.

    Args:
        store, split: the Zarr store and split name (``STORE/_splits/<split>/{train,val}.parquet``).
        cfg: full config dict (:func:`ava256.train.config.load_config`).
        out: run folder: ``checkpoints/``, ``tb/`` (TensorBoard), ``metrics.jsonl``, ``config.yaml``,
            ``val.json``. If it holds checkpoints, training resumes from the newest one exactly.
        datasets: (train, val, info) to use instead of opening ``store`` (in-memory benchmarks, tests).
        stop_after: stop after this many iterations of this call (as if killed; no final checkpoint).
        on_iteration: callback(iteration, loss) after each step (tests use it to simulate a crash).
        echo: where rank 0 reports the start banner, a resume and warnings (default: logging at INFO).

    SIGINT and SIGTERM stop the run at the same iteration on every rank after a checkpoint of it is saved
    (``TrainResult.stopped_by``). A resume may change only ``control.RESUMABLE_KEYS`` (with a warning); any
    other change raises ``control.ResumeConflict`` before anything in ``out`` is written.
    """
    with StopSignals() as signals:
        return _train(
            store, split, cfg, out, datasets=datasets, stop_after=stop_after, on_iteration=on_iteration,
            progress=progress, echo=echo, signals=signals,
        )  # fmt: skip


def _train(
    store: str | os.PathLike[str] | None,
    split: str | None,
    cfg: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    datasets: tuple[Dataset, Dataset | None, DataInfo] | None = None,
    stop_after: int | None = None,
    on_iteration: Callable[[int, float], None] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    signals: StopSignals,
) -> TrainResult:
    import yaml

    t_start = time.perf_counter()
    dd = _setup_distributed()
    out = Path(out)
    tc, dc = cfg["train"], cfg["data"]
    ckpt_dir = out / "checkpoints"
    if datasets is None:
        if store is None or split is None:
            raise ValueError("train needs a store and a split name (or datasets)")
        train_ds, val_ds, info = open_datasets(store, split, dc)
    else:
        train_ds, val_ds, info = datasets
    say = (echo or log.info) if dd.main else (lambda msg: None)
    seed_everything(int(tc["seed"]) + dd.rank)

    model = build_model(cfg["model"], info).to(dd.device)
    opt = torch.optim.Adam(model.param_groups(scaled_lr(cfg, dd.world)))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(tc["lr_step"]), gamma=float(tc["lr_gamma"]))
    sampler = ResumableSampler(len(train_ds), seed=int(tc["seed"]), rank=dd.rank, world=dd.world)
    iteration = 0
    ckpt = latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location=dd.device)
        for line in check_resume(str(out), state, cfg, split):
            say(line)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        iteration = int(state["iteration"])
        rngs = state["rng"]
        set_rng_state(rngs[dd.rank] if dd.rank < len(rngs) else rngs[0])
        say(f"resuming {out} from iteration {iteration} ({ckpt.name})")
    start_iteration = iteration
    if dd.main:  # only now: a refused run leaves the run folder as it was
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    net: torch.nn.Module = model
    if dd.world > 1:
        net = wrap(model, dd.device, dd.local_rank, tc)
    amp = bool(tc["amp"]) and dd.device.type == "cuda"
    weights = {k: float(v) for k, v in cfg["loss"].items()}
    bs = int(dc["batch_size"])
    iters = int(tc["iters"])
    say(start_banner(dd.device, amp, dd.world, iters, bs))

    writer = None
    metrics = None
    if dd.main:
        writer = _summary_writer(out / "tb", iteration)
        metrics = _Metrics(out / "metrics.jsonl", iteration)

    def save(it: int) -> Path:
        rngs, replicas = [rng_state()], None
        if dd.world > 1:
            rngs = [None] * dd.world
            dist.all_gather_object(rngs, rng_state())
            replicas = check_replicas(model)  # one model on every rank, or a one-line error
        if dd.main:
            save_checkpoint(
                ckpt_dir,
                it,
                {
                    "iteration": it,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "sampler": sampler.state_dict(),
                    "rng": rngs,
                    "replicas": replicas,  # every rank's parameter digest (DDP)
                    "config": cfg,
                    "split": split,
                    "model_config": model.cfg.to_dict(),
                    "info": info.to_dict(),
                },
                keep=int(tc["keep_ckpts"]),
            )
        if dd.world > 1:
            dist.barrier()
        result.checkpoint = checkpoint_path(ckpt_dir, it)
        return result.checkpoint

    result = TrainResult(out=out, start_iteration=start_iteration, iteration=iteration, main=dd.main)
    bar = Progress("train", iters, unit="it", initial=iteration, enabled=progress and dd.main)
    # the loader draws its workers' base seed from its own generator, never from the global RNG (exact resume)
    loader_gen = torch.Generator().manual_seed(int(tc["seed"]) * 7919 + dd.rank)
    nw = int(dc["num_workers"])
    loader = make_loader(
        train_ds,
        batch_size=bs,
        sampler=sampler,
        drop_last=True,
        num_workers=nw,
        workers=str(dc["workers"]),
        pin_memory=bool(dc["pin_memory"]) and dd.device.type == "cuda",
        prefetch_factor=int(dc["prefetch_factor"]),
        generator=loader_gen,
    )
    ran = 0
    t_loop = time.perf_counter()
    paused = 0.0  # seconds of checkpoints and validation inside the loop (not training time)
    max_seconds = float(tc.get("max_seconds", 0) or 0)
    samples_seen = 0
    stopped = False
    saved_at = start_iteration if ckpt is not None else -1
    signals.device, signals.world, signals.echo = dd.device, dd.world, say
    bad_window = BadSampleWindow(
        float(dc.get("bad_sample_limit", 0.01)), int(dc.get("bad_sample_window", 1000)), store
    )
    model.train()
    while iteration < iters and not stopped:
        epoch_done = True
        for batch in loader:
            t0 = time.perf_counter()
            bad = batch.pop(BAD_SAMPLES, []) if batch is not None else []
            n_ok = batch_size_of(batch) if batch else 0
            bad_window.add(n_ok + len(bad), bad)
            if not all_ranks_have_samples(n_ok, dd.device):  # unreadable batch here or on another rank
                sampler.advance(n_ok + len(bad))
                continue
            batch = prepare_batch(batch, dd.device, train_ds)
            with torch.autocast(device_type=dd.device.type, dtype=torch.bfloat16, enabled=amp):
                outs = net(batch, guide=iteration < int(tc["guide_iters"]))
            terms = losses(outs, batch, weights)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc["grad_clip"]))
            opt.step()
            sched.step()
            sampler.advance(n_ok + len(bad))
            iteration += 1
            ran += 1
            samples_seen += bs * dd.world
            total = float(terms["total"].detach())
            if not math.isfinite(total):
                raise FloatingPointError(f"non-finite loss {total} at iteration {iteration}")
            result.losses.append(total)
            if dd.main:
                dt_step = time.perf_counter() - t0
                row = {
                    "iter": iteration,
                    "time_s": time.perf_counter() - t_loop - paused,
                    "lr": sched.get_last_lr()[0],
                    "grad_norm": float(gnorm),
                    "step_s": dt_step,
                    "data/bad_samples": len(bad),
                    "data/bad_samples_total": bad_window.total,
                }
                row |= {f"loss/{k}": float(v.detach()) for k, v in terms.items()}
                metrics.write(row)
                if _due(iteration, tc["log_every"]):
                    for k, v in row.items():
                        if k != "iter":
                            writer.add_scalar(k, v, iteration)
                    writer.add_scalar("perf/step_s", dt_step, iteration)
                if _due(iteration, tc["image_every"]):
                    with isolated_rng():
                        writer.add_image(
                            "train/gt_vs_recon", image_grid(batch["image"], outs["image"]), iteration
                        )
                bar.update(1)
                el = time.perf_counter() - t_loop
                bar.set_postfix(loss=f"{total:.3f}", samples_s=f"{samples_seen / max(el, 1e-9):.1f}")
                if ran == 3:  # three measured steps: warn now if this CPU run would take days
                    warning = cpu_time_warning(dd.device, el / ran, iters - iteration)
                    if warning:
                        say(warning)
            if on_iteration is not None:
                on_iteration(iteration, total)
            t_pause = time.perf_counter()
            if _due(iteration, tc["ckpt_every"]) and iteration < iters:
                save(iteration)
                saved_at = iteration
            if val_ds is not None and _due(iteration, tc["val_every"]) and iteration < iters:
                result.val = _validate(model, val_ds, dc, dd, amp, writer, metrics, iteration, out, info)
            paused += time.perf_counter() - t_pause
            if max_seconds > 0 and _out_of_time(t_loop, paused, max_seconds, dd):
                iters = iteration  # a time-limited run ends here as if this were its last iteration
            result.stopped_by = signals.agree() if iteration < iters else 0
            if result.stopped_by:
                if saved_at != iteration:
                    save(iteration)
                stopped = True
                epoch_done = False
                break
            if iteration >= iters or (stop_after is not None and ran >= stop_after):
                stopped = stop_after is not None and ran >= stop_after and iteration < iters
                epoch_done = False
                break
        if epoch_done:
            sampler.next_epoch()
    elapsed = time.perf_counter() - t_loop
    bar.close()
    if not stopped:
        save(iteration)
        if val_ds is not None:
            result.val = _validate(model, val_ds, dc, dd, amp, writer, metrics, iteration, out, info)
    if writer is not None:
        writer.close()
        metrics.close()
    result.iteration = iteration
    result.seconds = time.perf_counter() - t_start
    result.samples_per_s = samples_seen / max(elapsed, 1e-9)
    return result


def _out_of_time(t_loop: float, paused: float, max_seconds: float, dd: _Dist) -> bool:
    """Whether ``max_seconds`` of training time (checkpoints and validation excluded) have passed; under
    DDP rank 0 decides for all, so every rank stops at the same iteration."""
    done = time.perf_counter() - t_loop - paused >= max_seconds
    if dd.world == 1:
        return done
    flag = torch.tensor([float(done)], device=dd.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _validate(
    model, val_ds, dc, dd: _Dist, amp, writer, metrics, iteration: int, out: Path, info: DataInfo
) -> dict[str, float]:
    """Validation on the main rank; the others wait."""
    res: dict[str, float] = {}
    if dd.main and len(val_ds) > 0:
        with isolated_rng():  # validation draws nothing from training's RNG streams (exact resume)
            res = evaluate(model, val_ds, int(dc["batch_size"]), int(dc["val_batches"]), dd.device, amp)
        for k, v in res.items():
            writer.add_scalar(f"val/{k}", v, iteration)
        metrics.write({"iter": iteration} | {f"val/{k}": v for k, v in res.items()})
        atomic_write_text(out / "val.json", json.dumps({"iter": iteration, **res}, indent=2))
        log.info("validation at %d: %s", iteration, res)
    if dd.world > 1:
        dist.barrier()
    return res
