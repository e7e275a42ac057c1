"""The Kafka message schema, version 1: topic names, signal kinds, ids and validation.

Design: obpipe publishes two kinds of JSON objects, both keyed by symbol so that one
symbol's messages stay in order on one partition:

- a **signal** (topic ``<prefix>.signals``): one detected condition on one book;
- a **summary** (topic ``<prefix>.summaries``): one symbol's book over one feed-time
  interval.

Raw book updates and per-message feed data never go to Kafka. The normative schema is
the JSON Schema (draft 2020-12) file next to this module, ``obpipe.v1.schema.json``;
docs/SCHEMA.md explains every field. This module holds the constants producers and
consumers share, and ``validate`` for tests and tools. jsonschema is a test-time
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

#: Value of every message's ``v`` field.
SCHEMA_VERSION = 1

#: Every signal ``kind``, in documentation order.
SIGNAL_KINDS = ("spread_widening", "imbalance", "microprice_shift", "sweep", "liquidity_withdrawal")

#: The names in a signal's ``values`` object, per kind (all required, no others allowed).
SIGNAL_VALUE_FIELDS: dict[str, tuple[str, ...]] = {
    "spread_widening": ("spread_ticks", "baseline_ticks", "ratio"),
    "imbalance": ("tob_imbalance", "depth_imbalance", "bid_depth", "ask_depth"),
    "microprice_shift": ("shift_ticks", "from_tick", "to_tick", "elapsed_ns"),
    "sweep": ("levels", "volume", "trades", "first_tick", "last_tick", "elapsed_ns"),
    "liquidity_withdrawal": ("depth_before", "depth_after", "drop_fraction", "elapsed_ns", "touch_tick"),
}

#: A symbol (ticker): what the schema's ``$defs/symbol`` pattern allows, and what the
#: engine's ``book.symbols`` may name (no markup, quotes or spaces reach a consumer).
SYMBOL_RE = r"[A-Za-z0-9._-]{1,16}"

#: One example ``values`` object per kind (valid under the schema): for tests, docs and
#: for checking story templates against a kind's fields.
EXAMPLE_VALUES: dict[str, dict[str, int | float]] = {
    "spread_widening": {"spread_ticks": 6, "baseline_ticks": 2.1, "ratio": 2.857},
    "imbalance": {"tob_imbalance": 0.62, "depth_imbalance": 0.4, "bid_depth": 1200, "ask_depth": 514},
    "microprice_shift": {"shift_ticks": -3.5, "from_tick": 22384.5, "to_tick": 22381.0, "elapsed_ns": 12_000_000},
    "sweep": {"levels": 4, "volume": 1200, "trades": 5, "first_tick": 22383, "last_tick": 22386,
              "elapsed_ns": 2_100_000},
    "liquidity_withdrawal": {"depth_before": 3000, "depth_after": 900, "drop_fraction": 0.7,
                             "elapsed_ns": 50_000_000, "touch_tick": 22381},
}

#: The JSON Schema file describing version ``SCHEMA_VERSION``.
SCHEMA_PATH = Path(__file__).with_name(f"obpipe.v{SCHEMA_VERSION}.schema.json")

assert set(SIGNAL_VALUE_FIELDS) == set(SIGNAL_KINDS)


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
