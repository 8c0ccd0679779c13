"""Run configuration: defaults in code, a YAML file of deltas, ``key.sub=value`` overrides.

No global state: :func:`load_config` returns a fresh nested ``dict``. Overrides are parsed as
YAML scalars (``adapt.lr=1e-5``, ``data.set_id=A``, ``adapt.amp=null``) and must name keys that
exist in the defaults; a wrong key or a value of the wrong type is an error naming it.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .data import UserError, repo_path

__all__ = ["load_config", "merge", "apply_overrides", "dump_config", "expand_env", "for_set", "ConfigKeyError",
           "ConfigTypeError", "ConfigValueError", "config_help", "key_meaning", "dataclass_meanings"]


class ConfigKeyError(UserError, KeyError):
    """An unknown config key (or a missing environment variable)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(UserError, TypeError):
    """A config value of the wrong type."""


class ConfigValueError(UserError, ValueError):
    """A malformed override or config file."""

_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(value: Any) -> Any:
    """Expand ``${NAME}`` / ``${NAME:-default}`` in every string of a nested config."""
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(1) in os.environ:
                return os.environ[m.group(1)]
            if m.group(2) is None:
                raise ConfigKeyError(f"config value '{value}' needs the environment variable {m.group(1)}")
            return m.group(2)
        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return value


def _unknown(key: str, valid: list | None, why: str = "") -> ConfigKeyError:
    return ConfigKeyError(f"unknown config key '{key}'" + (f" ({why})" if why else "")
                          + (f"; valid keys here: {valid}" if valid is not None else ""))


def merge(base: Mapping[str, Any], delta: Mapping[str, Any], path: str = "", strict: bool = True) -> dict:
    """Deep-merge ``delta`` into a copy of ``base``; unknown keys raise ``KeyError`` when ``strict``."""
    out = copy.deepcopy(dict(base))
    for k, v in delta.items():
        key = f"{path}{k}"
        if k not in out:
            if strict:
                raise _unknown(key, sorted(out))
            out[k] = copy.deepcopy(v)
        elif isinstance(out[k], dict) and isinstance(v, Mapping) and (k == "options" or k == "per_set"):
            out[k] = {**out[k], **copy.deepcopy(dict(v))}   # free-form options: a union, later keys win
        elif isinstance(out[k], dict) and isinstance(v, Mapping):
            out[k] = merge(out[k], v, key + ".", strict)
        else:
            out[k] = _check_type(key, out[k], copy.deepcopy(v))
    return out


def _check_type(key: str, old: Any, new: Any) -> Any:
    if old is None or new is None or isinstance(old, (dict, list)):
        return new
    if isinstance(old, bool) != isinstance(new, bool):
        raise ConfigTypeError(f"config '{key}' expects {type(old).__name__}, got {new!r}")
    if isinstance(old, float) and isinstance(new, (int, str)) and not isinstance(new, bool):
        try:
            return float(new)   # YAML 1.1 reads "5e-3" as a string
        except ValueError:
            pass
    if isinstance(old, (int, float, str)) and not isinstance(new, type(old)):
        raise ConfigTypeError(f"config '{key}' expects {type(old).__name__}, got {new!r}")
    return new


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigValueError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        node, parts = cfg, key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise _unknown(key, None, f"no section '{p}'")
            node = node[p]
        last = parts[-1]
        if last not in node and not parts[-2:-1] == ["options"]:
            raise _unknown(key, sorted(node))
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            # a list / mapping key, or text that opens or closes like one, was meant as YAML: say so; other text
            # that YAML cannot read (a template such as "{} here") is a plain string
            if isinstance(node.get(last), (dict, list)) or raw.lstrip()[:1] in "[" or raw.rstrip()[-1:] in "]}":
                raise ConfigValueError(f"override '{item}': the value is not valid YAML; quote it to pass a "
                                       "string (key='\"...\"')") from None
            value = raw
        if isinstance(node.get(last), (dict, list)) and isinstance(value, str):
            raise ConfigTypeError(f"config '{key}' is a {type(node[last]).__name__}, got the text {value!r}")
        node[last] = _check_type(key, node.get(last), value)
    return cfg


def load_config(defaults: Mapping[str, Any], path: str | Path | None = None,
                overrides: Sequence[str] = ()) -> dict:
    """``defaults`` <- YAML file (may say ``base: other.yaml``, relative to it) <- overrides.

    String values may use ``${NAME:-default}`` environment variables (expanded last).
    """
    return _load_config(defaults, path, overrides)


def _load_config(defaults: Mapping[str, Any], path: str | Path | None, overrides: Sequence[str]) -> dict:
    cfg = copy.deepcopy(dict(defaults))
    if path is not None:
        cfg = merge(cfg, _read_yaml(repo_path(path)))
    cfg = expand_env(apply_overrides(cfg, overrides))
    for pattern, delta in (cfg.get("per_set") or {}).items():   # a wrong key fails now, not at that set
        merge({k: v for k, v in cfg.items() if k != "per_set"}, delta, path=f"per_set.{pattern}.")
    return cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        from .data import MissingDataError

        raise MissingDataError(f"config file '{path}' not found (configs live under configs/<task>/)")
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("base", None)
    if base is not None:
        data = merge(_read_yaml(path.parent / base), data, strict=False)
    return data


def for_set(cfg: Mapping[str, Any], set_id: str) -> dict:
    """The config of one dataset of a multi-set run: ``data.set_id = set_id`` and every ``per_set`` entry
    whose key (an ``fnmatch`` pattern, e.g. ``"I"``, ``"[AVRK]"``, ``"??*"`` for the multi-letter
    fine-grained ids) matches ``set_id`` merged in, in file order (later entries win). The result has
    no ``per_set`` key: it holds the values that apply, so records depend only on them."""
    import fnmatch

    out = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "per_set"}
    out["data"] = {**out["data"], "set_id": set_id}
    for pattern, delta in (cfg.get("per_set") or {}).items():
        if fnmatch.fnmatchcase(set_id, str(pattern)):
            out = merge(out, delta, path=f"per_set.{pattern}.")
    return out


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dict(cfg), sort_keys=False))


def dataclass_meanings(cls: type, prefix: str) -> dict[str, str]:
    """``{prefix.field: one-line meaning}`` from a dataclass docstring's ``Attributes:`` (or ``Args:``) section,
    whose entries read ``name[, name...]: meaning`` (several on one line separated by ``; ``)."""
    import inspect
    import re
    from dataclasses import fields

    doc = inspect.getdoc(cls) or ""
    m = re.search(r"^(Attributes|Args):\n(.*?)(?:\n\S|\Z)", doc, re.S | re.M)
    entries: list[str] = []
    for line in (m.group(2) if m else "").splitlines():
        if re.match(r"^ {4}\S", line):
            entries.append(line.strip())
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    out: dict[str, str] = {}
    names = {f.name for f in fields(cls)}
    for entry in entries:
        for part in re.split(r";\s+(?=[\w, ]+:\s)", entry):
            head, _, text = part.partition(":")
            for name in (n.strip() for n in head.split(",")):
                if name in names and text.strip():
                    out[f"{prefix}.{name}"] = _one_line(text)
    return out


def _one_line(text: str, width: int = 110) -> str:
    import re

    text = re.sub(r":\w+:`([^`]*)`", r"\1", " ".join(text.replace("``", "").split()))
    first = re.split(r"(?<!e\.g)(?<!i\.e)(?<!\beq)(?<!\bvs)\.\s", text)[0].rstrip(".")
    return first if len(first) <= width else first[:width - 3].rsplit(" ", 1)[0] + "..."


def _flat_keys(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out += _flat_keys(v, key)
        else:
            out.append((key, v))
    return out


def key_meaning(key: str, meanings: Mapping[str, str]) -> str:
    """The meaning of ``key``: an exact entry of ``meanings``, else the first ``fnmatch`` pattern that matches it."""
    import fnmatch

    if key in meanings:
        return meanings[key]
    return next((v for pattern, v in meanings.items() if "*" in pattern and fnmatch.fnmatchcase(key, pattern)), "")


def config_help(defaults: Mapping[str, Any], meanings: Mapping[str, str] | None = None) -> str:
    """One line per config key: ``key = default  meaning`` (see :func:`key_meaning`)."""
    rows = []
    for key, value in _flat_keys(defaults):
        shown = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip() \
            if not isinstance(value, str) else (value if value.isprintable() and value.strip() == value and value
                                                else json.dumps(value))
        if len(shown) > 48:
            shown = shown[:45] + "..."
        rows.append(f"  {key} = {shown}  {key_meaning(key, meanings or {})}".rstrip())
    return "\n".join(rows) + "\n"
