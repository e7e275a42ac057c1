"""The one table of signal value slots (``ring.schema.SIGNAL_VALUES``,
``SUMMARY_VALUES``) against everything that describes the same values: the JSON Schema
file, docs/SCHEMA.md, the encoder and the analysis kernel's slot constants.  A change
to one side without the other fails here."""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest

from obpipe.analysis import _kernels as K
from obpipe.publisher.encode import encode, records_to_rows
from obpipe.publisher.schema import (
    EXAMPLE_VALUES,
    SIGNAL_KINDS,
    SIGNAL_VALUE_FIELDS,
    SUMMARY_VALUE_PATHS,
    VALUE_TYPE_SCHEMA,
    load_json_schema,
    validate,
    values_schema,
)
from obpipe.ring import schema as sc
from tests.conftest import REPO

pytestmark = [pytest.mark.timeout(60)]

SYMBOLS = ("AMZN", "MSFT")


def _disagreements(schema: dict) -> list[str]:
    """Where a JSON Schema differs from the table (empty: it agrees)."""
    bad = []
    defs = schema["$defs"]
    sig = defs["signal"]
    if sig["properties"]["kind"]["enum"] != list(SIGNAL_KINDS):
        bad.append(f"kind enum {sig['properties']['kind']['enum']} is not {list(SIGNAL_KINDS)}")
    values_defs = sorted(k for k in defs if k.startswith("values_"))
    if values_defs != sorted(f"values_{k}" for k in SIGNAL_KINDS):
        bad.append(f"$defs values_* are {values_defs}")
    for kind in SIGNAL_KINDS:
        got = defs.get(f"values_{kind}")
        if got != values_schema(kind):
            bad.append(f"values_{kind}: {got} is not {values_schema(kind)}")
        branch = {"if": {"required": ["kind"], "properties": {"kind": {"const": kind}}},
                  "then": {"properties": {"values": {"$ref": f"#/$defs/values_{kind}"}}}}
        if sig.get("allOf", []).count(branch) != 1:
            bad.append(f"signal.allOf has no one branch sending kind {kind} to values_{kind}")
    if len(sig.get("allOf", [])) != len(SIGNAL_KINDS):
        bad.append(f"signal.allOf has {len(sig.get('allOf', []))} branches for {len(SIGNAL_KINDS)} kinds")
    for v in sc.SUMMARY_VALUES:
        node = defs["summary"]
        for key in SUMMARY_VALUE_PATHS[v.name]:
            node = node.get("properties", {}).get(key, {})
        if node != VALUE_TYPE_SCHEMA[v.vtype]:
            bad.append(f"summary {'.'.join(SUMMARY_VALUE_PATHS[v.name])}: {node} is not {VALUE_TYPE_SCHEMA[v.vtype]}")
    return bad


def test_the_json_schema_file_agrees_with_the_table():
    assert _disagreements(load_json_schema()) == []


def _rename(s):
    p = s["$defs"]["values_sweep"]
    p["required"][0] = "levelz"
    p["properties"] = {("levelz" if k == "levels" else k): v for k, v in p["properties"].items()}


def _retype(s):
    s["$defs"]["values_liquidity_withdrawal"]["properties"]["touch_tick"] = {"$ref": "#/$defs/tick"}


def _reorder(s):
    s["$defs"]["values_imbalance"]["required"].reverse()


def _drop_kind(s):
    s["$defs"]["signal"]["properties"]["kind"]["enum"].pop()


def _unwire(s):
    s["$defs"]["signal"]["allOf"].pop(0)


def _extra_kind(s):
    s["$defs"]["values_iceberg"] = {"type": "object"}


def _summary_type(s):
    s["$defs"]["summary"]["properties"]["imbalance"]["properties"]["tob"] = {"$ref": "#/$defs/number_or_null"}


@pytest.mark.parametrize("change", [_rename, _retype, _reorder, _drop_kind, _unwire, _extra_kind, _summary_type])
def test_a_schema_that_differs_from_the_table_is_caught(change):
    schema = copy.deepcopy(load_json_schema())
    change(schema)
    assert _disagreements(schema) != []


def test_the_publisher_constants_come_from_the_table():
    assert SIGNAL_KINDS == ("spread_widening", "imbalance", "microprice_shift", "sweep", "liquidity_withdrawal")
    for code, vals in sc.SIGNAL_VALUES.items():
        kind = sc.SIGNAL_KIND_NAMES[code]
        assert SIGNAL_VALUE_FIELDS[kind] == tuple(v.name for v in vals)
        assert EXAMPLE_VALUES[kind] == {v.name: v.example for v in vals}
    for kind, example in EXAMPLE_VALUES.items():  # the examples are valid under the schema
        validate({"type": "signal", "v": 1, "id": f"AMZN-1-{kind}" + ("-bid" if kind == "liquidity_withdrawal" else ""),
                  "symbol": "AMZN", "kind": kind, "side": "bid", "seq": 1, "ts_exch_ns": 0, "ts_detect_ns": 0,
                  "tick_size": 0.01, "bbo": {"bid_tick": 1, "ask_tick": 2, "bid_qty": 1, "ask_qty": 1},
                  "values": example})


def test_the_table_puts_integers_in_iv_reals_in_fv_and_no_two_values_in_one_slot():
    for vals in (*sc.SIGNAL_VALUES.values(), sc.SUMMARY_VALUES):
        slots = [(v.slot, v.index) for v in vals]
        assert len(set(slots)) == len(slots)
        for v in vals:
            assert v.slot == ("iv" if v.vtype in sc.INT_VALUE_TYPES else "fv")
            assert 0 <= v.index < sc.SIGNAL_DTYPE[v.slot].shape[0]
    with pytest.raises(KeyError, match="lives in fv"):
        sc.value_slot(sc.SIGNAL_VALUES[sc.SIG_SPREAD], "ratio", "iv")
    with pytest.raises(KeyError, match="no value 'bogus'"):
        sc.value_slot(sc.SUMMARY_VALUES, "bogus", "iv")


def test_the_kernel_slots_are_the_tables():
    named = {"V_SP_SPREAD": (sc.SIG_SPREAD, "spread_ticks"), "V_SP_RATIO": (sc.SIG_SPREAD, "ratio"),
             "V_IMB_DEPTH": (sc.SIG_IMBALANCE, "depth_imbalance"), "V_MP_ELAPSED": (sc.SIG_MICROPRICE, "elapsed_ns"),
             "V_SW_ELAPSED": (sc.SIG_SWEEP, "elapsed_ns"), "V_WD_TOUCH": (sc.SIG_WITHDRAWAL, "touch_tick"),
             "V_WD_DROP": (sc.SIG_WITHDRAWAL, "drop_fraction")}
    for const, (code, name) in named.items():
        (v,) = [v for v in sc.SIGNAL_VALUES[code] if v.name == name]
        assert getattr(K, const) == v.index, const
    for const, name in {"SUM_END": "end_ns", "SUM_EVENTS": "events", "SUM_TOB": "tob_imbalance",
                        "SUM_MID": "mid_tick"}.items():
        (v,) = [v for v in sc.SUMMARY_VALUES if v.name == name]
        assert getattr(K, const) == v.index, const
    # every value of the table has a kernel constant naming its slot
    n_consts = len([n for n in dir(K) if n.startswith(("V_", "SUM_")) and isinstance(getattr(K, n), int)])
    assert n_consts == sum(map(len, sc.SIGNAL_VALUES.values())) + len(sc.SUMMARY_VALUES)


def _record(rtype, kind, iv, fv):
    r = np.zeros(1, sc.SIGNAL_DTYPE)
    r["rtype"], r["kind"], r["side"], r["symbol"], r["seq"] = rtype, kind, sc.SIDE_BID, 1, 9
    r["ts_exch_ns"], r["ts_detect_ns"], r["bid_px_tick"], r["ask_px_tick"] = 1_000, 5, 100, 101
    r["iv"], r["fv"] = iv, fv
    return records_to_rows(r)[0]


IV = [11, 22, 33, 44, 55, 66]
FV = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75]


@pytest.mark.parametrize("code", sorted(sc.SIGNAL_VALUES))
def test_the_encoder_reads_each_value_from_its_slot(code):
    is_signal, symbol, msg = encode(_record(sc.OUT_SIGNAL, code, IV, FV), SYMBOLS, 0.01)
    assert is_signal and symbol == "MSFT" and msg["kind"] == sc.SIGNAL_KIND_NAMES[code]
    assert msg["values"] == {v.name: (IV if v.slot == "iv" else FV)[v.index] for v in sc.SIGNAL_VALUES[code]}
    assert list(msg["values"]) == list(SIGNAL_VALUE_FIELDS[msg["kind"]])


def test_the_encoder_publishes_by_the_value_types():
    iv = [sc.NO_PX] * 6
    fv = [math.inf] * 6
    wd = encode(_record(sc.OUT_SIGNAL, sc.SIG_WITHDRAWAL, iv, fv), SYMBOLS, 0.01)[2]["values"]
    assert wd["touch_tick"] is None and wd["depth_before"] == sc.NO_PX  # only tick_or_null maps NO_PX
    sp = encode(_record(sc.OUT_SIGNAL, sc.SIG_SPREAD, iv, [math.nan] * 6), SYMBOLS, 0.01)[2]["values"]
    assert sp["ratio"] == 1e9 and math.isnan(sp["baseline_ticks"])  # only a ratio maps a non-finite number


def test_the_encoder_reads_each_summary_value_from_its_slot():
    msg = encode(_record(sc.OUT_SUMMARY, 0, IV, FV), SYMBOLS, 0.01)[2]
    for v in sc.SUMMARY_VALUES:
        node = msg
        for key in SUMMARY_VALUE_PATHS[v.name]:
            node = node[key]
        assert node == (IV if v.slot == "iv" else FV)[v.index], v.name
    nan = encode(_record(sc.OUT_SUMMARY, 0, IV, [math.nan] * 6), SYMBOLS, 0.01)[2]
    assert nan["mid_tick"] is None and nan["imbalance"] == {"tob": None, "depth": None}


def _docs_value_tables() -> dict[str, list[str]]:
    """Per kind, the value names of its table in docs/SCHEMA.md, in order."""
    text = (REPO / "docs" / "SCHEMA.md").read_text(encoding="utf-8")
    section = text.split("### Signal kinds and their values", 1)[1].split("\n## ", 1)[0]
    got = {}
    for block in re.split(r"\n- \*\*`", section)[1:]:
        kind = block.split("`", 1)[0]
        got[kind] = re.findall(r"^\s*\| `(\w+)` \|", block, re.M)
    return got


def test_docs_schema_md_lists_each_kinds_values_in_table_order():
    assert _docs_value_tables() == {k: list(f) for k, f in SIGNAL_VALUE_FIELDS.items()}
