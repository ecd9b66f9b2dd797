"""``ava256 fetch``: download AVA-256 captures from the release bucket (or any copy) into a verified raw tree.

Output: ``OUT/{capture.folder}/{key}`` exactly as in the bucket (canonical ``mcd--mct--sid`` folder whatever the
bucket's spelling) and ``OUT/_manifests/fetch.parquet`` (schema in :mod:`ava256.manifests.fetch`).

How (one Dask task per object):

1. Plan (one task per capture): list the capture folder (both spellings, the listing wins; HEAD requests where
   listing is denied), fetch ``decoder/camera_calibration.json``, read its camera ids, build the catalog keys
   (``ava256.capture.capture_keys``) for the chosen assets/cameras, each key checked by ``safe_relpath``.
   A capture whose files are all present and match their manifest rows (size + mtime) is skipped without a
   single request to the bucket.
2. Check free space against the bytes still to download.
3. Download: stream to ``{file}.part`` (1 MiB chunks), sha256 (+ MD5 when the ETag is single-part) while
   streaming, fsync, check size + ETag, ``os.replace``. A ``.part`` left by a killed run continues with a Range
   request (``If-Match`` the ETag recorded beside it in ``{file}.part.etag``). Retries with exponential backoff
   and full jitter on 5xx / SlowDown / throttling / connection resets / short bodies; a content mismatch is
   re-downloaded once, then recorded as failed. One object failing never stops the others; disk full does stop
   the run (nothing else could succeed).
"""

from __future__ import annotations

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ava256.atomic import atomic_write_text
from ava256.capture import (
    CALIBRATION_KEY,
    PUBLIC_BUCKET,
    PUBLIC_PREFIX,
    CaptureId,
    UnsafePathError,
    asset_keys,
    parse_assets,
    parse_size,
    read_capture_ids_csv,
    release_capture_ids,
    safe_relpath,
)
from ava256.manifests.fetch import (
    STATUS_FAILED,
    STATUS_OK,
    read_fetch_manifest,
    write_fetch_manifest,
)

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20  # bytes per read/write/hash step
PART_SUFFIX = ".part"
ETAG_SUFFIX = ".part.etag"
MANIFEST_FLUSH_SECONDS = 5.0
_CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class CaptureNotFoundError(LookupError):
    """A requested capture has no folder (in either spelling) in the source."""


class DiskFullError(OSError):
    """Not enough free space for the objects still to download, or ENOSPC while writing."""


class _Permanent(Exception):
    """A download error that retrying will not fix (404, 403, bad range, local error)."""


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
        base = Path(src.location) / folder
        if not base.is_dir():
            return {}
        out = {}
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                p = Path(dirpath) / name
                out[p.relative_to(base).as_posix()] = (p.stat().st_size, "")
        return out
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


def _head(src: Source, key: str) -> tuple[int, str] | None:
    """(bytes, etag) of one object (key relative to the size folder), None if absent."""
    if src.kind == "local":
        p = Path(src.location) / key
        return (p.stat().st_size, "") if p.is_file() else None
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
        f = open(Path(src.location) / key, "rb")  # noqa: SIM115 - closed by the generator
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


# ---------------------------------------------------------------------------------------------------------
# One object
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries per object; sleep ``uniform(0, min(max_delay, base_delay * 2**i))`` s between them."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1)))


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


def _row(spec: ObjectSpec, src: Source, status: str, error: str = "", **kw: object) -> dict:
    row = {
        "capture": spec.capture,
        "asset": spec.asset,
        "key": spec.key,
        "path": f"{spec.capture}/{spec.key}",
        "source": src.url(f"{spec.folder}/{spec.key}"),
        "bytes": spec.size,
        "etag": spec.etag,
        "md5": "",
        "sha256": "",
        "status": status,
        "error": error,
        "attempts": 0,
        "resumed_from": 0,
        "seconds": 0.0,
        "mtime_ns": None,
        "time": datetime.now(UTC),
        "transferred": 0,  # not in the manifest: bytes moved over the network by this call
    }
    row.update(kw)
    return row


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


def _download(
    spec: ObjectSpec,
    src: Source,
    part: Path,
    tag: Path,
    policy: RetryPolicy,
    fsync: bool = True,
    part_size: int | None = None,
) -> _Download:
    """Bring ``part`` to the whole object, resuming an existing ``.part`` with the same ETag; retries transient
    errors. Raises _Permanent (or the last transient error) when it gives up. ``part_size``: of a multipart
    upload, to check its ETag while streaming."""
    hasher = _Hasher(spec.etag, part_size)
    result = _Download(etag=spec.etag)
    offset = 0
    if part.exists() and _read_tag(tag) == spec.etag and part.stat().st_size <= spec.size:
        # Resume: hash what is already on disk, then ask for the rest.
        offset = part.stat().st_size
        with open(part, "rb") as f:
            while data := f.read(CHUNK_SIZE):
                hasher.update(data)
        result.resumed_from = offset
        log.info("%s: resuming at byte %d of %d", spec.path, offset, spec.size)
    else:
        _unlink(part)
        _write_tag(tag, spec.etag)
    while True:
        result.attempts += 1
        try:
            if offset >= spec.size and spec.size > 0:
                break  # a complete .part from an earlier run: nothing left to ask for
            chunks, total, etag, start = _open(src, spec.source_key, offset, spec.etag)
            if start != offset:  # the server sent the object from byte 0: start over
                offset, hasher = 0, _Hasher(spec.etag, part_size)
            with open(part, "r+b" if offset else "wb") as f:
                f.seek(offset)
                f.truncate()
                for data in chunks:
                    f.write(data)
                    hasher.update(data)
                    offset += len(data)
                    result.transferred += len(data)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            result.etag = etag or spec.etag
            if offset != total:
                raise ConnectionError(f"body ended at byte {offset} of {total}")
            break
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DiskFullError(errno.ENOSPC, f"disk full while writing {part}") from exc
            if not is_retryable(exc):
                raise _Permanent(f"{type(exc).__name__}: {exc}") from exc
            if result.attempts >= policy.attempts:
                raise
            _retry_log(spec, result.attempts, exc)
            time.sleep(policy.delay(result.attempts))
        except Exception as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "InvalidRange", "416") and offset:
                # The object changed since the .part was written, or the .part is longer than it: restart.
                log.warning("%s: cannot resume (%s); downloading from the start", spec.path, _error_code(exc))
                offset, hasher = 0, _Hasher(spec.etag, part_size)
                result.resumed_from = 0
                _unlink(part)
                continue
            if not is_retryable(exc):
                raise _Permanent(f"{_error_code(exc) or type(exc).__name__}: {exc}") from exc
            if result.attempts >= policy.attempts:
                raise
            _retry_log(spec, result.attempts, exc)
            time.sleep(policy.delay(result.attempts))
    result.bytes = offset
    result.sha256 = hasher.sha.hexdigest()
    result.md5 = hasher.md5.hexdigest() if hasher.md5 is not None else ""
    result.multipart_etag = hasher.multipart_etag()
    return result


def _retry_log(spec: ObjectSpec, attempt: int, exc: BaseException) -> None:
    log.info("%s: attempt %d failed (%s: %s); retrying", spec.path, attempt, type(exc).__name__, exc)


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


def _retrying(policy: RetryPolicy, fn, *args, **kw):
    """``fn(*args, **kw)`` with the policy's retries on transient errors (listings, HEADs)."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn(*args, **kw)
        except Exception as exc:
            if not is_retryable(exc) or attempt >= policy.attempts:
                raise
            time.sleep(policy.delay(attempt))


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
    return int(_retrying(policy, _s3(src).head_object, **kw)["ContentLength"])


def fetch_object(
    spec: ObjectSpec, out: str, src: Source, policy: RetryPolicy = RetryPolicy(), fsync: bool = True
) -> dict:
    """Fetch one object into ``OUT/{capture}/{key}``; returns its manifest row (never raises for a per-object
    problem: the row says ``failed`` with the reason). A row with ``_fatal`` set (disk full) should stop the run."""
    t0 = time.perf_counter()
    try:
        dest = Path(out) / spec.path
        part = dest.with_name(dest.name + PART_SUFFIX)
        tag = dest.with_name(dest.name + ETAG_SUFFIX)
        dest.parent.mkdir(parents=True, exist_ok=True)

        # An existing file we can vouch for without downloading it again.
        if dest.is_file() and dest.stat().st_size == spec.size:
            md5_known = single_part_md5(spec.etag)
            if (spec.prior_sha256 and spec.prior_etag == spec.etag) or md5_known:
                n, sha, md5 = hash_file(dest, md5=bool(md5_known))
                if (spec.prior_sha256 and sha == spec.prior_sha256) or (md5_known and md5 == md5_known):
                    return _row(
                        spec, src, STATUS_OK, md5=md5_known, sha256=sha, mtime_ns=dest.stat().st_mtime_ns,
                        seconds=time.perf_counter() - t0,
                    )  # fmt: skip

        problems = []
        part_size = _multipart_part_size(spec, src, policy)
        for _pass in range(2):
            d = _download(spec, src, part, tag, policy, fsync, part_size)
            problem = _mismatch(spec, d)
            if not problem:
                os.replace(part, dest)
                _unlink(tag)
                return _row(
                    spec, src, STATUS_OK, bytes=d.bytes, etag=d.etag, md5=d.md5, sha256=d.sha256,
                    attempts=d.attempts, resumed_from=d.resumed_from, transferred=d.transferred,
                    mtime_ns=dest.stat().st_mtime_ns, seconds=time.perf_counter() - t0,
                    error="; ".join(f"healed: {p}" for p in problems),
                )  # fmt: skip
            problems.append(problem)
            log.warning("%s: %s; downloading again from scratch", spec.path, problem)
            _unlink(part, tag)
        return _row(
            spec, src, STATUS_FAILED, error=f"{problems[-1]} (after one re-download)",
            attempts=d.attempts, sha256=d.sha256, transferred=d.transferred, seconds=time.perf_counter() - t0,
        )  # fmt: skip
    except DiskFullError as exc:
        return _row(spec, src, STATUS_FAILED, error=f"disk full: {exc.strerror}", _fatal="disk full")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return _row(
                spec, src, STATUS_FAILED, error=f"disk full writing {exc.filename}", _fatal="disk full"
            )
        if is_retryable(exc):
            return _row(spec, src, STATUS_FAILED, error=f"gave up after {policy.attempts} attempts: {exc}")
        return _row(spec, src, STATUS_FAILED, error=f"{type(exc).__name__}: {exc}")
    except _Permanent as exc:
        return _row(spec, src, STATUS_FAILED, error=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:
        if is_retryable(exc):
            msg = f"gave up after {policy.attempts} attempts: {_error_code(exc) or type(exc).__name__}: {exc}"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        return _row(spec, src, STATUS_FAILED, error=msg, seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------
# One capture: list, calibration, keys
# ---------------------------------------------------------------------------------------------------------


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
    rows: list[dict] = field(
        default_factory=list
    )  # rows already settled while planning (calibration, absent)
    error: str = ""
    error_type: str = ""


def _wanted_keys(assets: Sequence[str], camera_ids: Sequence[str]) -> list[tuple[str, str]]:
    """[(asset, key)] of the catalog, each key checked by ``safe_relpath``."""
    out: dict[str, str] = {}
    for asset in assets:
        for key in asset_keys(asset, camera_ids):
            out.setdefault(safe_relpath(key), asset)
    return [(a, k) for k, a in out.items()]


def plan_capture(
    capture: CaptureId,
    out: str,
    src: Source,
    assets: Sequence[str],
    cameras: Sequence[str] | None,
    prior: dict[str, dict],
    policy: RetryPolicy = RetryPolicy(),
) -> CapturePlan:
    """Resolve one capture into object specs (a Dask task). ``prior``: its manifest rows by key. Never raises;
    problems are in ``plan.error`` (+ ``error_type``)."""
    plan = CapturePlan(capture.folder)
    try:
        listing, folder = None, None
        denied = False
        for name in capture.folder_names:
            objs = _retrying(policy, _list_folder, src, name)
            if objs is None:
                denied = True
                if _retrying(policy, _head, src, f"{name}/{CALIBRATION_KEY}") is not None:
                    folder = name
                    break
            elif objs:
                listing, folder = objs, name
                break
        if folder is None:
            tried = " and ".join(src.url(f"{n}/") for n in capture.folder_names)
            raise CaptureNotFoundError(f"capture {capture.folder} not found: nothing under {tried}")
        plan.folder = folder

        def stat(key: str) -> tuple[int, str] | None:
            if listing is not None:
                return listing.get(key)
            return _retrying(policy, _head, src, f"{folder}/{key}") if denied else None

        def spec(asset: str, key: str) -> ObjectSpec | None:
            found = stat(key)
            if found is None:
                return None
            p = prior.get(key) or {}
            ok = p.get("status") == STATUS_OK
            return ObjectSpec(
                capture.folder, folder, asset, key, found[0], found[1],
                prior_sha256=(p.get("sha256") or "") if ok else "", prior_etag=(p.get("etag") or "") if ok else "",
            )  # fmt: skip

        cal = spec("meta", CALIBRATION_KEY)
        if cal is None:
            raise CaptureNotFoundError(
                f"capture {capture.folder}: {src.url(f'{folder}/{CALIBRATION_KEY}')} is absent"
            )
        cal_row = fetch_object(cal, out, src, policy)
        plan.rows.append(cal_row)
        if cal_row["status"] != STATUS_OK:
            raise RuntimeError(f"capture {capture.folder}: calibration not fetched: {cal_row['error']}")
        cal_path = Path(out) / cal.path
        ids = camera_ids_from_calibration(cal_path.read_bytes(), where=f"{capture.folder}/{CALIBRATION_KEY}")
        plan.camera_ids = ids
        if cameras:
            ids = [c for c in ids if c in set(cameras)]
        for asset, key in _wanted_keys(assets, ids):
            if key == CALIBRATION_KEY:
                continue
            s = spec(asset, key)
            if s is None:
                plan.rows.append(
                    _row(
                        ObjectSpec(capture.folder, folder, asset, key, 0, ""), src, STATUS_FAILED,
                        error=f"absent in the source: {src.url(f'{folder}/{key}')}",
                    )
                )  # fmt: skip
            else:
                plan.specs.append(s)
    except Exception as exc:
        plan.error, plan.error_type = str(exc), type(exc).__name__
    return plan


def _local_capture_done(out: Path, capture: CaptureId, assets, cameras, rows: dict) -> list[dict] | None:
    """The capture's manifest rows if every wanted file is present and unchanged (size + mtime) since it was
    recorded ok; None if anything needs the bucket."""

    def intact(key: str) -> dict | None:
        row = rows.get((capture.folder, key))
        if not row or row.get("status") != STATUS_OK:
            return None
        try:
            st = (out / row["path"]).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return row if st.st_size == row["bytes"] and st.st_mtime_ns == row["mtime_ns"] else None

    cal = intact(CALIBRATION_KEY)
    if cal is None:
        return None
    try:
        ids = camera_ids_from_calibration((out / cal["path"]).read_bytes())
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


def parse_captures(value: str | os.PathLike | Sequence[str | CaptureId] | None) -> list[CaptureId] | None:
    """``--captures``: a CSV file of ids (columns mcd, sid, mct), or a comma list of folder names (either
    spelling), or a sequence of CaptureId/str. None stays None (= the release list)."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        if os.path.isfile(text):
            with open(text, newline="") as f:
                ids = read_capture_ids_csv(f)
            if not ids:
                raise ValueError(f"--captures {text}: the file lists no captures")
            return ids
        if text.lower().endswith(".csv"):
            raise FileNotFoundError(f"--captures {text}: no such file")
        items: Sequence = [t for t in text.split(",") if t.strip()]
    else:
        items = value
    out = [c if isinstance(c, CaptureId) else CaptureId.parse(str(c)) for c in items]
    if not out:
        raise ValueError("--captures lists no captures")
    return list(dict.fromkeys(out))


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
    failed: list[dict] = field(default_factory=list)
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
            out.append(f"  FAILED {row['path']}: {row['error']}")
        if len(self.failed) > 20:
            out.append(f"  ... and {len(self.failed) - 20} more (see the manifest)")
        return out


def fetch(
    out: str | os.PathLike,
    size: str = "4TB",
    n: int | None = None,
    captures: str | os.PathLike | Sequence[str | CaptureId] | None = None,
    assets: str | Sequence[str] | None = None,
    cameras: str | Sequence[str] | None = None,
    workers: int = 8,
    endpoint_url: str | None = None,
    source: str | os.PathLike | None = None,
    *,
    scheduler: str | None = None,
    processes: bool = False,
    client=None,
    progress: bool = True,
    retries: int = 6,
    retry_base_delay: float = 0.5,
    reserve_bytes: int = 0,
    unsigned: bool | None = None,
    fsync: bool = True,
) -> FetchSummary:
    """Fetch captures of release ``size`` into ``out`` (see the module doc). Returns a :class:`FetchSummary`;
    per-object failures are in ``summary.failed`` (and the manifest), never raised.

    n: the first ``n`` captures (of ``captures`` or of the release list); captures: see :func:`parse_captures`;
    assets: comma list of ``ava256.capture.ASSETS`` (meta is always included); cameras: dome camera ids (default
    all in each capture's calibration); workers: concurrent downloads (Dask threads); client: an existing
    ``distributed.Client`` to use instead of making one; reserve_bytes: free space to leave on OUT's disk;
    fsync: flush each file to disk before its rename (durable ``ok`` rows after a power loss).

    Raises ValueError (bad size/asset/camera/capture ids), CaptureNotFoundError, UnsafePathError,
    PermissionError (unwritable OUT), DiskFullError (not enough space) before downloading object data.
    """
    t0 = time.perf_counter()
    size = parse_size(size).name
    chosen_assets = parse_assets(assets)
    wanted_cameras = parse_cameras(cameras)
    ids = parse_captures(captures)
    if ids is None:
        ids = list(release_capture_ids())
    if n is not None:
        if n < 1:
            raise ValueError(f"-n must be >= 1, got {n}")
        ids = ids[:n]
    if wanted_cameras and not any(a in ("image", "segmentation") for a in chosen_assets):
        log.info("--cameras given but no per-camera asset selected (%s)", ",".join(chosen_assets))
    out = Path(out).expanduser().resolve()
    src = resolve_source(size, source, endpoint_url, unsigned)  # first: a bad source creates nothing
    _prepare_out(out)
    policy = RetryPolicy(attempts=max(1, retries), base_delay=retry_base_delay)
    rows = read_fetch_manifest(out)
    summary = FetchSummary(out=out, source=src.describe(), captures=len(ids))
    log.info("fetch %d capture(s) of %s from %s into %s", len(ids), size, src.describe(), out)

    # Captures whose files are all intact need nothing from the bucket.
    to_plan, skipped_rows = [], []
    for cap in ids:
        done = _local_capture_done(out, cap, chosen_assets, wanted_cameras, rows)
        if done is None:
            to_plan.append(cap)
        else:
            skipped_rows.extend(done)
    summary.skipped = len(skipped_rows)

    if client is not None:
        return _run(client, out, src, ids, to_plan, chosen_assets, wanted_cameras, rows, policy, summary,
                    skipped_rows, progress, reserve_bytes, t0, fsync)  # fmt: skip
    if not to_plan:
        return _finish(out, rows, summary, {(r["capture"], r["key"]) for r in skipped_rows}, t0)
    from ava256.pipeline.cluster import dask_client

    with dask_client(workers, processes=processes, scheduler=scheduler) as c:
        return _run(c, out, src, ids, to_plan, chosen_assets, wanted_cameras, rows, policy, summary,
                    skipped_rows, progress, reserve_bytes, t0, fsync)  # fmt: skip


def _finish(
    out: Path, rows: dict, summary: FetchSummary, mine: set[tuple[str, str]], t0: float
) -> FetchSummary:
    summary.objects = len(mine)
    summary.bytes_total = sum((rows[k].get("bytes") or 0) for k in mine if rows[k]["status"] == STATUS_OK)
    summary.failed = [rows[k] for k in sorted(mine) if rows[k]["status"] != STATUS_OK]
    write_fetch_manifest(out, rows.values())
    summary.seconds = time.perf_counter() - t0
    for line in summary.lines():
        log.info(line)
    return summary


def _run(client, out, src, ids, to_plan, assets, cameras, rows, policy, summary, skipped_rows, progress,
         reserve_bytes, t0, fsync) -> FetchSummary:  # fmt: skip
    from concurrent.futures import CancelledError

    from distributed import as_completed

    keys: set[tuple[str, str]] = set()

    def record(row: dict) -> None:
        row = {k: v for k, v in row.items() if not k.startswith("_") and k != "transferred"}
        rows[(row["capture"], row["key"])] = row
        keys.add((row["capture"], row["key"]))

    def tally(row: dict) -> None:
        summary.bytes_transferred += row["transferred"]
        if row["status"] == STATUS_OK:
            fresh = row["transferred"] > 0 or row["resumed_from"] > 0
            summary.downloaded += int(fresh)
            summary.skipped += int(not fresh)

    # 1. plan
    prior = {cap.folder: {k: r for (c, k), r in rows.items() if c == cap.folder} for cap in to_plan}
    futures = [
        client.submit(
            plan_capture, cap, str(out), src, assets, cameras, prior[cap.folder], policy, pure=False
        )
        for cap in to_plan
    ]
    plans: list[CapturePlan] = client.gather(futures)
    for plan in plans:
        for row in plan.rows:
            tally(row)
            record(row)
    errors = [p for p in plans if p.error]
    if errors:
        write_fetch_manifest(out, rows.values())
        kinds = {p.error_type for p in errors}
        msg = "; ".join(p.error for p in errors[:10]) + (
            f"; … {len(errors) - 10} more" if len(errors) > 10 else ""
        )
        if kinds <= {"CaptureNotFoundError"}:
            raise CaptureNotFoundError(f"{msg} (size/--source right?)")
        if "UnsafePathError" in kinds:
            raise UnsafePathError(msg)
        if kinds <= {"RuntimeError"}:  # calibration downloads failed after retries
            raise ConnectionError(msg)
        raise ValueError(msg)
    if cameras:
        known = set().union(*(p.camera_ids for p in plans)) if plans else set()
        if plans and not set(cameras) <= known:
            unknown = sorted(set(cameras) - known)
            raise ValueError(f"unknown camera id(s) {unknown}; the captures have e.g. {sorted(known)[:8]}")
        for p in plans:
            absent = sorted(set(cameras) - set(p.camera_ids))
            if absent:
                log.warning("capture %s has no camera(s) %s; fetching the others", p.capture, absent)
    for r in skipped_rows:
        keys.add((r["capture"], r["key"]))
    specs = [s for p in plans for s in p.specs]

    # 2. space
    need = sum(s.size for s in specs)
    for s in specs:
        part = out / (s.path + PART_SUFFIX)
        if part.exists():
            need -= min(part.stat().st_size, s.size)
        dest = out / s.path
        if dest.exists():
            need -= min(dest.stat().st_size, s.size)
    free = shutil.disk_usage(out).free
    if need > free - reserve_bytes:
        write_fetch_manifest(out, rows.values())
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough free space in {out}: {need / 1e9:.2f} GB to download, {free / 1e9:.2f} GB free"
            + (f" (keeping {reserve_bytes / 1e9:.2f} GB in reserve)" if reserve_bytes else ""),
        )

    # 3. download
    from ava256.progress import Progress

    bar = Progress(
        f"fetch {len(specs)} objects", sum(s.size for s in specs), unit="B", unit_scale=True, enabled=progress
    )
    last_flush = time.monotonic()
    failed = 0
    futs = client.map(fetch_object, specs, out=str(out), src=src, policy=policy, fsync=fsync, pure=False)
    try:
        spec_of = {fut.key: spec for fut, spec in zip(futs, specs)}
        # with_results: results come back in batches, not one event-loop round trip per object
        for fut, row in as_completed(futs, with_results=True, raise_errors=False):
            if fut.cancelled() or isinstance(row, CancelledError):
                continue
            if isinstance(row, BaseException):  # a crashed worker, not a download problem
                row = _row(
                    spec_of[fut.key], src, STATUS_FAILED, error=f"task failed: {type(row).__name__}: {row}"
                )
            tally(row)
            if row["status"] != STATUS_OK:
                failed += 1
                bar.set_postfix(failed=failed)
            bar.update(row["bytes"] or 0)
            record(row)
            if row.get("_fatal") and not summary.fatal:
                summary.fatal = f"{row['_fatal']} ({row['error']}); remaining downloads cancelled"
                log.error("%s", summary.fatal)
                client.cancel(futs)
            if time.monotonic() - last_flush > MANIFEST_FLUSH_SECONDS:
                write_fetch_manifest(out, rows.values())
                last_flush = time.monotonic()
    finally:
        bar.close()
        if summary.fatal:
            for s in specs:
                k = (s.capture, s.key)
                if k not in keys:
                    record(_row(s, src, STATUS_FAILED, error="not attempted: the run stopped (disk full)"))
        write_fetch_manifest(out, rows.values())
    return _finish(out, rows, summary, keys, t0)


__all__ = [
    "CaptureNotFoundError",
    "DiskFullError",
    "FetchSummary",
    "ObjectSpec",
    "RetryPolicy",
    "Source",
    "fetch",
    "fetch_object",
    "hash_file",
    "is_retryable",
    "parse_captures",
    "parse_cameras",
    "plan_capture",
    "resolve_source",
]
