"""The one progress helper every stage uses. On a terminal it is a tqdm bar on stderr; when stderr is not a
terminal (a SLURM log, a pipe, CI) it prints one plain line every ``AVA256_PROGRESS_SECONDS`` seconds
(default 30) and one at the end: ``<stage>: done/total (pct) rate ETA``, so logs stay small."""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

INTERVAL_ENV = "AVA256_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _human(n: float, unit: str, scale: bool) -> str:
    if not scale:
        return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.1f} {prefix}{unit}" if prefix else f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f}"


def _duration(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """Counts work done towards ``total`` (``None``: unknown) for ``stage``.

    ``enabled=False`` shows nothing. ``unit_scale``: show counts with k/M/G prefixes (bytes). The total may be
    raised with :meth:`set_total`, never lowered below what is done; ``initial`` counts work done before
    (a resumed run) that does not enter the rate."""

    def __init__(
        self,
        stage: str,
        total: float | None = None,
        *,
        unit: str = "it",
        unit_scale: bool = False,
        initial: float = 0,
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float | None = None,
    ):
        self.stage, self.unit, self.unit_scale = stage, unit, unit_scale
        self.total, self.n, self._initial = total, initial, initial
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = _interval() if interval is None else interval
        self._postfix: dict[str, Any] = {}
        self._t0 = self._last = time.monotonic()
        self._closed = False
        self._bar = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, desc=stage, unit=unit, unit_scale=unit_scale,
                unit_divisor=1000, dynamic_ncols=True, file=self.stream, smoothing=0.1,
            )  # fmt: skip

    @property
    def plain(self) -> bool:
        """True when progress goes out as periodic plain lines (stderr is not a terminal)."""
        return self.enabled and self._bar is None

    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._emit()

    def skip(self, n: float = 1) -> None:
        """Count ``n`` as done without entering the rate (work found finished by an earlier run)."""
        self._initial += n
        self.update(n)

    def set_total(self, total: float) -> None:
        self.total = max(total, self.n)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def set_postfix(self, **kw: Any) -> None:
        self._postfix.update(kw)
        if self._bar is not None:
            self._bar.set_postfix({k: str(v) for k, v in self._postfix.items()}, refresh=False)

    def line(self) -> str:
        """The plain progress line: stage, done/total (percent), rate, ETA, postfix."""
        el = max(time.monotonic() - self._t0, 1e-9)
        rate = (self.n - self._initial) / el
        done = _human(self.n, self.unit, self.unit_scale)
        parts = [f"{self.stage}:"]
        if self.total:
            total = _human(self.total, self.unit, self.unit_scale)
            parts.append(f"{done}/{total} ({100 * self.n / self.total:.0f}%)")
        else:
            parts.append(done)
        parts.append(
            f"{_human(rate, self.unit, self.unit_scale)}/s"
            if self.unit_scale
            else f"{rate:.2f} {self.unit}/s"
        )
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts.append(f"elapsed {_duration(el)}")
        parts += [f"{k}={v}" for k, v in self._postfix.items()]
        return " ".join(parts)

    def _emit(self) -> None:
        self._last = time.monotonic()
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._emit()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
