import io
import re

from ava256.progress import Progress


def test_plain_lines_when_not_a_terminal_and_a_fixed_total_never_goes_back():
    out = io.StringIO()  # not a terminal: plain lines, no bar
    with Progress("repack", 4, unit="task", stream=out, interval=0) as p:
        assert p.plain
        p.skip(1)
        for _ in range(3):
            p.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5  # one per update at interval 0, one at the end
    pcts = [int(re.search(r"(\d+)/4 \((\d+)%\)", ln).group(2)) for ln in lines]
    assert pcts == sorted(pcts) and pcts[-1] == 100
    assert lines[0].startswith("repack: 1/4 (25%) 0.00 task/s")  # skipped work is not part of the rate
    assert lines[1].startswith("repack: 2/4 (50%)") and "task/s ETA" in lines[1]


def test_interval_limits_lines_and_disabled_prints_nothing():
    out = io.StringIO()
    with Progress("train", 1000, stream=out, interval=3600) as p:
        for _ in range(1000):
            p.update()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the closing line
    assert "1000/1000 (100%)" in out.getvalue()
    quiet = io.StringIO()
    with Progress("train", 10, stream=quiet, enabled=False) as p:
        p.update(10)
    assert quiet.getvalue() == ""
