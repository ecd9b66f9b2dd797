"""A real S3-compatible server on loopback (moto's server mode) for the demo, tests and benchmarks.

``LocalS3Server`` serves moto's S3 app through werkzeug on ``127.0.0.1`` (a free port by default) behind a small
WSGI middleware, :class:`FaultInjector`, that can make the server misbehave on purpose: answer 503 SlowDown (or any
status) for the first N matching requests, reset the connection part-way through a response body, or stall a body
after N bytes until released. Every request is logged (method, key, Range header, status) so tests can check what
the client really asked for.

``upload_tree`` puts every file under a directory into a bucket (created public-read, like the release bucket,
so that unsigned clients can read it).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger(__name__)

#: Default bucket name of the demo and the tests.
LOCAL_BUCKET = "ava256-local"

_DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


# ---------------------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected misbehaviour. ``match`` is a substring of the request path (``/bucket/key``); ``times`` is how
    many matching requests it affects (``None`` = every one until removed).

    kinds: ``"error"`` answers ``status`` with an S3 XML error ``code`` and no body from the backend;
    ``"reset"`` sends the real headers and the first ``after_bytes`` of the body, then drops the connection;
    ``"stall"`` sends ``after_bytes`` then blocks until :meth:`FaultInjector.release` (or ``stall_timeout`` s)."""

    kind: str = "error"
    match: str = ""
    times: int | None = 1
    method: str = "GET"
    status: int = 503
    code: str = "SlowDown"
    after_bytes: int = 0
    stall_timeout: float = 60.0
    hits: int = 0


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # "/bucket/key", unquoted
    range: str | None
    status: int | None  # None when the request was cut by a fault before a status was known
    fault: str | None


class _Abort(Exception):
    """Raised inside a response body to drop the connection (a simulated reset)."""


@dataclass
class FaultInjector:
    """WSGI middleware in front of moto. Thread-safe; use :meth:`add`, :meth:`clear`, :attr:`requests`."""

    faults: list[Fault] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._release = threading.Event()

    def add(self, kind: str = "error", match: str = "", times: int | None = 1, **kw: object) -> Fault:
        """Add a fault (see :class:`Fault`) and return it; ``fault.hits`` counts the requests it affected."""
        fault = Fault(kind=kind, match=match, times=times, **kw)  # type: ignore[arg-type]
        if fault.kind not in ("error", "reset", "stall"):
            raise ValueError(f"unknown fault kind {kind!r}; expected error, reset or stall")
        with self._lock:
            self._release.clear()
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault, release stalled responses and forget the request log."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()
        self.release()

    def release(self) -> None:
        """Let stalled responses go on (they then drop their connection)."""
        self._release.set()

    def _take(self, method: str, path: str, kinds: tuple[str, ...] | None = None) -> Fault | None:
        """The first armed fault matching ``method`` and ``path`` (and one of ``kinds``, if given); counts a hit."""
        with self._lock:
            for fault in self.faults:
                if kinds is not None and fault.kind not in kinds:
                    continue
                if fault.method not in ("*", method) or fault.match not in path:
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                fault.hits += 1
                return fault
        return None

    def _record(self, *args: object) -> None:
        with self._lock:
            self.requests.append(RequestRecord(*args))  # type: ignore[arg-type]

    def wrap(self, app: Callable) -> Callable:
        def middleware(environ: dict, start_response: Callable) -> Iterable[bytes]:
            method = environ.get("REQUEST_METHOD", "GET")
            path = unquote(environ.get("PATH_INFO", ""))
            rng = environ.get("HTTP_RANGE")
            fault = self._take(method, path)
            if fault is None:
                status_box: list[int] = []

                def sr(status: str, headers: list, exc_info: object = None) -> Callable:
                    status_box.append(int(status.split()[0]))
                    return start_response(status, headers, exc_info)

                result = app(environ, sr)
                self._record(method, path, rng, status_box[0] if status_box else None, None)
                return result
            if fault.kind == "error":
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
                    f"<Message>injected fault</Message><Resource>{path}</Resource></Error>"
                ).encode()
                start_response(
                    f"{fault.status} Injected",
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                self._record(method, path, rng, fault.status, fault.kind)
                return [body]
            captured: dict = {}

            def capture(status: str, headers: list, exc_info: object = None) -> Callable:
                captured["status"], captured["headers"] = status, headers
                return lambda data: None

            inner = app(environ, capture)
            start_response(captured["status"], captured["headers"])
            self._record(method, path, rng, int(captured["status"].split()[0]), fault.kind)
            return self._cut(inner, fault)

        return middleware

    def _cut(self, inner: Iterable[bytes], fault: Fault) -> Iterator[bytes]:
        sent = 0
        for chunk in inner:
            if sent + len(chunk) >= fault.after_bytes:
                head = chunk[: max(0, fault.after_bytes - sent)]
                if head:
                    yield head
                break
            sent += len(chunk)
            yield chunk
        if fault.kind == "stall":
            self._release.wait(fault.stall_timeout)
        raise _Abort(f"injected {fault.kind} after {fault.after_bytes} bytes")


# ---------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------


class LocalS3Server:
    """moto's S3 in server mode on loopback, with a :class:`FaultInjector` in front.

    >>> with LocalS3Server() as server:
    ...     upload_tree(server.endpoint_url, LOCAL_BUCKET, root)

    moto keeps its buckets in process memory (shared by every server in the process); stop() frees none of it.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.faults = FaultInjector()
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalS3Server is not running; call start() or use it as a context manager")
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalS3Server:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class _QuietHandler(WSGIRequestHandler):
            def log(self, type: str, message: str, *args: object) -> None:  # noqa: A002
                if type == "error" and "_Abort" not in message and "injected" not in message:
                    log.debug("local S3 server: " + message, *args)

            def log_request(self, *args: object, **kwargs: object) -> None:
                pass

        # moto's S3 answers on any host when the request carries no service hint; region us-east-1.
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self.host, self.port, self.faults.wrap(app), threaded=True, request_handler=_QuietHandler
        )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-s3", daemon=True)
        self._thread.start()
        log.info("local S3 server on %s", self.endpoint_url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self.faults.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self):  # -> botocore S3 client
        """A signed boto3 S3 client (dummy credentials) for this server."""
        return s3_client(self.endpoint_url)


def s3_client(endpoint_url: str, max_pool_connections: int = 16):
    """A boto3 S3 client with dummy credentials for a local endpoint."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        config=Config(max_pool_connections=max_pool_connections, retries={"max_attempts": 3}),
        **_DUMMY_CREDENTIALS,
    )


def upload_tree(
    endpoint_url: str,
    bucket: str,
    root: Path,
    prefix: str = "",
    *,
    workers: int = 8,
    multipart_threshold: int = 8 * 1024 * 1024,
    multipart_chunksize: int = 8 * 1024 * 1024,
) -> int:
    """Upload every file under ``root`` as ``{prefix}{relative/posix/path}`` into ``bucket`` (created if absent,
    public-read so unsigned clients can read it, like the release bucket). Files above ``multipart_threshold``
    bytes go up in parts, so their ETag is a multipart ETag (``md5-of-md5s-N``) as on real S3.

    Returns the number of objects uploaded."""
    from boto3.s3.transfer import TransferConfig

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"upload_tree: {root} is not a directory")
    client = s3_client(endpoint_url, max_pool_connections=max(16, workers))
    try:
        client.create_bucket(Bucket=bucket, ACL="public-read")
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    except client.exceptions.BucketAlreadyExists:
        pass
    cfg = TransferConfig(
        multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize, use_threads=False
    )
    files = sorted(p for p in root.rglob("*") if p.is_file())

    def put(path: Path) -> None:
        key = prefix + path.relative_to(root).as_posix()
        client.upload_file(str(path), bucket, key, ExtraArgs={"ACL": "public-read"}, Config=cfg)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(put, files))
    log.info(
        "uploaded %d files from %s to s3://%s/%s in %.1fs",
        len(files),
        root,
        bucket,
        prefix,
        time.perf_counter() - t0,
    )
    return len(files)


def main(argv: list[str] | None = None) -> None:
    """``python -m ava256.synth.server [--upload DIR]``: serve a local S3 endpoint until interrupted (Ctrl-C),
    optionally loaded with a bucket-root directory first; prints the endpoint URL on its first stdout line."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ava256.synth.server", description=main.__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port")
    ap.add_argument("--upload", type=Path, default=None, help="directory to upload (its files become keys)")
    ap.add_argument("--bucket", default=LOCAL_BUCKET)
    ap.add_argument(
        "--link-mbps",
        type=float,
        default=None,
        help="cap every GET response at this many MB/s per connection (a slow link, like a remote bucket)",
    )
    args = ap.parse_args(argv)
    if args.link_mbps is not None:
        from ava256.synth.faults import ChaosS3Server

        server_cm: LocalS3Server = ChaosS3Server(args.host, args.port)
    else:
        server_cm = LocalS3Server(args.host, args.port)
    with server_cm as server:
        if args.link_mbps is not None:
            piece = 256 * 1024
            server.faults.add(
                "throttle", method="GET", times=None, after_bytes=piece, delay=piece / (args.link_mbps * 1e6)
            )
        if args.upload is not None:
            upload_tree(server.endpoint_url, args.bucket, args.upload)
        print(server.endpoint_url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
