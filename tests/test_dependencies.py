"""Every third-party module that ``ava256/`` imports is declared in pyproject.toml: the imports (parsed with
``ast``) mapped to distributions by the installed metadata, compared with the dependencies and extras."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a ``try`` whose handlers catch ImportError (or ModuleNotFoundError), or a
    ``contextlib.suppress(ImportError)`` block."""
    names = {"ImportError", "ModuleNotFoundError"}
    p = parents.get(node)
    while p is not None:
        if isinstance(p, ast.Try):
            for h in p.handlers:
                types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
                if any(isinstance(t, ast.Name) and t.id in names for t in types):
                    return True
        if isinstance(p, ast.With):
            for item in p.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and any(
                    isinstance(a, ast.Name) and a.id in names for a in call.args
                ):
                    return True
        p = parents.get(p)
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        p = parents.get(p)
    return False


def package_imports() -> list[tuple[str, str, bool, bool]]:
    """(top-level module, file:line, guarded by ImportError, at module level) of every absolute import of a
    module outside the standard library and ava256."""
    found = []
    for path in sorted((ROOT / "ava256").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                if top in sys.stdlib_module_names or top in ("ava256", "__future__"):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.append((top, where, _guarded(node, parents), not _in_function(node, parents)))
    return found


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_req_name(r) for r in project["dependencies"]}
    extras = {k: {_req_name(r) for r in v} - {"ava256"} for k, v in project["optional-dependencies"].items()}
    return core, extras


def test_every_imported_module_is_declared_in_pyproject():
    dists = packages_distributions()
    core, extras = declared()
    anywhere = core.union(*extras.values())
    imports = package_imports()
    # the parser works
    assert {"numpy", "torch", "zarr", "click", "google_crc32c"} <= {m for m, *_ in imports}
    missing, not_core = [], []
    for mod, where, guarded, module_level in imports:
        names = {_norm(d) for d in dists.get(mod, [])}
        if not names and guarded and any(_norm(mod) in e for e in extras.values()):
            continue  # an accelerator the test install cannot hold (torchvision beside the CPU torch): an extra
        assert names, f"{where}: no installed distribution provides {mod!r} (is the test install complete?)"
        if not names & anywhere:
            missing.append(f"{where}: {mod} ({'/'.join(sorted(names))})")
        elif module_level and not guarded and not names & core:
            # imported when the module loads: an extra is not enough, a plain install would fail to import it
            not_core.append(f"{where}: {mod} ({'/'.join(sorted(names))})")
    assert not missing, "imported but not declared in pyproject.toml:\n" + "\n".join(missing)
    assert not not_core, "imported at module level but only in an extra:\n" + "\n".join(not_core)


def test_constraints_pin_every_declared_distribution():
    core, extras = declared()
    pinned = {
        _req_name(line)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    # torch (and torchvision, its GPU companion) come with the build matching the machine, not from constraints
    unpinned = sorted(core.union(*extras.values()) - pinned - {"torch", "torchvision"})
    assert not unpinned, f"declared but not pinned in constraints.txt: {unpinned}"


def test_package_data_globs_name_existing_files():
    """Each ``[tool.setuptools.package-data]`` entry names a package folder and matches at least one file."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        folder = ROOT / package.replace(".", "/")
        assert (folder / "__init__.py").is_file(), f"package-data names {package}, which is not a package"
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"package-data {package}: {pattern} matches no file"
