"""Fetch under every injected fault (real S3 server on loopback, real Dask scheduler): each run ends with every
object verified (content == the bucket's bytes) or reported failed, never a silently wrong file; a re-run once
the server behaves heals the tree."""

from __future__ import annotations

import pytest
from rel_helpers import CAMERAS, sha256

from ava256.capture import image_key
from ava256.manifests.fetch import read_fetch_manifest
from ava256.pipeline.fetch import fetch
from ava256.pipeline.verify import verify

SMALL = image_key(CAMERAS[1])  # a single-part object (ETag = MD5)

# (kind, extra fault arguments): every fault the suite injects into GETs of one object
FAULTS = {
    "slowdown-503": dict(kind="error", status=503, code="SlowDown"),
    "reset-mid-body": dict(kind="reset", after_bytes=1_500),
    "truncated-body": dict(kind="truncate", after_bytes=1_500),
    "content-length-short": dict(kind="length", delta=-700),
    # the client waits for 700 bytes that never come; every real byte did arrive, so the object passes its size
    # and ETag checks once the short read is noticed: persistent, this fault is healed rather than reported
    "content-length-long": dict(kind="length", delta=+700),
    "body-not-matching-etag": dict(kind="corrupt", after_bytes=1_000, flip=3),
    "etag-header-changed": dict(kind="etag"),
}


def assert_no_silent_damage(out, bucket) -> dict:
    """Every ok row's file holds the bucket's bytes; a non-ok object has no file at its final path."""
    rows = read_fetch_manifest(out)
    assert {k for (_c, k) in rows} == set(bucket.contents)
    for (_cap, key), row in rows.items():
        path = out / row.path
        if row.status == "ok":
            data = path.read_bytes()
            assert sha256(data) == row.sha256 == sha256(bucket.contents[key]), key
        else:
            assert row.error, key
            assert not path.exists(), f"{key} failed but a file sits at its final path"
    return rows


# header-only faults behave the same for both kinds of ETag: one target is enough for them
CASES = [(n, t) for n in FAULTS for t in ("single-part", "multipart")
         if t == "single-part" or n not in ("content-length-long", "etag-header-changed")]  # fmt: skip


@pytest.mark.parametrize("name,target", CASES)
def test_fault_is_healed_or_reported_and_rerun_heals(
    name, target, chaos_bucket, chaos, dask_threads, tmp_path
):
    key = SMALL if target == "single-part" else chaos_bucket.big_key
    spec = dict(FAULTS[name])
    kind = spec.pop("kind")
    out = tmp_path / "raw"

    # 1. a transient fault (one GET of the object misbehaves): a retry or the one re-download heals it
    transient = chaos.add(kind, match=f"{chaos_bucket.capture.folder}/{key}", times=1, **spec)
    summary = fetch(out, **chaos_bucket.kwargs(client=dask_threads))
    assert transient.hits == 1
    assert summary.ok, summary.lines()
    rows = assert_no_silent_damage(out, chaos_bucket)
    assert rows[(chaos_bucket.capture.folder, key)].status == "ok"

    # 2. a persistent fault on a fresh tree: that object (only) is reported failed, nothing wrong is kept
    chaos.clear()
    out2 = tmp_path / "raw2"
    chaos.add(kind, match=f"{chaos_bucket.capture.folder}/{key}", times=None, **spec)
    summary = fetch(out2, **chaos_bucket.kwargs(client=dask_threads, retries=3))
    assert_no_silent_damage(out2, chaos_bucket)
    if name == "content-length-long":
        assert summary.ok, summary.lines()
        return
    assert [r.key for r in summary.failed] == [key], summary.lines()

    # 3. the server recovers: a re-run fetches just that object, and the tree verifies clean
    chaos.clear()
    healed = fetch(out2, **chaos_bucket.kwargs(client=dask_threads))
    assert healed.ok and healed.downloaded == 1, healed.lines()
    rows = assert_no_silent_damage(out2, chaos_bucket)
    assert all(r.status == "ok" for r in rows.values())
    assert verify(out2, client=dask_threads, progress=False).clean


def test_slowdown_burst_on_every_request_then_recovery(chaos_bucket, chaos, dask_threads, tmp_path):
    """A burst of 503 SlowDown on every request (listing, HEAD, GET) of the run: the whole fetch still ends ok."""
    burst = chaos.add("error", match="", method="*", times=6, status=503, code="SlowDown")
    summary = fetch(tmp_path / "raw", **chaos_bucket.kwargs(client=dask_threads, retries=8))
    assert burst.hits == 6
    assert summary.ok, summary.lines()
    assert_no_silent_damage(tmp_path / "raw", chaos_bucket)
