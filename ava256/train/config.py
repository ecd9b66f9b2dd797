"""Training configuration: packaged YAML files plus dotted ``--section.key=value`` overrides."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

CONFIG_NAMES = ("tiny", "reference")


class ConfigError(ValueError):
    """A config file or override is wrong: an unknown key, a value of the wrong type, bad syntax."""


def load_config(path_or_name: str | Path | None = None) -> dict[str, Any]:
    """A config dict from a YAML file, or a packaged config by name (``tiny``, ``reference``; default
    ``reference``). Every file is read on top of the packaged ``reference.yaml``, so a user file only needs
    the keys it changes."""
    base = yaml.safe_load(resources.files("ava256.train").joinpath("configs/reference.yaml").read_text())
    if path_or_name is None or str(path_or_name) == "reference":
        return base
    if str(path_or_name) in CONFIG_NAMES:
        text = resources.files("ava256.train").joinpath(f"configs/{path_or_name}.yaml").read_text()
    else:
        p = Path(path_or_name)
        if not p.is_file():
            raise FileNotFoundError(f"config {p} not found (or use one of {', '.join(CONFIG_NAMES)})")
        text = p.read_text()
    user = yaml.safe_load(text) or {}
    if not isinstance(user, dict):
        raise ConfigError(f"config {path_or_name}: top level must be a mapping")
    return merge(base, user, where=str(path_or_name))


def merge(base: dict[str, Any], update: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """Recursive merge; keys unknown to ``base`` are an error (catches typos)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if k not in out:
            raise ConfigError(f"{where}: unknown key {k!r} (known: {', '.join(sorted(out))})")
        if isinstance(out[k], dict) and isinstance(v, dict):
            out[k] = merge(out[k], v, where=f"{where}.{k}")
        elif isinstance(out[k], dict):
            raise ConfigError(f"{where}.{k} is a section, not a value (use --{k}.KEY=VALUE)")
        else:
            out[k] = _typed(out[k], v, f"{where}.{k}")
    return out


def _typed(default: Any, value: Any, key: str) -> Any:
    """``value`` checked against the type of the key's default (ints stay ints, floats take ints, bools are
    bools); a default of None takes anything."""
    if default is None:
        return value
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{key.removeprefix('override.')}: expected {kind.__name__}, got {value!r}")
    return value


def parse_overrides(args: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["--train.lr=1e-4", "--data.batch_size", "8"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        a = items[i]
        if not a.startswith("--") or len(a) < 3:
            raise ConfigError(f"override {a!r}: expected --section.key=value")
        key, eq, val = a[2:].partition("=")
        if not eq:
            if i + 1 >= len(items):
                raise ConfigError(f"override {a!r} has no value")
            i += 1
            val = items[i]
        if "." not in key:
            raise ConfigError(f"override {a!r}: expected --section.key=value")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _scalar(val)
        i += 1
    return out


def _scalar(text: str) -> Any:
    """A YAML scalar/list, with numbers like ``1e-4`` (a string to YAML 1.1) read as floats."""
    if text == "":
        return ""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(cfg: dict[str, Any], args: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``cfg`` with the dotted overrides applied (unknown keys are an error)."""
    return merge(cfg, parse_overrides(args), where="override")
