"""The v1 message schema: examples validate; wrong kind/values, missing or extra
fields, and unknown versions do not."""
from __future__ import annotations

import copy
import json
import re

import pytest
from jsonschema import Draft202012Validator

from obpipe.publisher.schema import (
    SCHEMA_VERSION,
    SIGNAL_KINDS,
    SIGNAL_VALUE_FIELDS,
    MessageInvalid,
    load_json_schema,
    signal_id,
    topic_names,
    validate,
)
from tests.helpers import REPO, make_signal, make_summary

pytestmark = [pytest.mark.timeout(60)]


def test_constants():
    assert SCHEMA_VERSION == 1
    assert topic_names() == ("obpipe.signals", "obpipe.summaries")
    assert topic_names("x") == ("x.signals", "x.summaries")
    assert signal_id("AMZN", 17, "sweep") == "AMZN-17-sweep"
    # one message can empty depth on both sides: each side is its own detection
    assert signal_id("AMZN", 17, "liquidity_withdrawal", "bid") == "AMZN-17-liquidity_withdrawal-bid"
    assert signal_id("AMZN", 17, "liquidity_withdrawal", "ask") != signal_id("AMZN", 17, "liquidity_withdrawal", "bid")


def test_schema_file_is_a_valid_2020_12_schema_matching_the_constants():
    schema = load_json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = schema["$defs"]
    assert defs["signal"]["properties"]["kind"]["enum"] == list(SIGNAL_KINDS)
    for kind, fields in SIGNAL_VALUE_FIELDS.items():
        assert defs[f"values_{kind}"]["required"] == list(fields)
        assert list(defs[f"values_{kind}"]["properties"]) == list(fields)


def _closed_objects(node, path="#"):
    """Every object schema in ``node`` that declares properties but is not closed."""
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False:
            yield path
        for k, v in node.items():
            yield from _closed_objects(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _closed_objects(v, f"{path}/{i}")


def test_every_object_is_closed():
    # ``if`` clauses only test a property, they define no object
    bad = [p for p in _closed_objects(load_json_schema()) if "/if" not in p and "/then" not in p]
    assert bad == []


@pytest.mark.parametrize("kind", SIGNAL_KINDS)
def test_signal_of_each_kind_validates(kind):
    validate(make_signal(kind))
    validate(make_signal(kind, side=None, id=signal_id("AMZN", 1187342, kind, None)))


def test_summary_validates_also_with_nulls():
    validate(make_summary())
    validate(make_summary(bbo={"bid_tick": None, "ask_tick": 22383, "bid_qty": 0, "ask_qty": 5}, mid_tick=None,
                          spread_ticks={"min": None, "mean": None, "max": None},
                          imbalance={"tob": None, "depth": None}))


def test_whole_schema_accepts_both_types():
    v = Draft202012Validator(load_json_schema())
    assert v.is_valid(make_signal("imbalance")) and v.is_valid(make_summary())
    assert not v.is_valid({"type": "other", "v": 1})


def test_docs_examples_validate():
    text = (REPO / "docs" / "SCHEMA.md").read_text()
    examples = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, re.S)]
    assert {e["type"] for e in examples} == {"signal", "summary"}
    for e in examples:
        validate(e)


def _without(d: dict, dotted: str) -> dict:
    d = copy.deepcopy(d)
    *parents, last = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    del node[last]
    return d


@pytest.mark.parametrize("kind,other", [("sweep", "imbalance"), ("imbalance", "sweep"),
                                        ("liquidity_withdrawal", "microprice_shift")])
def test_values_of_another_kind_fail(kind, other):
    msg = make_signal(kind, values=make_signal(other)["values"])
    with pytest.raises(MessageInvalid, match="values"):
        validate(msg)


@pytest.mark.parametrize("field", ["id", "kind", "side", "seq", "ts_exch_ns", "tick_size", "bbo", "values",
                                   "bbo.ask_qty", "values.levels"])
def test_signal_missing_field_fails(field):
    with pytest.raises(MessageInvalid, match=field.split(".")[-1]):
        validate(_without(make_signal("sweep"), field))


@pytest.mark.parametrize("field", ["end_ns", "mid_tick", "spread_ticks.mean", "volume.sell", "events"])
def test_summary_missing_field_fails(field):
    with pytest.raises(MessageInvalid, match=field.split(".")[-1]):
        validate(_without(make_summary(), field))


@pytest.mark.parametrize("make,where", [(lambda: make_signal("sweep"), None), (lambda: make_signal("sweep"), "values"),
                                        (lambda: make_signal("sweep"), "bbo"), (make_summary, None),
                                        (make_summary, "volume")])
def test_extra_field_fails(make, where):
    msg = make()
    (msg[where] if where else msg)["extra"] = 1
    with pytest.raises(MessageInvalid, match="extra"):
        validate(msg)


@pytest.mark.parametrize("make", [lambda: make_signal("sweep"), make_summary])
def test_unknown_version_fails(make):
    with pytest.raises(MessageInvalid, match="v"):
        validate(make() | {"v": 2})


@pytest.mark.parametrize("over", [{"kind": "bogus"}, {"side": "buy"}, {"seq": -1}, {"tick_size": 0},
                                  {"ts_exch_ns": 1.5}, {"symbol": ""}, {"type": "summary"}])
def test_bad_signal_values_fail(over):
    with pytest.raises(MessageInvalid):
        validate(make_signal("sweep") | over)


def test_out_of_range_numbers_fail():
    with pytest.raises(MessageInvalid, match="tob_imbalance"):
        validate(make_signal("imbalance", values={**make_signal("imbalance")["values"], "tob_imbalance": 1.5}))
    with pytest.raises(MessageInvalid, match="drop_fraction"):
        validate(make_signal("liquidity_withdrawal",
                             values={**make_signal("liquidity_withdrawal")["values"], "drop_fraction": -0.1}))
    with pytest.raises(MessageInvalid, match="tob"):
        validate(make_summary(imbalance={"tob": -2, "depth": 0}))


def test_id_must_follow_the_rule():
    with pytest.raises(MessageInvalid, match="AMZN-1187342-sweep"):
        validate(make_signal("sweep", id="AMZN-1-sweep"))


def test_not_an_object_fails():
    for bad in ([], "x", None, {"type": "signal"}):
        with pytest.raises(MessageInvalid):
            validate(bad)


@pytest.mark.parametrize("symbol", ["<img src=x onerror=alert(1)>", '"><script>', "AMZN ", "AMZN\n", "", "A" * 17, "é"])
def test_a_symbol_outside_the_charset_fails_the_schema_and_the_engine_config(symbol):
    from obpipe.config import ConfigError, from_dict
    from obpipe.publisher.schema import SYMBOL_RE

    assert load_json_schema()["$defs"]["symbol"]["pattern"] == f"^{SYMBOL_RE}$"  # one rule
    with pytest.raises(MessageInvalid, match="symbol"):
        validate(make_summary(symbol))
    with pytest.raises(ConfigError, match="book.symbols"):
        from_dict({"book": {"symbols": ["AMZN", symbol]}})
    assert from_dict({"book": {"symbols": ["AMZN", "BRK.B", "X_1-2"]}}).book.symbols == ("AMZN", "BRK.B", "X_1-2")
