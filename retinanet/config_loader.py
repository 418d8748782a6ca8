"""Reading configs: YAML files (with ``_base_`` chains) and ``key.sub=value`` overrides, type-checked
into the dataclasses of ``config``; and writing them back as plain dicts and YAML.

Every value is checked against its annotation (a ``Literal`` lists the allowed names), and an unknown
key is an error that names the key and suggests the closest valid one. Configs stored by older
versions are upgraded (``upgrade``). ``load_config`` is the one way in: a file, a Config or a
checkpoint's stored config, with overrides, merged, checked and validated in one pass.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml

from .config import Config, ConfigError, validate

log = logging.getLogger(__name__)

# YAML 1.1 reads "1e-3" (no dot) as a string; a float field accepts any such number.
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and returns it in canonical form."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value is None and "" in allowed:  # an empty YAML value
            return ""
        if isinstance(value, str) and value in allowed:
            return value
        close = difflib.get_close_matches(str(value), [a for a in allowed if a], n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}{hint}")
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _merge(tp(), value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _merge(obj: Any, updates: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for name, value in updates.items():
        if name not in hints:
            close = difflib.get_close_matches(str(name), list(hints), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(hints)}"
            raise ConfigError(f"unknown config key '{prefix}{name}'{hint}")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name}: expected a mapping, got {value!r}")
            changes[name] = _merge(current, value, f"{prefix}{name}.")
        else:
            changes[name] = _coerce(value, hints[name], f"{prefix}{name}")
    return dataclasses.replace(obj, **changes)


def upgrade(data: dict) -> dict:
    """A copy of a nested config mapping with the keys of older versions rewritten.

    * ``train.sync_bn`` (removed): ``model.backbone.norm=syncbn`` is the one switch now.
    * ``model.loss.gamma_start`` (removed): ``gamma`` is the start of every gamma schedule.
    * step schedule: ``gamma_values`` used to hold the value before the first step too.
    """
    data = copy.deepcopy(data)
    train, model = data.get("train"), data.get("model")
    if isinstance(train, dict) and "sync_bn" in train:
        sync = train.pop("sync_bn")
        if sync and isinstance(model, dict) and isinstance(model.get("backbone"), dict):
            if model["backbone"].get("norm") == "bn":
                model["backbone"]["norm"] = "syncbn"
        log.warning("config key train.sync_bn is obsolete: set model.backbone.norm=syncbn instead")
    loss = model.get("loss") if isinstance(model, dict) else None
    if isinstance(loss, dict):
        schedule = loss.get("gamma_schedule", "constant")
        if "gamma_start" in loss:
            start = loss.pop("gamma_start")
            if schedule in ("linear", "cosine") or "gamma" not in loss:
                loss["gamma"] = start
            log.warning("config key model.loss.gamma_start is obsolete: model.loss.gamma is the start of every "
                        "gamma schedule")
        steps, values = loss.get("gamma_steps") or [], loss.get("gamma_values") or []
        if schedule == "step" and len(values) == len(steps) + 1:
            loss["gamma"], loss["gamma_values"] = values[0], list(values[1:])
    return data


def parse_overrides(overrides: list[str]) -> dict:
    """Turns ``["model.num_classes=3", "solver.steps=[10,20]"]`` into a nested mapping."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': cannot parse value: {e}") from None
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return tree


def load_config(source: Union[str, Path, Config, dict, None] = None,
                overrides: Optional[Sequence[str]] = None) -> Config:
    """Defaults, then ``source`` (a YAML file with its ``_base_`` chain, a Config, or a stored mapping
    such as a checkpoint's ``config``), then ``key=value`` overrides: merged into one mapping that is
    upgraded, type-checked and validated once."""
    if isinstance(source, Config):
        data = to_dict(source)
    elif isinstance(source, (str, Path)):
        data = _read_yaml_chain(Path(source)) if source else {}
    else:
        data = copy.deepcopy(source) if source is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping at the top level, got {type(data).__name__}")
    if overrides:
        _deep_update(data, parse_overrides(list(overrides)))
    return validate(_merge(Config(), upgrade(data)))


def _read_yaml_chain(path: Path, seen: tuple = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: _base_ chain loops")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("_base_", None)
    if base:
        merged = _read_yaml_chain(path.parent / base, seen + (path.resolve(),))
        _deep_update(merged, data)
        return merged
    return data


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def to_dict(cfg: Any) -> Any:
    """Plain nested dict/list form, as written to YAML and stored in checkpoints."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: Config, path: Optional[Union[str, Path]] = None) -> str:
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
