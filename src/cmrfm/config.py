"""Typed dataclass configs merged from YAML files and ``key=value`` command-line overrides.

Every hyper-parameter is a dataclass field. A run's config is built as::

    defaults (the dataclass) <- YAML file(s) in order <- key=value overrides

Nested dataclasses are addressed with dots (``optim.lr=3e-4``). Unknown keys are errors that
list the valid keys, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cmrfm.errors import ConfigError

C = TypeVar("C")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so ``amp: off`` stays the string "off"."""


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: no arbitrary objects


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Converts ``value`` (from YAML or a CLI string) to ``annotation``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation}")
    if origin is typing.Literal:
        for arg in args:
            try:
                if _coerce(value, type(arg), key) == arg:
                    return arg
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith(("[", "(")):
                value = _load(text.replace("(", "[").replace(")", "]"))
            else:
                value = [v for v in text.split(",") if v != ""]
        if not isinstance(value, list | tuple):
            value = [value]
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], key) for v in value)
            if args and len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args or [Any] * len(value), strict=True))
        inner = args[0] if args else Any
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        if isinstance(value, str):
            value = _load(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, Mapping):
            return merge_into(annotation(), value, prefix=f"{key}.")
        raise ConfigError(f"{key}: expected a mapping of sub-keys, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: {value!r} is not a boolean")
    if annotation in (int, float, str):
        try:
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if annotation is int and isinstance(value, str):
                return int(float(value)) if float(value).is_integer() else int(value)
            return annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: {value!r} is not a valid {annotation.__name__}") from None
    if isinstance(annotation, type):
        try:
            return annotation(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key}: {value!r} is not a valid {annotation.__name__} ({err})") from None
    return value


def merge_into(config: C, values: Mapping[str, Any], prefix: str = "") -> C:
    """Returns a copy of dataclass ``config`` with ``values`` (possibly nested) merged in.

    Nested dataclasses and plain dict fields (e.g. ``task_options``) are merged key by key, so
    ``task_options.b=2`` on the command line keeps the ``task_options.a`` a YAML file set.

    Raises:
        ConfigError: On a key the dataclass does not have, or a value of the wrong type.
    """
    types_by_name = _field_types(type(config))
    updates: dict[str, Any] = {}
    for name, value in values.items():
        if name not in types_by_name:
            valid = ", ".join(prefix + k for k in types_by_name)
            raise ConfigError(f"unknown config key {prefix + name!r}; valid keys: {valid}")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            updates[name] = merge_into(current, value, prefix=f"{prefix}{name}.")
        elif isinstance(current, Mapping) and isinstance(value, Mapping):
            updates[name] = _coerce(_deep_merge(dict(current), value), types_by_name[name], prefix + name)
        else:
            updates[name] = _coerce(value, types_by_name[name], prefix + name)
    return dataclasses.replace(config, **updates)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """Turns ``["optim.lr=1e-3", "model.depth=6"]`` into a nested dict of YAML-parsed values."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = _load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = _load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("_base_", None)
    if base is not None:
        parent = load_yaml(path.parent / base)
        data = _deep_merge(parent, data)
    return data


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def build_config(
    cls: type[C],
    yaml_paths: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    base: C | None = None,
) -> C:
    """Builds a config: dataclass defaults (or ``base``), then YAML files, then overrides."""
    config = base if base is not None else cls()
    for path in yaml_paths:
        config = merge_into(config, load_yaml(path))
    return merge_into(config, parse_overrides(overrides))


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a (nested) dataclass config."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(config)


def save_yaml(config: Any, path: str | Path) -> None:
    """Writes a config as YAML (the record of exactly what a run used)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Attributes:`` sections of ``cls`` and its bases (Google style)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__dict__.get("__doc__") or ""
        lines = text.expandtabs().splitlines()
        try:
            start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
        except StopIteration:
            continue
        name, indent = None, None
        for line in lines[start + 1 :]:
            if not line.strip():
                continue
            depth = len(line) - len(line.lstrip())
            if indent is None:
                indent = depth
            if depth < indent:
                break
            match = re.match(r"(\w+)(?: \(.*?\))?:\s*(.*)", line.strip())
            if depth == indent and match:
                name = match.group(1)
                docs[name] = match.group(2)
            elif name is not None:
                docs[name] = f"{docs[name]} {line.strip()}".strip()
    return docs


def describe_fields(config: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every settable key of a config dataclass: ``(dotted key, default, description)``.

    Args:
        config: A config dataclass (its defaults are shown) or an instance (its values).
        prefix: Prepended to every key (e.g. ``"task_options."``).

    Nested dataclass fields are expanded with the values their parent gives them
    (``optim.lr``); descriptions come from the ``Attributes:`` docstring sections, empty where a
    field has none.
    """
    instance = config() if isinstance(config, type) else config
    docs = _attribute_docs(type(instance))
    rows: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(value, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", value, docs.get(f.name, "")))
    return rows
