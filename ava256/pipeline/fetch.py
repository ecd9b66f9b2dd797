"""``ava256 fetch``: download AVA-256 captures from the release bucket (or any copy) into a verified raw tree.

Output: ``OUT/{capture.folder}/{key}`` exactly as in the bucket (canonical ``mcd--mct--sid`` folder whatever the
bucket's spelling) and ``OUT/_manifests/fetch.parquet`` (schema in :mod:`ava256.manifests.fetch`). The run holds
``OUT/_manifests/fetch.lock`` (:func:`raw_tree_lock`, shared with ``ava256 verify``): a second one is refused.

How (one Dask task per object):

1. Plan (one task per capture, writing nothing): list the capture folder (both spellings, the listing wins;
   HEAD requests where listing is denied), read ``decoder/camera_calibration.json`` into memory, take its camera
   ids, build the catalog keys (``ava256.capture.capture_keys``) for the chosen assets/cameras, each key checked
   by ``safe_relpath``. A capture whose calibration is unusable (unsafe camera ids, not JSON, source errors)
   fails alone, recorded on its calibration row. A capture whose files are all present and match their manifest
   rows (size + mtime) is skipped without a single request to the bucket.
2. Check free space against the bytes still to download (plus room kept for the manifest) before writing.
3. Download: stream to ``{file}.part`` (1 MiB chunks), sha256 (+ MD5 when the ETag is single-part) while
   streaming, fsync, check size + ETag, ``os.replace``. A ``.part`` left by a killed run continues with a Range
   request (``If-Match`` the ETag recorded beside it in ``{file}.part.etag``). :class:`RetryPolicy` retries every
   request (exponential backoff, full jitter) on 5xx / SlowDown / throttling / connection resets / short bodies; a
   content mismatch is re-downloaded once, then recorded as failed. One object failing never stops the others;
   a full disk (ENOSPC, EDQUOT, EFBIG) stops the run, and the space kept for the manifest is freed so that it
   still records what finished. A local ``--source`` never follows a symlink out of the source directory.

The manifest is written under the lock, merged over the one on disk (rows this run did not touch stay). If it
is torn, :func:`rebuild_manifest` (``ava256 fetch OUT --rebuild-manifest``) rebuilds it from the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from ava256.atomic import atomic_write_text
from ava256.capture import (
    ASSETS,
    CALIBRATION_KEY,
    PUBLIC_BUCKET,
    PUBLIC_PREFIX,
    CaptureId,
    UnsafePathError,
    asset_keys,
    parse_assets,
    parse_size,
    release_capture_ids,
    safe_relpath,
)
from ava256.captures_arg import CapturesArg, parse_captures
from ava256.manifests.fetch import (
    STATUS_FAILED,
    STATUS_OK,
    FetchRow,
    manifest_path,
    read_fetch_manifest,
    update_fetch_manifest,
    write_fetch_manifest,
)
from ava256.store.lock import StoreLock

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # bytes per read/write/hash step
PART_SUFFIX = ".part"
ETAG_SUFFIX = ".part.etag"
MANIFEST_FLUSH_SECONDS = 5.0
_CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
T = TypeVar("T")


class CaptureNotFoundError(LookupError):
    """A requested capture has no folder (in either spelling) in the source."""


class DiskFullError(OSError):
    """Not enough free space for the objects still to download, or ENOSPC while writing."""


# ---------------------------------------------------------------------------------------------------------
# Sources: the public bucket, any S3 endpoint, or a local directory
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where capture folders live. ``kind`` "s3": ``location`` is the bucket and ``prefix`` the key prefix of the
    size folder (``ava-256/4TB/``); "local": ``location`` is the directory holding the capture folders."""

    kind: str
    location: str
    prefix: str = ""
    endpoint_url: str | None = None
    unsigned: bool = True

    def url(self, key: str) -> str:
        """Human-readable address of ``key`` (a key relative to the size folder)."""
        if self.kind == "s3":
            return f"s3://{self.location}/{self.prefix}{key}"
        return str(Path(self.location) / key)

    def describe(self) -> str:
        where = self.url("")
        return f"{where} (endpoint {self.endpoint_url})" if self.endpoint_url else where


def resolve_source(
    size: str,
    source: str | os.PathLike | None = None,
    endpoint_url: str | None = None,
    unsigned: bool | None = None,
) -> Source:
    """Turn the CLI's ``--source``/``--endpoint-url`` into a :class:`Source` for release ``size``.

    - ``None``: the public release ``s3://fb-baas-…/ava-256/{size}/``, unsigned.
    - ``s3://bucket[/prefix]``: ``{prefix}/{size}/`` in that bucket (prefix defaults to ``ava-256``; a prefix
      that already ends in the size folder is used as is).
    - a local directory: ``DIR/{size}``, ``DIR/ava-256/{size}`` (a bucket root, as ``ava256 synth`` writes it) or
      ``DIR`` itself if it holds capture folders.

    ``unsigned=None``: unsigned for the public bucket, or where no AWS credentials are configured.
    """
    size = parse_size(size).name
    if source is None or str(source) == "":
        return Source(
            "s3",
            PUBLIC_BUCKET,
            f"{PUBLIC_PREFIX}/{size}/",
            endpoint_url,
            True if unsigned is None else unsigned,
        )
    text = str(source)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise ValueError(f"--source {text!r}: no bucket name")
        prefix = prefix.strip("/") or PUBLIC_PREFIX
        if prefix.rsplit("/", 1)[-1].upper() != size:
            prefix = f"{prefix}/{size}"
        if unsigned is None:
            unsigned = bucket == PUBLIC_BUCKET or not _have_credentials()
        return Source("s3", bucket, prefix + "/", endpoint_url, unsigned)
    if "://" in text:
        raise ValueError(f"--source {text!r}: expected s3://bucket/prefix or a local directory")
    if endpoint_url:
        raise ValueError("--endpoint-url applies to an S3 source, not to a local --source directory")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--source {text}: no such directory")
    for cand in (root / size, root / PUBLIC_PREFIX / size):
        if cand.is_dir():
            return Source("local", str(cand.resolve()))
    if any(_is_capture_folder(p.name) for p in root.iterdir() if p.is_dir()):
        return Source("local", str(root.resolve()))
    raise FileNotFoundError(
        f"--source {text}: found neither {root / size}, {root / PUBLIC_PREFIX / size} nor capture folders in it"
    )


def _is_capture_folder(name: str) -> bool:
    try:
        CaptureId.parse(name)
        return True
    except ValueError:
        return False


def _have_credentials() -> bool:
    import boto3

    try:
        return boto3.session.Session().get_credentials() is not None
    except Exception:  # broken config files: fall back to anonymous reads
        return False


_CLIENTS: dict[tuple, object] = {}
_CLIENTS_LOCK = threading.Lock()


def _s3(src: Source, pool: int = 64):
    """One boto3 client per (process, endpoint, signing): clients are thread-safe and keep a connection pool."""
    key = (src.endpoint_url, src.unsigned, pool)
    client = _CLIENTS.get(key)
    if client is not None:
        return client
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config

            cfg = Config(
                signature_version=UNSIGNED if src.unsigned else None,
                max_pool_connections=pool,
                retries={"total_max_attempts": 1},  # retries are ours (they also cover broken bodies)
                connect_timeout=20,
                read_timeout=60,
            )
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=src.endpoint_url, region_name="us-east-1", config=cfg)
            _CLIENTS[key] = client
    return client


def _list_folder(src: Source, folder: str) -> dict[str, tuple[int, str]] | None:
    """``{key relative to the folder: (bytes, etag)}``; ``{}`` if the folder is absent; None if listing is denied."""
    if src.kind == "local":
        return _list_local_folder(Path(src.location) / folder)
    from botocore.exceptions import ClientError

    client = _s3(src)
    prefix = f"{src.prefix}{folder}/"
    out = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=src.location, Prefix=prefix):
            for obj in page.get("Contents", ()):
                rel = obj["Key"][len(prefix) :]
                if rel and not rel.endswith("/"):
                    out[rel] = (int(obj["Size"]), obj.get("ETag", "").strip('"'))
    except ClientError as exc:
        if _error_code(exc) in ("AccessDenied", "403"):
            return None
        raise
    return out


def _list_local_folder(base: Path) -> dict[str, tuple[int, str]]:
    """Listing of a local capture folder. Symlinks are followed (each real folder once, so a link loop ends) and
    listed; :func:`_open` refuses those that resolve outside the source."""
    if not base.is_dir():
        return {}
    out: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    for dirpath, dirs, files in os.walk(base, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            p = Path(dirpath) / name
            try:
                out[p.relative_to(base).as_posix()] = (p.stat().st_size, "")
            except FileNotFoundError:  # a dangling link: absent
                continue
    return out


def _inside_source(src: Source, key: str) -> str:
    """The real path of ``key`` in a local source; UnsafePathError if a symlink takes it outside the source."""
    root = os.path.realpath(src.location)
    p = os.path.join(src.location, key)
    real = os.path.realpath(p)
    if os.path.commonpath([root, real]) != root:
        raise UnsafePathError(f"{p} resolves to {real}, outside the source {root} (a symlink); not copied")
    return real


def _head(src: Source, key: str) -> tuple[int, str] | None:
    """(bytes, etag) of one object (key relative to the size folder), None if absent."""
    if src.kind == "local":
        p = Path(src.location) / key
        return (p.stat().st_size, "") if p.is_file() else None  # _open refuses a link that leaves the source
    from botocore.exceptions import ClientError

    try:
        r = _s3(src).head_object(Bucket=src.location, Key=src.prefix + key)
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return int(r["ContentLength"]), r.get("ETag", "").strip('"')


def _open(src: Source, key: str, offset: int, if_match: str) -> tuple[Iterator[bytes], int, str, int]:
    """Open ``key`` at byte ``offset``: (chunks, total object bytes, etag, start offset actually served)."""
    if src.kind == "local":
        f = open(_inside_source(src, key), "rb")  # noqa: SIM115 - closed by the generator
        total = os.fstat(f.fileno()).st_size
        f.seek(offset)

        def chunks() -> Iterator[bytes]:
            with f:
                while data := f.read(CHUNK_SIZE):
                    yield data

        return chunks(), total, "", offset
    kw: dict = {"Bucket": src.location, "Key": src.prefix + key}
    if offset:
        kw["Range"] = f"bytes={offset}-"
        if if_match:
            kw["IfMatch"] = f'"{if_match}"'
    r = _s3(src).get_object(**kw)
    etag = r.get("ETag", "").strip('"')
    start, total = 0, int(r["ContentLength"])
    crange = r.get("ContentRange")
    if offset and crange:  # "bytes 100-199/200"
        m = re.match(r"bytes (\d+)-(\d+)/(\d+)", crange)
        if m:
            start, total = int(m[1]), int(m[3])
    elif offset:
        start = 0  # the server ignored the Range header and sends the whole object
    return r["Body"].iter_chunks(CHUNK_SIZE), total, etag, start


def _error_code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    return code or str(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


# ---------------------------------------------------------------------------------------------------------
# Retries: one policy for listings, HEADs, GETs and resumed bodies
# ---------------------------------------------------------------------------------------------------------

_RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "TooManyRequests",
    "RequestLimitExceeded",
}


class RetryableError(Exception):
    """A transfer problem a later attempt may not see (a short body, a .part that cannot be resumed)."""


def is_retryable(exc: BaseException) -> bool:
    """True for errors a later attempt may not see: 5xx, 429, SlowDown/throttling, connection resets and timeouts,
    bodies shorter than announced. False for 4xx, local OS errors (ENOSPC, permissions), bad data."""
    import http.client

    from botocore.exceptions import ClientError, FlexibleChecksumError, HTTPClientError, IncompleteReadError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return status >= 500 or status == 429 or _error_code(exc) in _RETRY_CODES
    return isinstance(
        exc,
        (
            RetryableError,
            HTTPClientError,
            IncompleteReadError,
            FlexibleChecksumError,  # a body damaged in transit (botocore's CRC check of the response)
            Urllib3Error,
            http.client.IncompleteRead,
            http.client.RemoteDisconnected,
            ConnectionError,
            TimeoutError,
        ),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries per request; sleep ``uniform(0, min(max_delay, base_delay * 2**i))`` s between them
    (exponential backoff, full jitter). :meth:`call` is the one retry loop of the fetch."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1)))

    def call(self, what: str, fn: Callable[..., T], /, *args: object, **kw: object) -> T:
        """``fn(*args, **kw)``, again after a delay while it raises an :func:`is_retryable` error; the last
        error (or any other) is raised. ``what`` names the object in the log."""
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kw)
            except Exception as exc:
                if not is_retryable(exc) or attempt >= self.attempts:
                    raise
                log.info("%s: attempt %d failed (%s: %s); retrying", what, attempt, type(exc).__name__, exc)
                time.sleep(self.delay(attempt))
        raise AssertionError("unreachable")  # attempts >= 1


def gave_up(policy: RetryPolicy, exc: BaseException) -> str:
    """The manifest's reason for an error: "gave up after N attempts: …" for a transient one."""
    what = f"{_error_code(exc) or type(exc).__name__}: {exc}"
    return f"gave up after {policy.attempts} attempts: {what}" if is_retryable(exc) else what


# ---------------------------------------------------------------------------------------------------------
# Disk full
# ---------------------------------------------------------------------------------------------------------

#: errnos that mean "no more bytes fit": disk full, quota, the process's file size limit (RLIMIT_FSIZE)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def _disk_full(exc: OSError, path: str | os.PathLike) -> DiskFullError:
    return DiskFullError(
        exc.errno, f"{os.strerror(exc.errno or errno.ENOSPC)} while writing {path}", str(path)
    )


class _ManifestReserve:
    """Space kept for the manifest: a file of zeros in ``_manifests`` that is deleted to make room when the disk
    fills, so the run still leaves a whole ``fetch.parquet`` of what it finished."""

    def __init__(self, out: Path, nbytes: int) -> None:
        self.path = out / "_manifests" / ".fetch-space-reserve"
        self.nbytes = nbytes
        self.held = False

    def take(self) -> None:
        block = bytes(min(self.nbytes, CHUNK_SIZE))
        try:
            with open(self.path, "wb") as f:
                left = self.nbytes
                while left > 0:
                    left -= f.write(block[: min(left, len(block))])
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            _unlink(self.path)
            if _no_space(exc):
                raise _disk_full(exc, self.path) from exc
            raise
        self.held = True

    def release(self) -> bool:
        """Free the space; True if there was a reserve to free."""
        had, self.held = self.held, False
        _unlink(self.path)
        return had


def manifest_reserve_bytes(n_rows: int) -> int:
    """Room for a manifest of ``n_rows`` (measured: about 150 bytes a row; twice that, plus 256 KiB)."""
    return (1 << 18) + 300 * n_rows


def _bytes_text(n: int) -> str:
    return f"{n:,} bytes ({n / 1e9:.2f} GB)" if n >= 10**8 else f"{n:,} bytes ({n / 1e6:.2f} MB)"


# ---------------------------------------------------------------------------------------------------------
# One object
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectSpec:
    """One object to fetch. ``key`` is relative to the capture folder; ``folder`` is the bucket's spelling."""

    capture: str  # canonical folder (local layout)
    folder: str  # folder as found in the source
    asset: str
    key: str
    size: int
    etag: str
    prior_sha256: str = ""  # from an ok manifest row: lets an intact local file be kept without a GET
    prior_etag: str = ""

    @property
    def path(self) -> str:
        return safe_relpath(f"{self.capture}/{self.key}")

    @property
    def source_key(self) -> str:
        return safe_relpath(f"{self.folder}/{self.key}")


def single_part_md5(etag: str) -> str:
    """The MD5 an ETag stands for, or "" (multipart ETags ``…-N`` and SSE-KMS ones are not content MD5s)."""
    return etag.lower() if re.fullmatch(r"[0-9a-fA-F]{32}", etag or "") else ""


def hash_file(path: str | os.PathLike, md5: bool = False, limit: int | None = None) -> tuple[int, str, str]:
    """(bytes, sha256 hex, md5 hex or "") of a file, streaming ``CHUNK_SIZE`` at a time; ``limit`` bytes at most."""
    h, m, n = hashlib.sha256(), hashlib.md5() if md5 else None, 0
    with open(path, "rb") as f:
        while data := f.read(CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit - n)):
            h.update(data)
            if m is not None:
                m.update(data)
            n += len(data)
    return n, h.hexdigest(), m.hexdigest() if m is not None else ""


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_object` returns: the object's manifest row, plus what the run needs that the
    manifest does not keep."""

    row: FetchRow
    transferred: int = 0  # bytes moved over the network by this call
    fatal: str = ""  # set (e.g. "out of space") when the whole run should stop


def _row(spec: ObjectSpec, src: Source, status: str, error: str = "", **kw: object) -> FetchRow:
    """The manifest row of ``spec``; ``kw`` sets other columns."""
    row = FetchRow(
        capture=spec.capture, asset=spec.asset, key=spec.key, path=f"{spec.capture}/{spec.key}",
        source=src.url(f"{spec.folder}/{spec.key}"), bytes=spec.size, etag=spec.etag, md5="", sha256="",
        status=status, error=error, attempts=0, resumed_from=0, seconds=0.0, mtime_ns=None,
        time=datetime.now(UTC),
    )  # fmt: skip
    return dataclasses.replace(row, **kw) if kw else row


def _read_tag(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _write_tag(path: Path, etag: str) -> None:
    atomic_write_text(path, etag, fsync=False)


def _unlink(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


@dataclass
class _Download:
    bytes: int = 0
    etag: str = ""
    sha256: str = ""
    md5: str = ""
    attempts: int = 0
    resumed_from: int = 0
    transferred: int = 0
    multipart_etag: str = ""


_MULTIPART_ETAG = re.compile(r"[0-9a-fA-F]{32}-\d+")


class _Hasher:
    """One pass over the bytes: sha256, plus what the S3 ETag stands for: the object's MD5 (single-part ETag)
    or, with the part size known, each part's MD5 (multipart ETag = md5 of the parts' md5s + "-N")."""

    def __init__(self, etag: str, part_size: int | None = None) -> None:
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5() if single_part_md5(etag) else None
        self.part_size = part_size if part_size and _MULTIPART_ETAG.fullmatch(etag or "") else None
        self.digests: list[bytes] = []
        self.cur, self.cur_len = hashlib.md5(), 0

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        if self.part_size:
            view = memoryview(data)
            while len(view):
                take = min(len(view), self.part_size - self.cur_len)
                self.cur.update(view[:take])
                self.cur_len += take
                view = view[take:]
                if self.cur_len == self.part_size:
                    self.digests.append(self.cur.digest())
                    self.cur, self.cur_len = hashlib.md5(), 0

    def multipart_etag(self) -> str:
        if not self.part_size:
            return ""
        digests = self.digests + ([self.cur.digest()] if self.cur_len else [])
        return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


class _Transfer:
    """Brings ``{file}.part`` to the whole object: resumes a ``.part`` with the same ETag, and streams the rest
    with one :meth:`attempt` per HTTP request (retried by the policy)."""

    def __init__(
        self, spec: ObjectSpec, src: Source, part: Path, tag: Path, fsync: bool, part_size: int | None
    ):
        self.spec, self.src, self.part, self.tag = spec, src, part, tag
        self.fsync, self.part_size = fsync, part_size
        self.result = _Download(etag=spec.etag)
        self.offset = 0
        self.hasher = _Hasher(spec.etag, part_size)
        if part.exists() and _read_tag(tag) == spec.etag and part.stat().st_size <= spec.size:
            # Resume: hash what is already on disk, then ask for the rest.
            with open(part, "rb") as f:
                while data := f.read(CHUNK_SIZE):
                    self.hasher.update(data)
            self.offset = self.result.resumed_from = part.stat().st_size
            log.info("%s: resuming at byte %d of %d", spec.path, self.offset, spec.size)
        else:
            _unlink(part)
            try:
                _write_tag(tag, spec.etag)
            except OSError as exc:
                if _no_space(exc):
                    raise _disk_full(exc, tag) from exc
                raise

    def _restart(self) -> None:
        self.offset, self.hasher = 0, _Hasher(self.spec.etag, self.part_size)
        self.result.resumed_from = 0
        _unlink(self.part)

    def attempt(self) -> None:
        spec = self.spec
        self.result.attempts += 1
        if self.offset >= spec.size and spec.size > 0:
            return  # a complete .part from an earlier run: nothing left to ask for
        try:
            chunks, total, etag, start = _open(self.src, spec.source_key, self.offset, spec.etag)
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "InvalidRange", "416") and self.offset:
                # The object changed since the .part was written, or the .part is longer than it: restart.
                log.warning("%s: cannot resume (%s); downloading from the start", spec.path, _error_code(exc))
                self._restart()
                raise RetryableError(f"cannot resume ({_error_code(exc)})") from exc
            raise
        if start != self.offset:  # the server sent the object from byte 0: start over
            self.offset, self.hasher = 0, _Hasher(spec.etag, self.part_size)
        self._write(chunks)
        self.result.etag = etag or spec.etag
        if self.offset != total:
            raise RetryableError(f"body ended at byte {self.offset} of {total}")

    def _write(self, chunks: Iterator[bytes]) -> None:
        try:
            with open(self.part, "r+b" if self.offset else "wb") as f:
                f.seek(self.offset)
                f.truncate()
                for data in chunks:
                    f.write(data)
                    self.hasher.update(data)
                    self.offset += len(data)
                    self.result.transferred += len(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
        except OSError as exc:
            if _no_space(exc):
                raise _disk_full(exc, self.part) from exc
            raise

    def run(self, policy: RetryPolicy) -> _Download:
        policy.call(self.spec.path, self.attempt)
        r = self.result
        r.bytes = self.offset
        r.sha256 = self.hasher.sha.hexdigest()
        r.md5 = self.hasher.md5.hexdigest() if self.hasher.md5 is not None else ""
        r.multipart_etag = self.hasher.multipart_etag()
        return r


def _mismatch(spec: ObjectSpec, d: _Download) -> str:
    if d.bytes != spec.size:
        return f"size mismatch: got {d.bytes} bytes, listing says {spec.size}"
    if d.etag and spec.etag and d.etag != spec.etag:
        return f"ETag changed during download: {spec.etag} -> {d.etag}"
    want = single_part_md5(spec.etag)
    if want and d.md5 != want:
        return f"MD5 mismatch: content {d.md5}, ETag {want}"
    if d.multipart_etag and d.multipart_etag != spec.etag.lower():
        return f"multipart ETag mismatch: content {d.multipart_etag}, ETag {spec.etag}"
    return ""


def multipart_etag(path: str | os.PathLike, part_size: int) -> str:
    """S3's ETag of the file at ``path`` uploaded in ``part_size``-byte parts: md5 of the parts' md5s + "-N"."""
    digests = []
    with open(path, "rb") as f:
        while True:
            m, left = hashlib.md5(), part_size
            while left and (data := f.read(min(CHUNK_SIZE, left))):
                m.update(data)
                left -= len(data)
            if left == part_size:
                break
            digests.append(m.digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def _multipart_part_size(spec: ObjectSpec, src: Source, policy: RetryPolicy) -> int | None:
    """Part size of a multipart upload (``…-N`` ETag) from a HEAD of part 1 (parts are uniform but for the
    last, as every S3 uploader makes them); None for single-part objects and local sources."""
    if src.kind != "s3" or not _MULTIPART_ETAG.fullmatch(spec.etag or ""):
        return None
    kw = {"Bucket": src.location, "Key": src.prefix + spec.source_key, "PartNumber": 1}
    return int(policy.call(spec.path, _s3(src).head_object, **kw)["ContentLength"])


def _vouch(spec: ObjectSpec, src: Source, dest: Path, policy: RetryPolicy) -> tuple[str, str] | None:
    """(md5, sha256) of an existing ``dest`` that needs no download: its size is the listing's and its content
    matches its ok manifest row (same ETag) or the ETag itself (single-part MD5, or multipart ETag recomputed
    with the part size from one HEAD). None if it must be fetched."""
    if not dest.is_file() or dest.is_symlink() or dest.stat().st_size != spec.size:
        return None
    md5_known = single_part_md5(spec.etag)
    if spec.prior_sha256 and spec.prior_etag == spec.etag:
        _, sha, md5 = hash_file(dest, md5=bool(md5_known))
        return (md5, sha) if sha == spec.prior_sha256 else None
    if md5_known:
        _, sha, md5 = hash_file(dest, md5=True)
        return (md5, sha) if md5 == md5_known else None
    part_size = _multipart_part_size(spec, src, policy) if spec.prior_sha256 else None
    if part_size and multipart_etag(dest, part_size) == spec.etag.lower():
        return "", hash_file(dest)[1]
    return None


def fetch_object(
    spec: ObjectSpec, out: str, src: Source, policy: RetryPolicy = RetryPolicy(), fsync: bool = True
) -> FetchResult:
    """Fetch one object into ``OUT/{capture}/{key}``; returns its manifest row in a :class:`FetchResult`
    (never raises for a per-object problem: the row says ``failed`` with the reason). A result with ``fatal``
    set (disk full) should stop the run."""
    t0 = time.perf_counter()
    try:
        dest = Path(out) / spec.path
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if _no_space(exc):
                raise _disk_full(exc, dest.parent) from exc
            raise
        kept = _vouch(spec, src, dest, policy)
        if kept is not None:
            mtime_ns, seconds = dest.stat().st_mtime_ns, time.perf_counter() - t0
            row = _row(spec, src, STATUS_OK, md5=kept[0], sha256=kept[1], mtime_ns=mtime_ns, seconds=seconds)
            return FetchResult(row)
        return _download_verified(spec, src, dest, policy, fsync, t0)
    except DiskFullError as exc:
        row = _row(spec, src, STATUS_FAILED, error=f"out of space: {exc.strerror}")
        return FetchResult(row, fatal="out of space")
    except Exception as exc:
        return FetchResult(
            _row(spec, src, STATUS_FAILED, error=gave_up(policy, exc), seconds=time.perf_counter() - t0)
        )


def _download_verified(spec: ObjectSpec, src: Source, dest: Path, policy: RetryPolicy, fsync: bool,
                       t0: float) -> FetchResult:  # fmt: skip
    """Download into ``.part``, check size and ETag, rename; a mismatch is downloaded once more from scratch."""
    part = dest.with_name(dest.name + PART_SUFFIX)
    tag = dest.with_name(dest.name + ETAG_SUFFIX)
    problems = []
    part_size = _multipart_part_size(spec, src, policy)
    for _pass in range(2):
        d = _Transfer(spec, src, part, tag, fsync, part_size).run(policy)
        problem = _mismatch(spec, d)
        if not problem:
            os.replace(part, dest)
            _unlink(tag)
            row = _row(
                spec, src, STATUS_OK, bytes=d.bytes, etag=d.etag, md5=d.md5, sha256=d.sha256,
                attempts=d.attempts, resumed_from=d.resumed_from,
                mtime_ns=dest.stat().st_mtime_ns, seconds=time.perf_counter() - t0,
                error="; ".join(f"healed: {p}" for p in problems),
            )  # fmt: skip
            return FetchResult(row, transferred=d.transferred)
        problems.append(problem)
        log.warning("%s: %s; downloading again from scratch", spec.path, problem)
        _unlink(part, tag)
    row = _row(
        spec, src, STATUS_FAILED, error=f"{problems[-1]} (after one re-download)",
        attempts=d.attempts, sha256=d.sha256, seconds=time.perf_counter() - t0,
    )  # fmt: skip
    return FetchResult(row, transferred=d.transferred)


# ---------------------------------------------------------------------------------------------------------
# One capture: list, calibration, keys
# ---------------------------------------------------------------------------------------------------------

MAX_CALIBRATION_BYTES = 64 << 20  # a calibration JSON is ~100 KB; anything far larger is not one


def camera_ids_from_calibration(data: bytes, where: str = "camera_calibration.json") -> list[str]:
    """Sorted ``cameraId`` strings of a calibration JSON; ValueError naming ``where`` if it is not one.

    Only the ids are read here (the full parse is ``ava256.formats.calibration``): fetch must not depend on
    the numeric content."""
    try:
        doc = json.loads(data)
        ids = sorted(str(cam["cameraId"]) for cam in doc["KRT"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{where}: not a camera calibration ({type(exc).__name__}: {exc})") from exc
    if not ids:
        raise ValueError(f"{where}: lists no cameras")
    bad = [c for c in ids if not _CAMERA_ID_RE.match(c)]
    if bad:
        raise UnsafePathError(
            f"{where}: camera id(s) {bad!r} are not plain names; refusing to build keys from them"
        )
    return ids


@dataclass
class CapturePlan:
    capture: str
    folder: str = ""
    camera_ids: list[str] = field(default_factory=list)
    specs: list[ObjectSpec] = field(default_factory=list)
    #: rows settled while planning (objects absent in the source)
    rows: list[FetchRow] = field(default_factory=list)
    error: str = ""
    error_type: str = ""


def _wanted_keys(assets: Sequence[str], camera_ids: Sequence[str]) -> list[tuple[str, str]]:
    """[(asset, key)] of the catalog, each key checked by ``safe_relpath``."""
    out: dict[str, str] = {}
    for asset in assets:
        for key in asset_keys(asset, camera_ids):
            out.setdefault(safe_relpath(key), asset)
    return [(a, k) for k, a in out.items()]


def _find_folder(capture: CaptureId, src: Source, policy: RetryPolicy) -> tuple[str, dict | None]:
    """(folder spelling in the source, its listing or None where listing is denied)."""
    for name in capture.folder_names:
        objs = policy.call(f"list {name}", _list_folder, src, name)
        if objs is None:
            if policy.call(name, _head, src, f"{name}/{CALIBRATION_KEY}") is not None:
                return name, None
        elif objs:
            return name, objs
    tried = " and ".join(src.url(f"{n}/") for n in capture.folder_names)
    raise CaptureNotFoundError(f"capture {capture.folder} not found: nothing under {tried}")


def _read_source(src: Source, spec: ObjectSpec) -> bytes:
    """The whole object (a small one), size and single-part MD5 checked."""
    chunks, _total, _etag, _start = _open(src, spec.source_key, 0, "")
    data = b"".join(chunks)
    if len(data) != spec.size:
        raise RetryableError(f"body of {len(data)} bytes, listing says {spec.size}")
    want = single_part_md5(spec.etag)
    if want and hashlib.md5(data).hexdigest() != want:
        raise RetryableError(f"MD5 mismatch: content {hashlib.md5(data).hexdigest()}, ETag {want}")
    return data


def _calibration(spec: ObjectSpec, out: str, src: Source, policy: RetryPolicy) -> bytes:
    """The calibration's bytes: the local file if it can be vouched for, else read from the source into
    memory (nothing is written before the free-space check; the file is fetched with the others)."""
    if spec.size > MAX_CALIBRATION_BYTES:
        raise ValueError(f"{spec.path}: {spec.size:,} bytes is no camera calibration")
    dest = Path(out) / spec.path
    if _vouch(spec, src, dest, policy) is not None:
        return dest.read_bytes()
    return policy.call(spec.path, _read_source, src, spec)


def plan_capture(
    capture: CaptureId,
    out: str,
    src: Source,
    assets: Sequence[str],
    cameras: Sequence[str] | None,
    prior: dict[str, FetchRow],
    policy: RetryPolicy = RetryPolicy(),
) -> CapturePlan:
    """Resolve one capture into object specs (a Dask task); writes nothing. ``prior``: its manifest rows by
    key. Never raises; problems are in ``plan.error`` (+ ``error_type``)."""
    plan = CapturePlan(capture.folder)
    try:
        folder, listing = _find_folder(capture, src, policy)
        plan.folder = folder

        def spec(asset: str, key: str) -> ObjectSpec | None:
            found = (
                listing.get(key) if listing is not None else policy.call(key, _head, src, f"{folder}/{key}")
            )
            if found is None:
                return None
            p = prior.get(key)
            ok = p is not None and p.status == STATUS_OK
            return ObjectSpec(
                capture.folder, folder, asset, key, found[0], found[1],
                prior_sha256=(p.sha256 or "") if ok else "", prior_etag=(p.etag or "") if ok else "",
            )  # fmt: skip

        cal = spec("meta", CALIBRATION_KEY)
        if cal is None:
            raise CaptureNotFoundError(
                f"capture {capture.folder}: {src.url(f'{folder}/{CALIBRATION_KEY}')} is absent"
            )
        data = _calibration(cal, out, src, policy)
        ids = camera_ids_from_calibration(data, where=f"{capture.folder}/{CALIBRATION_KEY}")
        plan.camera_ids = ids
        if cameras:
            ids = [c for c in ids if c in set(cameras)]
        for asset, key in _wanted_keys(assets, ids):
            s = spec(asset, key)
            if s is not None:
                plan.specs.append(s)
                continue
            absent = ObjectSpec(capture.folder, folder, asset, key, 0, "")
            plan.rows.append(
                _row(absent, src, STATUS_FAILED, error=f"absent in the source: {src.url(f'{folder}/{key}')}")
            )
    except Exception as exc:
        plan.error, plan.error_type = gave_up(policy, exc), type(exc).__name__
    return plan


def _local_capture_done(
    out: Path, capture: CaptureId, assets, cameras, rows: dict[tuple[str, str], FetchRow]
) -> list[FetchRow] | None:
    """The capture's manifest rows if every wanted file is present and unchanged (size + mtime) since it was
    recorded ok from the source; None if anything needs the source (rows rebuilt from disk have no source)."""

    def intact(key: str) -> FetchRow | None:
        row = rows.get((capture.folder, key))
        if row is None or row.status != STATUS_OK or not row.source:
            return None
        try:
            st = (out / safe_relpath(row.path)).stat()
        except (FileNotFoundError, NotADirectoryError, UnsafePathError):
            return None
        return row if st.st_size == row.bytes and st.st_mtime_ns == row.mtime_ns else None

    cal = intact(CALIBRATION_KEY)
    if cal is None:
        return None
    try:
        ids = camera_ids_from_calibration((out / cal.path).read_bytes())
    except ValueError:
        return None
    if cameras:
        ids = [c for c in ids if c in set(cameras)]
    done = []
    for _asset, key in _wanted_keys(assets, ids):
        row = intact(key)
        if row is None:
            return None
        done.append(row)
    return done


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def parse_cameras(value: str | Sequence[str] | None) -> list[str] | None:
    """``--cameras``: comma list (or sequence) of dome camera ids like ``400940``; None = all."""
    if value is None or value == "":
        return None
    items = [c.strip() for c in (value.split(",") if isinstance(value, str) else value) if str(c).strip()]
    items = [c[3:] if c.startswith("cam") else c for c in map(str, items)]
    bad = [c for c in items if not _CAMERA_ID_RE.match(c)]
    if bad:
        raise ValueError(f"--cameras: not camera ids: {bad} (expected ids like 400940)")
    return list(dict.fromkeys(items)) or None


def _prepare_out(out: Path) -> None:
    try:
        (out / "_manifests").mkdir(parents=True, exist_ok=True)
        probe = out / "_manifests" / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"output directory {out} is not writable: {exc.strerror or exc}") from exc


RAW_LOCK_NAME = "fetch.lock"


def raw_tree_lock(out: str | os.PathLike) -> StoreLock:
    """The exclusive lock ``OUT/_manifests/fetch.lock`` that ``fetch`` and ``verify`` hold on a raw tree (the
    repack lock's mechanism): a second one is refused with :class:`StoreLockedError` naming pid and host."""
    return StoreLock(out, name=RAW_LOCK_NAME, subject=f"raw tree {out}", job="fetch or verify")


@dataclass(frozen=True)
class FetchOptions:
    """What to fetch and how (the options of ``ava256 fetch``).

    size: release size; n: the first ``n`` captures (of ``captures`` or of the release list); captures: see
    :func:`ava256.captures_arg.parse_captures`; assets: comma list of ``ava256.capture.ASSETS`` (meta is always
    included); cameras: dome camera ids (default all in each capture's calibration); source, endpoint_url,
    unsigned: see :func:`resolve_source`; workers: concurrent downloads (Dask threads, or processes with
    ``processes``); scheduler: address of a running Dask scheduler; retries: attempts per request;
    reserve_bytes: free space to leave on OUT's disk; fsync: flush each file to disk before its rename (durable
    ``ok`` rows after a power loss)."""

    size: str = "4TB"
    n: int | None = None
    captures: CapturesArg = None
    assets: str | Sequence[str] | None = None
    cameras: str | Sequence[str] | None = None
    source: str | os.PathLike | None = None
    endpoint_url: str | None = None
    unsigned: bool | None = None
    workers: int = 8
    scheduler: str | None = None
    processes: bool = False
    progress: bool = True
    retries: int = 6
    retry_base_delay: float = 0.5
    reserve_bytes: int = 0
    fsync: bool = True

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=max(1, self.retries), base_delay=self.retry_base_delay)


@dataclass
class FetchSummary:
    """What a fetch run did. ``failed``: manifest rows of objects that are not ok."""

    out: Path
    source: str
    captures: int = 0
    objects: int = 0
    downloaded: int = 0
    skipped: int = 0
    bytes_total: int = 0
    bytes_transferred: int = 0
    seconds: float = 0.0
    failed: list[FetchRow] = field(default_factory=list)
    fatal: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.fatal

    @property
    def mb_per_s(self) -> float:
        return self.bytes_transferred / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"fetch {self.source} -> {self.out}",
            f"  captures {self.captures}, objects {self.objects}: {self.downloaded} downloaded, "
            f"{self.skipped} already present, {len(self.failed)} failed",
            f"  {self.bytes_transferred / 1e6:.1f} MB transferred in {self.seconds:.1f} s "
            f"({self.mb_per_s:.1f} MB/s); raw tree {self.bytes_total / 1e6:.1f} MB",
            f"  manifest: {self.out / '_manifests' / 'fetch.parquet'}",
        ]
        if self.fatal:
            out.append(f"  STOPPED: {self.fatal}")
        for row in self.failed[:20]:
            out.append(f"  FAILED {row.path}: {row.error}")
        if len(self.failed) > 20:
            out.append(f"  ... and {len(self.failed) - 20} more (see the manifest)")
        return out


def fetch(
    out: str | os.PathLike, options: FetchOptions | None = None, /, *, client=None, **kw: object
) -> FetchSummary:
    """Fetch captures into ``out`` (see the module doc) with ``options`` (a :class:`FetchOptions`; keyword
    arguments override its fields). Holds ``OUT/_manifests/fetch.lock`` for the run. Returns a
    :class:`FetchSummary`; per-object and per-capture failures are in ``summary.failed`` (and the manifest),
    never raised. client: an existing ``distributed.Client`` to use instead of making one.

    Raises ValueError (bad size/asset/camera/capture ids), CaptureNotFoundError, PermissionError (unwritable
    OUT), StoreLockedError (another fetch or verify holds OUT), DiskFullError (not enough space) before
    writing anything but the lock."""
    t0 = time.perf_counter()
    if options is not None and not isinstance(options, FetchOptions):
        raise TypeError(
            f"fetch(out, options): options must be a FetchOptions, not {options!r} (size= is a keyword)"
        )
    opts = dataclasses.replace(options or FetchOptions(), **kw)
    size = parse_size(opts.size).name
    assets = parse_assets(opts.assets)
    cameras = parse_cameras(opts.cameras)
    ids = parse_captures(opts.captures)
    if ids is None:
        ids = list(release_capture_ids())
    if opts.n is not None:
        if opts.n < 1:
            raise ValueError(f"-n must be >= 1, got {opts.n}")
        ids = ids[: opts.n]
    if cameras and not any(a in ("image", "segmentation") for a in assets):
        log.info("--cameras given but no per-camera asset selected (%s)", ",".join(assets))
    out = Path(out).expanduser().resolve()
    src = resolve_source(
        size, opts.source, opts.endpoint_url, opts.unsigned
    )  # first: a bad source creates nothing
    _prepare_out(out)
    with raw_tree_lock(out):
        run = _FetchRun(out, src, opts, assets, cameras, t0)
        log.info("fetch %d capture(s) of %s from %s into %s", len(ids), size, src.describe(), out)
        to_plan = run.skip_intact(ids)
        if not to_plan:
            return run.finish()
        if client is not None:
            return run.run(client, to_plan)
        from ava256.pipeline.cluster import dask_client

        with dask_client(opts.workers, processes=opts.processes, scheduler=opts.scheduler) as c:
            return run.run(c, to_plan)


class _FetchRun:
    """One fetch run on the driver: the manifest rows, what this run wrote, and the summary."""

    def __init__(self, out: Path, src: Source, opts: FetchOptions, assets, cameras, t0: float) -> None:
        self.out, self.src, self.opts, self.assets, self.cameras, self.t0 = (
            out,
            src,
            opts,
            assets,
            cameras,
            t0,
        )
        self.policy = opts.policy
        self.rows = read_fetch_manifest(out)  # under the lock: nobody else writes it meanwhile
        self.mine: set[tuple[str, str]] = set()  # rows this run is about (fetched, skipped or failed)
        self.written: dict[tuple[str, str], FetchRow] = {}  # rows this run changed
        self.summary = FetchSummary(out=out, source=src.describe())
        self.reserve = _ManifestReserve(out, 0)
        self.reserve.release()  # one left by a killed run: its space counts as free again

    # --- the manifest --------------------------------------------------------------------------------------
    def record(self, row: FetchRow) -> None:
        key = (row.capture, row.key)
        self.rows[key] = self.written[key] = row
        self.mine.add(key)

    def tally(self, res: FetchResult) -> None:
        self.summary.bytes_transferred += res.transferred
        if res.row.status == STATUS_OK:
            fresh = res.transferred > 0 or (res.row.resumed_from or 0) > 0
            self.summary.downloaded += int(fresh)
            self.summary.skipped += int(not fresh)

    def flush(self) -> None:
        """Write this run's rows over the manifest on disk (atomic). On a full disk the reserve is freed for it;
        DiskFullError naming the manifest if even that is not enough."""
        if not self.written:
            return
        for last_try in (False, True):
            try:
                update_fetch_manifest(self.out, self.written.values())
                return
            except OSError as exc:
                if not _no_space(exc):
                    raise
                if last_try or not self.reserve.release():
                    raise _disk_full(exc, manifest_path(self.out)) from exc
                log.warning("disk full: freed the space reserved for the manifest to write it")

    def finish(self) -> FetchSummary:
        s = self.summary
        try:
            self.flush()
        finally:
            self.reserve.release()
        s.objects = len(self.mine)
        s.bytes_total = sum((self.rows[k].bytes or 0) for k in self.mine if self.rows[k].status == STATUS_OK)
        s.failed = [self.rows[k] for k in sorted(self.mine) if self.rows[k].status != STATUS_OK]
        s.seconds = time.perf_counter() - self.t0
        for line in s.lines():
            log.info(line)
        return s

    # --- the steps -----------------------------------------------------------------------------------------
    def skip_intact(self, ids: list[CaptureId]) -> list[CaptureId]:
        """Captures whose files are all intact need nothing from the source; returns the others."""
        self.summary.captures = len(ids)
        to_plan = []
        for cap in ids:
            done = _local_capture_done(self.out, cap, self.assets, self.cameras, self.rows)
            if done is None:
                to_plan.append(cap)
                continue
            self.summary.skipped += len(done)
            self.mine.update((r.capture, r.key) for r in done)
        return to_plan

    def run(self, client, to_plan: list[CaptureId]) -> FetchSummary:
        specs = self.plan(client, to_plan)
        self.check_space(specs)
        self.reserve = _ManifestReserve(self.out, manifest_reserve_bytes(len(self.rows) + len(specs)))
        self.reserve.take()
        try:
            self.download(client, specs)
        except BaseException:
            self.flush()  # what finished is on the record, whatever stopped the run
            self.reserve.release()
            raise
        return self.finish()

    def plan(self, client, to_plan: list[CaptureId]) -> list[ObjectSpec]:
        """Plan every capture (one task each). A capture that cannot be planned (unsafe or broken calibration,
        source errors) fails alone, on its calibration row; a capture that is not there stops the run."""
        prior = {cap.folder: {k: r for (c, k), r in self.rows.items() if c == cap.folder} for cap in to_plan}
        futures = [
            client.submit(
                plan_capture,
                cap,
                str(self.out),
                self.src,
                self.assets,
                self.cameras,
                prior[cap.folder],
                self.policy,
                pure=False,
            )  # fmt: skip
            for cap in to_plan
        ]
        plans: list[CapturePlan] = client.gather(futures)
        missing = [p for p in plans if p.error_type == "CaptureNotFoundError"]
        if missing:
            msg = "; ".join(p.error for p in missing[:10])
            more = f"; … {len(missing) - 10} more" if len(missing) > 10 else ""
            raise CaptureNotFoundError(f"{msg}{more} (size/--source right?)")
        good = [p for p in plans if not p.error]
        for p in plans:
            if p.error:
                self._capture_failed(p)
            for row in p.rows:
                self.tally(FetchResult(row))
                self.record(row)
        self._check_cameras(good)
        return [s for p in good for s in p.specs]

    def _capture_failed(self, plan: CapturePlan) -> None:
        log.error("capture %s not fetched: %s", plan.capture, plan.error)
        spec = ObjectSpec(plan.capture, plan.folder or plan.capture, "meta", CALIBRATION_KEY, 0, "")
        self.record(_row(spec, self.src, STATUS_FAILED, error=f"{plan.error}; capture not fetched"))

    def _check_cameras(self, plans: list[CapturePlan]) -> None:
        if not self.cameras or not plans:
            return
        known = set().union(*(p.camera_ids for p in plans))
        if not set(self.cameras) <= known:
            unknown = sorted(set(self.cameras) - known)
            raise ValueError(f"unknown camera id(s) {unknown}; the captures have e.g. {sorted(known)[:8]}")
        for p in plans:
            absent = sorted(set(self.cameras) - set(p.camera_ids))
            if absent:
                log.warning("capture %s has no camera(s) %s; fetching the others", p.capture, absent)

    def check_space(self, specs: list[ObjectSpec]) -> None:
        """Refuse before writing anything if the bytes still to fetch (plus the manifest's reserve and
        ``reserve_bytes``) do not fit."""
        need = manifest_reserve_bytes(len(self.rows) + len(specs))
        for s in specs:
            have = 0
            for p in (self.out / (s.path + PART_SUFFIX), self.out / s.path):
                with contextlib.suppress(OSError):
                    have = max(have, min(p.stat().st_size, s.size))
            need += s.size - have
        free = shutil.disk_usage(self.out).free
        if need > free - self.opts.reserve_bytes:
            keep = (
                f", keeping {_bytes_text(self.opts.reserve_bytes)} in reserve"
                if self.opts.reserve_bytes
                else ""
            )
            raise DiskFullError(
                errno.ENOSPC,
                f"not enough free space in {self.out}: {_bytes_text(need)} still to fetch "
                f"({len(specs)} objects and the manifest), {_bytes_text(free)} free{keep}; nothing written",
            )

    def download(self, client, specs: list[ObjectSpec]) -> None:
        from concurrent.futures import CancelledError

        from distributed import as_completed

        from ava256.progress import Progress

        total = sum(s.size for s in specs)
        bar = Progress(
            f"fetch {len(specs)} objects", total, unit="B", unit_scale=True, enabled=self.opts.progress
        )
        last_flush, failed = time.monotonic(), 0
        futs = client.map(fetch_object, specs, out=str(self.out), src=self.src, policy=self.policy,
                          fsync=self.opts.fsync, pure=False)  # fmt: skip
        spec_of = {fut.key: spec for fut, spec in zip(futs, specs)}
        try:
            # with_results: results come back in batches, not one event-loop round trip per object
            for fut, res in as_completed(futs, with_results=True, raise_errors=False):
                if fut.cancelled() or isinstance(res, CancelledError):
                    continue
                if isinstance(res, BaseException):  # a crashed worker, not a download problem
                    error = f"task failed: {type(res).__name__}: {res}"
                    res = FetchResult(_row(spec_of[fut.key], self.src, STATUS_FAILED, error=error))
                row = res.row
                self.tally(res)
                if row.status != STATUS_OK:
                    failed += 1
                    bar.set_postfix(failed=failed)
                bar.update(row.bytes or 0)
                self.record(row)
                if res.fatal and not self.summary.fatal:
                    self.summary.fatal = f"{row.error}; remaining downloads cancelled"
                    log.error("%s", self.summary.fatal)
                    client.cancel(futs)
                if time.monotonic() - last_flush > MANIFEST_FLUSH_SECONDS:
                    self.flush()
                    last_flush = time.monotonic()
        finally:
            bar.close()
            if self.summary.fatal:
                for s in specs:
                    if (s.capture, s.key) not in self.mine:
                        error = f"not attempted: the run stopped ({self.summary.fatal.split(';')[0]})"
                        self.record(_row(s, self.src, STATUS_FAILED, error=error))


# ---------------------------------------------------------------------------------------------------------
# Rebuilding the manifest from the files on disk
# ---------------------------------------------------------------------------------------------------------

REBUILT = "rebuilt from the file on disk (--rebuild-manifest); checked against the source by the next fetch"


@dataclass
class RebuildSummary:
    out: Path
    captures: int = 0
    files: int = 0
    kept: int = 0  # rows of a readable old manifest kept as they were (file unchanged, or no file)
    skipped: list[str] = field(default_factory=list)  # files that are not catalog keys, or symlinks
    replaced_unreadable: bool = False

    def lines(self) -> list[str]:
        out = [
            f"rebuilt {manifest_path(self.out)}: {self.files} files re-hashed in {self.captures} captures"
            + (f", {self.kept} rows kept from the old manifest" if self.kept else "")
            + (" (the old one was unreadable)" if self.replaced_unreadable else "")
        ]
        for p in self.skipped[:10]:
            out.append(f"  SKIPPED {p}")
        if len(self.skipped) > 10:
            out.append(f"  ... and {len(self.skipped) - 10} more")
        return out


def _catalog(capture_dir: Path) -> dict[str, str]:
    """{key: asset} of a capture folder on disk (per-camera keys from its calibration, if that is readable)."""
    try:
        ids = camera_ids_from_calibration((capture_dir / CALIBRATION_KEY).read_bytes())
    except (OSError, ValueError):
        ids = []
    return {k: a for a, k in _wanted_keys(ASSETS, ids)}


def rebuild_manifest(out: str | os.PathLike) -> RebuildSummary:
    """Rebuild ``OUT/_manifests/fetch.parquet`` from the files of ``out`` (re-hashing each), holding the raw
    tree's lock. Catalog files of capture folders become ``ok`` rows without a source (so the next ``ava256
    fetch`` checks them against the bucket's ETags instead of trusting them); ``.part`` files, symlinks and
    other files are left out. Rows of a readable old manifest are kept for unchanged files and for keys
    without a file (failed rows stay on the record)."""
    out = Path(out).expanduser().resolve()
    if not out.is_dir():
        raise FileNotFoundError(f"raw tree {out} does not exist")
    summary = RebuildSummary(out)
    with raw_tree_lock(out):
        try:
            old = read_fetch_manifest(out)
        except ValueError as exc:
            log.warning("%s", exc)
            old, summary.replaced_unreadable = {}, True
        rows: dict[tuple[str, str], FetchRow] = {}
        for cap_dir in sorted(p for p in out.iterdir() if p.is_dir() and not p.is_symlink()):
            try:
                folder = CaptureId.parse(cap_dir.name).folder
            except ValueError:
                continue
            summary.captures += 1
            catalog = _catalog(cap_dir)
            for dirpath, _dirs, files in os.walk(cap_dir):
                for name in sorted(files):
                    p = Path(dirpath) / name
                    key = p.relative_to(cap_dir).as_posix()
                    if p.is_symlink() or key not in catalog:
                        if not name.endswith((PART_SUFFIX, ETAG_SUFFIX, ".tmp")):
                            why = "a symlink" if p.is_symlink() else "not a catalog key"
                            summary.skipped.append(f"{folder}/{key}: {why}")
                        continue
                    row = _rebuilt_row(folder, key, catalog[key], p, old.get((folder, key)))
                    rows[(folder, key)] = row
                    summary.files += 1
                    summary.kept += row.error != REBUILT
        for k, row in old.items():
            if k not in rows:
                rows[k] = row
                summary.kept += 1
        write_fetch_manifest(out, rows.values())
    for line in summary.lines():
        log.info(line)
    return summary


def _rebuilt_row(folder: str, key: str, asset: str, p: Path, old: FetchRow | None) -> FetchRow:
    st = p.stat()
    n, sha, md5 = hash_file(p, md5=True)
    if old is not None and old.status == STATUS_OK and old.sha256 == sha and old.bytes == n:
        return dataclasses.replace(old, mtime_ns=st.st_mtime_ns)  # the old row still describes the file
    return FetchRow(
        capture=folder, asset=asset, key=key, path=f"{folder}/{key}", source="", bytes=n, etag="", md5=md5,
        sha256=sha, status=STATUS_OK, error=REBUILT, attempts=0, resumed_from=0, seconds=0.0,
        mtime_ns=st.st_mtime_ns, time=datetime.now(UTC),
    )  # fmt: skip


__all__ = [
    "CaptureNotFoundError",
    "DiskFullError",
    "FetchOptions",
    "FetchResult",
    "FetchSummary",
    "ObjectSpec",
    "RebuildSummary",
    "RetryPolicy",
    "RetryableError",
    "Source",
    "fetch",
    "fetch_object",
    "hash_file",
    "is_retryable",
    "parse_cameras",
    "parse_captures",
    "plan_capture",
    "raw_tree_lock",
    "rebuild_manifest",
    "resolve_source",
]
