"""The check settings: the config file found (--config, normcli.toml, pyproject.toml), its TOML
read and validated key by key, and command-line limits laid over it."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InputError, UsageError
from ..readers.files import open_regular
from ..results import RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

FLAG_RULES = ("nonfinite", "require-same-tensors", "unread")
LIMIT_KEYS = [k for k in RULES if k not in FLAG_RULES]
TENSOR_KEYS = [k for k in LIMIT_KEYS if RULES[k].scope in ("tensor", "both")]


@dataclass(frozen=True)
class Scope:
    """Tensor limits for the tensors whose names match any of `tensors` (globs)."""

    tensors: tuple[str, ...]
    limits: Mapping[str, float]


@dataclass(frozen=True)
class CheckConfig:
    limits: Mapping[str, float] = field(default_factory=dict)
    scopes: tuple[Scope, ...] = ()
    allow_nonfinite: bool = False
    require_same_tensors: bool = False
    source: str | None = None  # the config file the settings came from, if any
    allow_unread: bool = False
    # the file's `baseline`, resolved against the file's folder
    baseline: str | None = None
    # the keys set on the command line, not by the file
    from_command_line: frozenset[str] = frozenset()

    def merged(self, overrides: Mapping[str, Any]) -> CheckConfig:
        """Command-line values (None: not given) take precedence over the file's."""
        given = {k: v for k, v in overrides.items() if k in LIMIT_KEYS and v is not None}
        CheckConfig(given).validate()  # a bad option is the command line's fault, not the file's
        flags = {
            k
            for k in ("allow-nonfinite", "allow-unread", "require-same-tensors")
            if overrides.get(k)
        }
        return replace(
            self,
            limits={**self.limits, **given},
            allow_nonfinite="allow-nonfinite" in flags or self.allow_nonfinite,
            allow_unread="allow-unread" in flags or self.allow_unread,
            require_same_tensors="require-same-tensors" in flags or self.require_same_tensors,
            from_command_line=frozenset(given) | flags,
        )

    def without(self, keys: Sequence[str]) -> CheckConfig:
        """The same settings less the rules `keys` (from the file) that cannot be judged."""
        return replace(
            self,
            limits={k: v for k, v in self.limits.items() if k not in keys},
            scopes=tuple(
                Scope(s.tensors, {k: v for k, v in s.limits.items() if k not in keys})
                for s in self.scopes
            ),
            require_same_tensors=self.require_same_tensors and "require-same-tensors" not in keys,
        )

    def validate(self) -> None:
        where = self.source
        for scope in (Scope(("*",), self.limits), *self.scopes):
            for key, value in scope.limits.items():
                if not math.isfinite(value) or value < 0:
                    raise UsageError(f"{key} must be a finite number >= 0, not {value}", where)
                if key.endswith("l2-ratio") and value < 1:
                    raise UsageError(
                        f"{key} must be at least 1 (a band [1/R, R]), not {value}", where
                    )
                if key == "min-cosine" and value > 1:
                    raise UsageError(f"min-cosine must be at most 1, not {value}", where)

    @property
    def needs_baseline(self) -> list[str]:
        keys = [k for k in self.limits if RULES[k].needs]
        keys += [k for s in self.scopes for k in s.limits if RULES[k].needs]
        keys += ["require-same-tensors"] if self.require_same_tensors else []
        return list(dict.fromkeys(keys))


def find_config(explicit: str | None, folder: str = ".") -> tuple[dict[str, Any], str | None]:
    """The [check] settings: --config FILE, else normcli.toml, else pyproject.toml's
    [tool.normcli.check]; nothing found is an empty config."""
    if explicit is not None:
        return _table(_check_section(_read_toml(explicit), explicit), explicit), explicit
    own = os.path.join(folder, "normcli.toml")
    if os.path.isfile(own):
        return _table(_check_section(_read_toml(own), own), own), own
    project = os.path.join(folder, "pyproject.toml")
    if os.path.isfile(project):
        section = _section(_read_toml(project), ("tool", "normcli", "check"), project)
        if section is not None:
            return _table(section, project), project
    return {}, None


def _check_section(doc: dict[str, Any], path: str) -> Any:
    """In a file of normcli's own: [tool.normcli.check], else [check], else the top level."""
    section = _section(doc, ("tool", "normcli", "check"), path)
    if section is not None:
        return section
    if "check" in doc:
        beside = [k for k in doc if k not in ("check", "tool")]
        if beside:
            raise UsageError(f"key {beside[0]!r} stands outside the [check] table", path)
        return doc["check"]
    return {k: v for k, v in doc.items() if k != "tool"}


def _section(doc: dict[str, Any], keys: tuple[str, ...], path: str) -> Any:
    """doc[keys[0]][keys[1]]..., None where absent; a non-table on the way is an error."""
    node: Any = doc
    for depth, key in enumerate(keys):
        if not isinstance(node, dict):
            raise UsageError(f"{'.'.join(keys[:depth])} must be a TOML table", path)
        if key not in node:
            return None
        node = node[key]
    return node


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open_regular(path) as f:
            doc: dict[str, Any] = tomllib.load(f)
            return doc
    except InputError as e:
        raise UsageError(f"config file: {e.message}", path) from e
    except OSError as e:
        raise UsageError(f"cannot read config file: {e.strerror or e}", path) from e
    except RecursionError as e:
        raise UsageError("config file nests too deeply", path) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file is not valid TOML: {e}", path) from e


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError("the check settings must be a TOML table", path)
    return value


def parse_config(settings: Mapping[str, Any], source: str | None) -> CheckConfig:
    """Validate the settings table key by key, naming any key that is wrong."""
    limits: dict[str, float] = {}
    flags = {"allow-nonfinite": False, "allow-unread": False, "require-same-tensors": False}
    scopes: list[Scope] = []
    baseline = None
    for key, value in settings.items():
        if key == "baseline":
            if not isinstance(value, str) or not value:
                raise UsageError("baseline must be a path", source)
            folder = os.path.dirname(source) if source else ""
            baseline = os.path.normpath(os.path.join(folder, value))
        elif key in flags:
            if not isinstance(value, bool):
                raise UsageError(f"{key} must be true or false", source)
            flags[key] = value
        elif key in LIMIT_KEYS:
            limits[key] = _number(key, value, source)
        elif key == "rules":
            if not isinstance(value, list):
                raise UsageError("rules must be an array of tables ([[...rules]])", source)
            scopes += [_scope(i, rule, source) for i, rule in enumerate(value)]
        else:
            known = ", ".join(["baseline", *flags, *LIMIT_KEYS, "rules"])
            raise UsageError(f"unknown key {key!r} in the check settings (known: {known})", source)
    config = CheckConfig(
        limits,
        tuple(scopes),
        flags["allow-nonfinite"],
        flags["require-same-tensors"],
        source,
        flags["allow-unread"],
        baseline,
    )
    config.validate()
    return config


def _number(key: str, value: Any, source: str | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{key} must be a number, not {value!r}", source)
    return float(value)


def _scope(index: int, rule: Any, source: str | None) -> Scope:
    where = f"rules[{index}]"
    if not isinstance(rule, dict):
        raise UsageError(f"{where} must be a table", source)
    globs = rule.get("tensors")
    if isinstance(globs, str):
        globs = [globs]
    if not (isinstance(globs, list) and globs and all(isinstance(g, str) for g in globs)):
        raise UsageError(f"{where}.tensors must be a glob or a list of globs", source)
    limits = {}
    for key, value in rule.items():
        if key == "tensors":
            continue
        if key not in TENSOR_KEYS:
            raise UsageError(
                f"{where}: {key!r} cannot be scoped to tensors (choose from "
                f"{', '.join(TENSOR_KEYS)})",
                source,
            )
        limits[key] = _number(f"{where}.{key}", value, source)
    return Scope(tuple(globs), limits)
