"""One exit-code convention across commands: usage errors exit 2, in one line naming the key or path, with no
traceback, and a failed command creates nothing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ava256.cli import COMMAND_ORDER, cli


def _tree(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "args, code, named",
    [
        (["repack", "{tmp}/no-raw", "{tmp}/store"], 2, "no-raw"),
        (["split", "{tmp}/no-store", "--protocol", "free-face"], 2, "no-store"),
        (["split", "{tmp}", "--protocol", "nope"], 2, "nope"),
        (["verify", "{tmp}/no-raw"], 2, "no-raw"),
        (["info", "{tmp}/no-store"], 2, "no-store"),
        (["fetch", "{tmp}/raw", "--size", "5TB"], 2, "5TB"),
        (["fetch", "{tmp}/raw", "--source", "{tmp}/no-bucket", "-n", "1"], 2, "no-bucket"),
        (["train", "{tmp}", "--split", "s", "--config", "tiny", "--train.iters=abc"], 2, "train.iters"),
        (["train", "{tmp}", "--split", "s", "--config", "tiny", "--train.lrr=1"], 2, "lrr"),
        (["train", "{tmp}", "--split", "s", "--config", "{tmp}/no.yaml"], 2, "no.yaml"),
        (["train", "{tmp}", "--split", "s", "--config", "tiny", "--out", "{tmp}/run"], 1, "split 's'"),
        (["render", "{tmp}/no-ckpt", "{tmp}", "--out", "{tmp}/r"], 2, "no-ckpt"),
        (["repack", "{tmp}", "{tmp}/store", "--codec", "zip"], 2, "zip"),
    ],
)
def test_mistakes_exit_by_the_convention_in_one_line_and_create_nothing(tmp_path, args, code, named):
    args = [a.format(tmp=tmp_path) for a in args]
    before = _tree(tmp_path)
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and named in lines[0], r.stderr
    assert "Traceback" not in r.output
    assert _tree(tmp_path) == before  # nothing created


def test_help_lists_commands_in_pipeline_order():
    out = CliRunner().invoke(cli, ["--help"]).output
    listed = [ln.split()[0] for ln in out.split("Commands:")[1].strip().splitlines()]
    assert listed == list(COMMAND_ORDER)
