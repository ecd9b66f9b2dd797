import os
import stat

import pyarrow as pa
import pytest

from ava256.atomic import atomic_write, atomic_write_bytes, atomic_write_text
from ava256.manifests.atomic import write_table_atomic


def test_writes_whole_file_and_creates_parents(tmp_path):
    p = atomic_write_bytes(tmp_path / "a" / "b" / "x.bin", b"hello")
    assert p.read_bytes() == b"hello"
    atomic_write_text(p, "replaced")
    assert p.read_text() == "replaced"
    assert [q.name for q in p.parent.iterdir()] == ["x.bin"]  # no temp file left behind


def test_an_error_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "m.parquet"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(p) as f:
            f.write(b"half a new fi")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["m.parquet"]


def test_text_mode_and_bad_mode(tmp_path):
    with atomic_write(tmp_path / "t.txt", "w", fsync=False) as f:
        f.write("line\n")
    assert (tmp_path / "t.txt").read_text() == "line\n"
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "t.txt", "a"):
            pass


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_get_the_mode_the_umask_gives(tmp_path, umask):
    p = atomic_write_bytes(tmp_path / "x.bin", b"1")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    write_table_atomic(pa.table({"a": [1]}), tmp_path / "m.parquet")
    assert stat.S_IMODE((tmp_path / "m.parquet").stat().st_mode) == 0o666 & ~umask
    atomic_write_text(p, "replaced")  # replacing a file gives the new file the umask's mode too
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_writes_at_an_fsspec_url_appear_whole_or_not_at_all():
    """At a URL (``memory://`` here; ``s3://`` in tests/pipeline/test_s3_store.py) the data is uploaded in one
    put on a clean exit; an error inside the block uploads nothing and leaves no local temp file behind."""
    import tempfile

    import fsspec

    fs = fsspec.filesystem("memory")
    url = "memory://atomic-test/dir/a.bin"
    assert atomic_write_bytes(url, b"one") == url and fs.cat_file("/atomic-test/dir/a.bin") == b"one"
    atomic_write_text("memory://atomic-test/dir/t.txt", "tëxt")
    assert fs.cat_file("/atomic-test/dir/t.txt") == "tëxt".encode()
    staged = lambda: {n for n in os.listdir(tempfile.gettempdir()) if n.endswith(".upload")}  # noqa: E731
    before = staged()
    with pytest.raises(RuntimeError):
        with atomic_write(url, "wb") as f:
            f.write(b"two, half")
            raise RuntimeError("crash mid-write")
    assert fs.cat_file("/atomic-test/dir/a.bin") == b"one"  # the old object, untouched
    with atomic_write("memory://atomic-test/dir/new.bin") as f:
        f.write(b"x" * 1000)
        assert not fs.exists("/atomic-test/dir/new.bin")  # nothing visible before the block ends
    assert fs.cat_file("/atomic-test/dir/new.bin") == b"x" * 1000
    assert staged() - before == set()
