"""The documentation stays short, true to the repository and free of run histories: README's length, every
path README, docs/*.md and the code's comments name exists, README's install and test commands are the ones
CI runs."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS]

#: Files another change is rewriting; their comments still cite files that are not in the repository or carry
#: run histories. Remove each entry once its file is fixed; the list should end up empty.
PENDING_COMMENT_FIXES: set[str] = set()

# A repository path: starts at a top-level folder or file of the repository.
_TOP = r"(?:ava256|tests|benchmarks|docs|\.ci)/[\w./-]*|(?:constraints\.txt|pyproject\.toml|Makefile)\b"
_REPO_PATH = re.compile(rf"(?<![\w./~:-])(?:{_TOP})")
# The name of a markdown file anywhere in a text, with or without its folders.
_MD_NAME = re.compile(r"(?<![\w.-])/?(?:[\w.-]+/)*[\w-]+\.md\b")
_MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Run-history phrases that must not appear in the docs.
_HISTORY = re.compile(
    r"\bstop \d+\b|previous default|before this (?:work|change|stop)|earlier (?:VM|run)s?\b", re.I
)


def _exists(token: str) -> bool:
    path = token.split("::")[0].split("#")[0].rstrip(".,;:)")
    return (ROOT / path.lstrip("/")).exists()


def _anchors(md: Path) -> set[str]:
    """GitHub's anchors of the headings of a markdown file."""
    heads = re.findall(r"^#+\s+(.+)$", md.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def _repo_paths(text: str) -> set[str]:
    return {m.group(0).rstrip(".,;:") for m in _REPO_PATH.finditer(text)}


def test_readme_is_at_most_200_lines():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail into docs/"


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: p.name)
def test_markdown_links_and_paths_exist(md):
    text = md.read_text()
    missing = []
    for target in _MD_LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = md.parent / file if file else md
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in _anchors(dest)):
            missing.append(target)
    missing += sorted(p for p in _repo_paths(text) if not _exists(p))
    names = set(_MD_NAME.findall(text))
    missing += sorted(m for m in names if not _exists(m) and not (md.parent / m).exists())
    assert not missing, f"{md.name} names paths that are not in the repository: {missing}"


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: p.name)
def test_docs_carry_no_run_history(md):
    hits = [line for line in md.read_text().splitlines() if _HISTORY.search(line)]
    assert not hits, f"{md.name}: run history belongs in git, not in docs: {hits}"


def _comments_and_strings(path: Path):
    """(line, text) of every comment and string literal of a Python file."""
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            yield tok.start[0], tok.string


def test_code_comments_name_only_files_in_the_repository():
    files = [p for top in ("ava256", "benchmarks", "tests") for p in sorted((ROOT / top).rglob("*.py"))]
    assert len(files) > 50
    missing = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in PENDING_COMMENT_FIXES:
            continue
        for line, text in _comments_and_strings(path):
            names = set(_MD_NAME.findall(text)) | {p for p in _repo_paths(text) if p.startswith("docs/")}
            missing += [f"{rel}:{line}: {n}" for n in sorted(names) if not _exists(n)]
    listing = "\n".join(missing)
    assert not missing, f"comments or docstrings name files that are not in the repository:\n{listing}"


def test_pending_comment_fixes_are_real_files():
    assert all((ROOT / p).is_file() for p in PENDING_COMMENT_FIXES), "drop entries for files that are gone"


def _ci_command(marker: str) -> str:
    """The first command line after ``marker`` in .ci/run that is not a comment or a variable assignment."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if marker in line)
    for line in lines[start + 1 :]:
        s = line.strip()
        if s and not s.startswith("#") and not re.match(r"\w+=", s):
            return s
    raise AssertionError(f"no command after {marker!r} in .ci/run")


def test_readme_install_and_test_commands_are_what_ci_runs():
    install = _ci_command("README's install command, verbatim")
    test = _ci_command("README's test command, verbatim")
    assert install.startswith("pip install ") and test.startswith("pytest")
    lines = [line.strip() for line in README.read_text().splitlines()]
    assert f"{install} && {test}" in lines, f"README must show `{install} && {test}` as .ci/run runs it"
