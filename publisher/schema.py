"""The Kafka message schema, version 1: topic names, signal kinds, ids and validation.

Design: obpipe publishes two kinds of JSON objects, both keyed by symbol so that one
symbol's messages stay in order on one partition:

- a **signal** (topic ``<prefix>.signals``): one detected condition on one book;
- a **summary** (topic ``<prefix>.summaries``): one symbol's book over one feed-time
  interval.

Raw book updates and per-message feed data never go to Kafka. The normative schema is
the JSON Schema (draft 2020-12) file next to this module, ``obpipe.v1.schema.json``;
docs/SCHEMA.md explains every field. This module holds the constants producers and
consumers share, and ``validate`` for tests and tools. The signal kinds and each kind's
values come from the one table of value slots, ``ring.schema.SIGNAL_VALUES``, which
the analysis writes by and the encoder reads by; a test holds the schema file to it. jsonschema is a test-time
dependency only, so ``validate`` imports it lazily: importing this module never needs
it, and the publisher does not validate what it builds.

Versioning: ``v`` is bumped on any incompatible change (a field removed, renamed or
retyped, a unit changed). Every object is closed (``additionalProperties: false``), so
a new field or signal kind is a new version too. Consumers skip messages whose ``v``
they do not know.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from obpipe.ring import schema as sc

#: Value of every message's ``v`` field.
SCHEMA_VERSION = 1

#: Every signal ``kind``, in documentation order (the order of the kind codes).
SIGNAL_KINDS = tuple(sc.SIGNAL_KIND_NAMES[k] for k in sorted(sc.SIGNAL_KIND_NAMES))

#: The names in a signal's ``values`` object, per kind (all required, no others allowed),
#: from the table of value slots (``ring.schema.SIGNAL_VALUES``).
SIGNAL_VALUE_FIELDS: dict[str, tuple[str, ...]] = {
    sc.SIGNAL_KIND_NAMES[k]: tuple(v.name for v in vals) for k, vals in sorted(sc.SIGNAL_VALUES.items())}

#: A symbol (ticker): what the schema's ``$defs/symbol`` pattern allows, and what the
#: engine's ``book.symbols`` may name (no markup, quotes or spaces reach a consumer).
SYMBOL_RE = r"[A-Za-z0-9._-]{1,16}"

#: One example ``values`` object per kind (valid under the schema): for tests, docs and
#: for checking story templates against a kind's fields.  From the table's examples.
EXAMPLE_VALUES: dict[str, dict[str, int | float]] = {
    sc.SIGNAL_KIND_NAMES[k]: {v.name: v.example for v in vals} for k, vals in sorted(sc.SIGNAL_VALUES.items())}

#: The JSON Schema of a value of each type (``ring.schema.VT_*``), as the schema file
#: writes it: a ``$defs`` reference or an inline number range.
VALUE_TYPE_SCHEMA: dict[str, dict[str, Any]] = {
    sc.VT_TICK: {"$ref": "#/$defs/tick"},
    sc.VT_TICK_OR_NULL: {"$ref": "#/$defs/tick_or_null"},
    sc.VT_COUNT: {"$ref": "#/$defs/count"},
    sc.VT_NS: {"$ref": "#/$defs/ns"},
    sc.VT_REAL: {"$ref": "#/$defs/real"},
    sc.VT_NONNEG: {"type": "number", "minimum": 0, "maximum": 1e18},
    sc.VT_RATIO: {"type": "number", "minimum": 0, "maximum": 1e18},
    sc.VT_UNIT: {"type": "number", "minimum": -1, "maximum": 1},
    sc.VT_FRACTION: {"type": "number", "minimum": 0, "maximum": 1},
    sc.VT_REAL_OR_NAN: {"$ref": "#/$defs/number_or_null"},
    sc.VT_UNIT_OR_NAN: {"$ref": "#/$defs/unit_or_null"},
}

#: Where each summary value (``ring.schema.SUMMARY_VALUES``) sits in a summary message.
SUMMARY_VALUE_PATHS: dict[str, tuple[str, ...]] = {
    "end_ns": ("end_ns",), "buy_volume": ("volume", "buy"), "sell_volume": ("volume", "sell"),
    "trades": ("trades",), "messages": ("messages",), "events": ("events",),
    "spread_min": ("spread_ticks", "min"), "spread_mean": ("spread_ticks", "mean"),
    "spread_max": ("spread_ticks", "max"), "tob_imbalance": ("imbalance", "tob"),
    "depth_imbalance": ("imbalance", "depth"), "mid_tick": ("mid_tick",),
}


def values_schema(kind: str) -> dict[str, Any]:
    """The ``$defs/values_<kind>`` object the table of value slots implies for ``kind``:
    closed, every value required, in publication order (the schema file must equal it)."""
    code = {n: k for k, n in sc.SIGNAL_KIND_NAMES.items()}[kind]
    vals = sc.SIGNAL_VALUES[code]
    return {"type": "object", "additionalProperties": False, "required": [v.name for v in vals],
            "properties": {v.name: VALUE_TYPE_SCHEMA[v.vtype] for v in vals}}


#: The JSON Schema file describing version ``SCHEMA_VERSION``.
SCHEMA_PATH = Path(__file__).with_name(f"obpipe.v{SCHEMA_VERSION}.schema.json")

assert set(SIGNAL_VALUE_FIELDS) == set(SIGNAL_KINDS)
assert set(SUMMARY_VALUE_PATHS) == {v.name for v in sc.SUMMARY_VALUES}
assert set(VALUE_TYPE_SCHEMA) == sc.INT_VALUE_TYPES | sc.REAL_VALUE_TYPES


class MessageInvalid(ValueError):
    """Raised by ``validate`` when a message does not follow the schema (or its ``id``
    does not follow the id rule); the message names the path and what is wrong."""


def topic_names(prefix: str = "obpipe") -> tuple[str, str]:
    """The (signals, summaries) topic names for a prefix: ``obpipe.signals``, ``obpipe.summaries``."""
    return f"{prefix}.signals", f"{prefix}.summaries"


#: Kinds measured on each side independently: one message can fire both sides (an
#: uncrossing add empties the other side too), so their ids carry the side.
PER_SIDE_KINDS = frozenset({"liquidity_withdrawal"})


def signal_id(symbol: str, seq: int, kind: str, side: str | None = None) -> str:
    """A signal's id: ``f"{symbol}-{seq}-{kind}"``, where ``seq`` is the feed sequence
    number of the message that completed the condition, and ``-{side}`` after it for
    the per-side kinds (``liquidity_withdrawal``).  Deterministic, so re-deliveries and
    replays of the same input carry the same id (consumers de-duplicate on it)."""
    return f"{symbol}-{seq}-{kind}-{side}" if kind in PER_SIDE_KINDS else f"{symbol}-{seq}-{kind}"


def load_json_schema() -> dict[str, Any]:
    """The JSON Schema of version ``SCHEMA_VERSION`` (a fresh dict on every call)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _validator(msg_type: str):
    """A cached jsonschema validator for one ``$defs`` entry: errors name the field,
    where the top-level ``oneOf`` would only say "not valid under any"."""
    try:
        from jsonschema import Draft202012Validator
    except ImportError as e:  # a test/tool dependency, not a runtime one
        raise RuntimeError("obpipe.publisher.schema.validate needs the 'jsonschema' package (pip install jsonschema)") from e
    schema = load_json_schema()
    schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{msg_type}"}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(msg: Any) -> None:
    """Check one decoded message against the schema and the id rule.

    Args:
        msg: the decoded JSON value of one Kafka record.

    Raises:
        MessageInvalid: naming the first (most relevant) problem, e.g.
            ``signal message invalid at values: 'levels' is a required property``.
        RuntimeError: jsonschema is not installed.
    """
    msg_type = msg.get("type") if isinstance(msg, dict) else None
    if msg_type not in ("signal", "summary"):
        got = f"type {msg_type!r}" if isinstance(msg, dict) else f"a JSON {type(msg).__name__}"
        raise MessageInvalid(f"obpipe message invalid: expected an object of type 'signal' or 'summary', got {got}")
    validator = _validator(msg_type)  # RuntimeError first if jsonschema is missing
    from jsonschema.exceptions import best_match

    err = best_match(validator.iter_errors(msg))
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "top level"
        raise MessageInvalid(f"{msg_type} message invalid at {where}: {err.message}")
    if msg_type == "signal":
        want = signal_id(msg["symbol"], msg["seq"], msg["kind"], msg["side"])
        if msg["id"] != want:
            raise MessageInvalid(f"signal message invalid at id: {msg['id']!r} is not {want!r} "
                                 f"(symbol-seq-kind, and -side for {', '.join(sorted(PER_SIDE_KINDS))})")
