"""More ways for the local S3 server to misbehave: the fault kinds the reliability suite needs beyond
:class:`ava256.synth.server.FaultInjector`'s ``error`` / ``reset`` / ``stall``.

:class:`ChaosInjector` is a drop-in :class:`~ava256.synth.server.FaultInjector` (same ``add`` / ``clear`` /
``requests``) that also knows

- ``"truncate"``: real status and headers (Content-Length of the whole object), then only the first
  ``after_bytes`` of the body and a clean end of the connection (the server closes after every response), as
  when a proxy or a load balancer gives up on a transfer;
- ``"length"``: a wrong ``Content-Length`` header (``delta`` bytes off, negative = the client stops early and
  believes the body complete; positive = the client waits for bytes that never come) with the real body;
- ``"corrupt"``: the real headers (Content-Length and ETag of the stored object) but ``flip`` bytes of the body
  XOR-ed from ``after_bytes`` on: an ETag that does not match the body;
- ``"etag"``: the real body with a different ``ETag`` header (``etag``, default a random-looking MD5), as when the
  object is replaced between the listing and the GET;
- ``"throttle"``: the real response, sent ``after_bytes`` at a time with ``delay`` seconds between pieces (a slow
  link: crash tests kill a fetch while objects are in flight).

:class:`ChaosS3Server` is :class:`~ava256.synth.server.LocalS3Server` with a :class:`ChaosInjector` in front.
An S3 ``503 SlowDown`` burst is the base kind ``error`` with ``times=N`` (and ``method="*"``, ``match=""`` to hit
every request of the run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote

from ava256.synth.server import Fault, FaultInjector, LocalS3Server

BASE_KINDS = ("error", "reset", "stall")
CHAOS_KINDS = ("truncate", "length", "corrupt", "etag", "throttle")
WRONG_ETAG = "0123456789abcdef0123456789abcdef"


@dataclass
class ChaosFault(Fault):
    """A :class:`~ava256.synth.server.Fault` with the extra knobs of the chaos kinds (see the module doc)."""

    delta: int = -1000  # "length": Content-Length = real length + delta
    flip: int = 1  # "corrupt": how many body bytes to XOR with 0xFF (from after_bytes on)
    etag: str = WRONG_ETAG  # "etag": the ETag header sent instead of the real one
    delay: float = 0.01  # "throttle": seconds between pieces of after_bytes bytes


class ChaosInjector(FaultInjector):
    """:class:`~ava256.synth.server.FaultInjector` plus the kinds ``truncate``, ``length``, ``corrupt``, ``etag``.
    Faults only hit successful (2xx) responses of the backend for the chaos kinds."""

    def add(self, kind: str = "error", match: str = "", times: int | None = 1, **kw: object) -> Fault:
        """Add a fault of any base or chaos kind; returns it (``fault.hits`` counts the requests it hit)."""
        if kind not in BASE_KINDS + CHAOS_KINDS:
            raise ValueError(
                f"unknown fault kind {kind!r}; expected one of {', '.join(BASE_KINDS + CHAOS_KINDS)}"
            )
        fault = ChaosFault(kind=kind, match=match, times=times, **kw)  # type: ignore[arg-type]
        with self._lock:
            self._release.clear()
            self.faults.append(fault)
        return fault

    def _take(self, method: str, path: str, kinds: tuple[str, ...] | None = BASE_KINDS) -> Fault | None:
        # the base middleware asks without kinds: it must only see the kinds it knows how to serve
        return super()._take(method, path, kinds)

    def wrap(self, app: Callable) -> Callable:
        base = super().wrap(app)

        def middleware(environ: dict, start_response: Callable) -> Iterable[bytes]:
            method = environ.get("REQUEST_METHOD", "GET")
            path = unquote(environ.get("PATH_INFO", ""))
            fault = self._take(method, path, CHAOS_KINDS)
            if fault is None:
                return base(environ, start_response)
            captured: dict = {}

            def capture(status: str, headers: list, exc_info: object = None) -> Callable:
                captured["status"], captured["headers"] = status, list(headers)
                return lambda data: None

            inner = app(environ, capture)
            status = int(captured["status"].split()[0])
            headers = captured["headers"]
            self._record(method, path, environ.get("HTTP_RANGE"), status, fault.kind)
            if not 200 <= status < 300:
                fault.hits -= 1  # an error response is passed through and does not use up the fault
                start_response(captured["status"], headers)
                return inner
            if fault.kind == "length":
                body = b"".join(inner)
                n = max(0, len(body) + fault.delta)
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(n)))
                start_response(captured["status"], headers)
                # werkzeug writes what it is given and closes the connection after every response
                return [body[:n] if fault.delta < 0 else body]
            if fault.kind == "etag":
                headers = [(k, v) for k, v in headers if k.lower() != "etag"]
                headers.append(("ETag", f'"{fault.etag}"'))
                start_response(captured["status"], headers)
                return inner
            start_response(captured["status"], headers)
            if fault.kind == "truncate":
                return self._truncate(inner, fault.after_bytes)
            if fault.kind == "throttle":
                return self._throttle(inner, max(1, fault.after_bytes), fault.delay)
            return self._corrupt(inner, fault.after_bytes, fault.flip)

        return middleware

    @staticmethod
    def _truncate(inner: Iterable[bytes], n: int) -> Iterator[bytes]:
        sent = 0
        for chunk in inner:
            if sent + len(chunk) >= n:
                if n > sent:
                    yield chunk[: n - sent]
                return  # a clean end: the server closes the connection short of Content-Length
            sent += len(chunk)
            yield chunk

    @staticmethod
    def _throttle(inner: Iterable[bytes], piece: int, delay: float) -> Iterator[bytes]:
        for chunk in inner:
            for i in range(0, len(chunk), piece):
                yield chunk[i : i + piece]
                time.sleep(delay)

    @staticmethod
    def _corrupt(inner: Iterable[bytes], start: int, flip: int) -> Iterator[bytes]:
        pos = 0
        for chunk in inner:
            lo, hi = max(start, pos), min(start + flip, pos + len(chunk))
            if lo < hi:
                buf = bytearray(chunk)
                for i in range(lo - pos, hi - pos):
                    buf[i] ^= 0xFF
                chunk = bytes(buf)
            pos += len(chunk)
            yield chunk


class ChaosS3Server(LocalS3Server):
    """:class:`~ava256.synth.server.LocalS3Server` whose ``faults`` is a :class:`ChaosInjector`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.faults = ChaosInjector()


__all__ = ["CHAOS_KINDS", "ChaosFault", "ChaosInjector", "ChaosS3Server"]
