"""Run control for the trainer, kept apart from the training step: the start banner, stop signals (SIGINT,
SIGTERM) agreed across DDP ranks, the resume checks of a run folder, and an RNG sandbox for validation."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from ava256.train.checkpoint import rng_state, set_rng_state

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Keys a resumed run may change: how long it runs, how often it logs/validates/saves, and how the loader
# feeds it (none of them changes a sample or an update). Any other change is refused.
RESUMABLE_KEYS = frozenset(
    {
        "train.iters",
        "train.max_seconds",
        "train.log_every",
        "train.image_every",
        "train.val_every",
        "train.ckpt_every",
        "train.keep_ckpts",
        "train.ddp_bucket_mb",
        "train.ddp_static_graph",
        "train.ddp_gradient_as_bucket_view",
        "train.ddp_broadcast_buffers",
        "data.num_workers",
        "data.bad_sample_limit",
        "data.bad_sample_window",
        "data.workers",
        "data.prefetch_factor",
        "data.pin_memory",
        "data.val_batches",
        "data.gpu_decode",
    }
)
#: keys that checkpoints of older ava256 versions lack, with the value that trains as those runs did (None:
#: any value does): a resume may add them
ADDED_KEYS: dict[str, Any] = {"train.lr_scaling": "none", "train.lr_ref_batch": None}

# A CPU run longer than this is almost certainly a mistake (a GPU config on a CPU build of torch).
CPU_ABSURD_SECONDS = 24 * 3600.0


class ResumeConflict(ValueError):
    """The command line asks a run folder for something its checkpoints contradict."""


def start_banner(device: torch.device, amp: bool, world: int, iters: int, batch: int) -> str:
    """One line: device (and GPU name), precision, world size, iterations and batch per rank."""
    if device.type == "cuda":
        where = f"device {device} ({torch.cuda.get_device_name(device)})"
    else:
        why = "a CPU build of torch" if torch.version.cuda is None else "no CUDA device visible"
        where = f"device cpu ({why})"
    precision = "bf16 autocast (raymarching fp32)" if amp else "fp32"
    return f"train: {where}, precision {precision}, world size {world}, {iters} iterations x batch {batch} per rank"


def cpu_time_warning(device: torch.device, step_seconds: float, remaining: int) -> str | None:
    """A warning when a CPU run's measured steps put its end absurdly far away, else None."""
    eta = step_seconds * remaining
    if device.type != "cpu" or eta < CPU_ABSURD_SECONDS:
        return None
    return (
        f"warning: on the CPU the remaining {remaining} iterations take about {eta / 3600:.0f} h "
        f"({step_seconds:.2f} s each); train on a GPU with a CUDA build of torch (README, Set-up) "
        "or use a smaller config (--config tiny)"
    )


class StopSignals:
    """While active, SIGINT and SIGTERM only note the request; :meth:`agree` turns the notes of all ranks into
    one decision at the same iteration (an all-reduce of the signal number, so a signal that reached one rank
    stops them all). Handlers are installed only in the main thread and restored on exit."""

    def __init__(
        self,
        device: torch.device = torch.device("cpu"),
        world: int = 1,
        echo: Callable[[str], None] | None = None,
    ):
        self.device, self.world, self.echo = device, world, echo
        self.received = 0
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        first = not self.received
        self.received = self.received or signum
        if first:
            msg = (
                f"{signal.Signals(signum).name}: stopping after this iteration (a checkpoint is saved first)"
            )
            (self.echo or log.warning)(msg)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def agree(self) -> int:
        """The signal number every rank stops for (0: go on). Collective under DDP: call it on every rank at
        every iteration."""
        if self.world <= 1:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block (validation, image logging) without touching training's RNG streams: the python, numpy,
    torch CPU and CUDA states are saved before it and restored after, so a resumed run draws what an
    uninterrupted one draws whether or not the block ran in between."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        else:
            out[key] = v
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"train.lr": (0.001, 0.01), ...}``: every dotted key whose value differs between two configs."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def check_resume(run: str, state: dict[str, Any], cfg: dict[str, Any], split: str | None) -> list[str]:
    """Check a resume of run folder ``run`` from checkpoint ``state`` with config ``cfg``. Changes of
    :data:`RESUMABLE_KEYS` are allowed and returned as warning lines (the new values are applied and
    recorded); any other change, or another split, raises :class:`ResumeConflict` naming each key."""
    if split is not None and state.get("split") not in (None, split):
        raise ResumeConflict(
            f"{run} was trained on split {state['split']!r}, not {split!r}: "
            f"resume with --split {state['split']} or start a new run with another --out"
        )
    old = _flatten(state.get("config") or {})
    changes = config_changes(state.get("config") or {}, cfg)
    added = {
        k for k, (_, b) in changes.items() if k not in old and k in ADDED_KEYS and ADDED_KEYS[k] in (None, b)
    }
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_KEYS and k not in added}
    if refused:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ResumeConflict(
            f"{run} resumes from iteration {state['iteration']} with a different config ({what}); a resumed run "
            "keeps its model, optimizer and schedule: drop the change(s) or start a new run with another --out"
        )
    return [
        f"warning: {run}: {k} changed on resume: {a!r} -> {b!r} (applied)" for k, (a, b) in changes.items()
    ]
