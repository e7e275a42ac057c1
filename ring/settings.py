"""Config files: a TOML table into a frozen dataclass, strictly.  Unknown keys and
values of the wrong type raise ``ConfigError`` naming the key (``book.ladder_widht:
unknown key``).  Used by the engine's config (``obpipe.config``) and the story
service's (``obpipe.story.config``)."""
from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A bad config: the message names the key."""


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        (elem, _) = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, elem) for v in value)
    if origin is list:
        (elem,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, elem) for v in value)
    if origin is dict:
        k, v = typing.get_args(hint)
        return isinstance(value, dict) and all(_type_ok(a, k) and _type_ok(b, v) for a, b in value.items())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def build_section(cls, table: dict, where: str):
    """A ``cls`` dataclass from a TOML table (nested dataclasses from nested tables);
    ``where`` prefixes the key names in errors."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_section(hint, value, path)
            continue
        if not _type_ok(value, hint):
            raise ConfigError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
        if typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def read_toml(p: Path) -> dict:
    """A TOML file as a table; ``ConfigError`` when it is missing or not TOML."""
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {p} not found") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e


def ago_ns(text: str, now_ns: int | None = None) -> int | None:
    """UTC epoch ns of an age before now: ``30s``, ``10m``, ``2h``, ``1d`` (a number, maybe
    with a fraction, and one of s, m, h, d); None if ``text`` is not one."""
    import time

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    if not t or t[-1] not in units or not t[:-1].replace(".", "", 1).isdigit():
        return None
    return (time.time_ns() if now_ns is None else now_ns) - int(float(t[:-1]) * units[t[-1]] * 1e9)
