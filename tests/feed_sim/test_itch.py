"""feed_sim.itch: the ITCH 5.0 specification as dtypes, the compiled decoder into MD_L3
records, the encoder, dump, and bad input.

The 200 real messages are fixed data (../shared/data/itch, read-only, relative to the
repo root where the tests run): every field is checked against an independent decoder
written here with ``struct`` from the specification's tables, and a few values are
pinned literally (read by hand from the bytes).
"""
from __future__ import annotations

import gzip
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from obpipe.feed_sim import itch
from obpipe.feed_sim import _itch_kernels as K
from obpipe.ring import schema as sc

SLICE = Path("../shared/data/itch/slice_200msgs.itch50")

# --- an independent transcription of the specification (struct, big-endian, no padding) ---

_HDR = ("stock_locate", "tracking_number", "timestamp")
SPEC = {  # type: (struct format after the 11-byte header, field names, length)
    "S": ("c", ["event_code"], 12),
    "R": ("8sccIcc2scccccIc", ["stock", "market_category", "financial_status_indicator", "round_lot_size",
                               "round_lots_only", "issue_classification", "issue_sub_type", "authenticity",
                               "short_sale_threshold_indicator", "ipo_flag", "luld_reference_price_tier", "etp_flag",
                               "etp_leverage_factor", "inverse_indicator"], 39),
    "H": ("8scc4s", ["stock", "trading_state", "reserved", "reason"], 25),
    "Y": ("8sc", ["stock", "reg_sho_action"], 20),
    "L": ("4s8sccc", ["mpid", "stock", "primary_market_maker", "market_maker_mode", "market_participant_state"], 26),
    "V": ("QQQ", ["level_1", "level_2", "level_3"], 35),
    "W": ("c", ["breached_level"], 12),
    "K": ("8sIcI", ["stock", "ipo_quotation_release_time", "ipo_quotation_release_qualifier", "ipo_price"], 28),
    "J": ("8sIIII", ["stock", "auction_collar_reference_price", "upper_auction_collar_price",
                     "lower_auction_collar_price", "auction_collar_extension"], 35),
    "h": ("8scc", ["stock", "market_code", "operational_halt_action"], 21),
    "A": ("QcI8sI", ["order_reference_number", "buy_sell_indicator", "shares", "stock", "price"], 36),
    "F": ("QcI8sI4s", ["order_reference_number", "buy_sell_indicator", "shares", "stock", "price", "attribution"], 40),
    "E": ("QIQ", ["order_reference_number", "executed_shares", "match_number"], 31),
    "C": ("QIQcI", ["order_reference_number", "executed_shares", "match_number", "printable", "execution_price"], 36),
    "X": ("QI", ["order_reference_number", "cancelled_shares"], 23),
    "D": ("Q", ["order_reference_number"], 19),
    "U": ("QQII", ["original_order_reference_number", "new_order_reference_number", "shares", "price"], 35),
    "P": ("QcI8sIQ", ["order_reference_number", "buy_sell_indicator", "shares", "stock", "price", "match_number"], 44),
    "Q": ("Q8sIQc", ["shares", "stock", "cross_price", "match_number", "cross_type"], 40),
    "B": ("Q", ["match_number"], 19),
    "I": ("QQc8sIIIcc", ["paired_shares", "imbalance_shares", "imbalance_direction", "stock", "far_price",
                         "near_price", "current_reference_price", "cross_type", "price_variation_indicator"], 50),
    "N": ("8sc", ["stock", "interest_flag"], 20),
    "O": ("8scIIIQII", ["stock", "open_eligibility_status", "minimum_allowable_price", "maximum_allowable_price",
                        "near_execution_price", "near_execution_time", "lower_price_range_collar",
                        "upper_price_range_collar"], 48),
}


def ref_decode(msg: bytes) -> dict:
    """One message (no length prefix) by the transcription above."""
    t = chr(msg[0])
    fmt, names, length = SPEC[t]
    assert len(msg) == length
    locate, tracking, ts = struct.unpack(">HH6s", msg[1:11])
    d = {"type": t, "stock_locate": locate, "tracking_number": tracking, "timestamp": int.from_bytes(ts, "big")}
    for name, v in zip(names, struct.unpack(">" + fmt, msg[11:])):
        if isinstance(v, bytes):
            v = v.decode("latin-1")
            v = v.rstrip(" ") if len(v) > 1 else v
        d[name] = v
    return d


def ref_split(b: bytes) -> list[bytes]:
    out, p = [], 0
    while p + 2 <= len(b):
        n = int.from_bytes(b[p:p + 2], "big")
        out.append(b[p + 2:p + 2 + n])
        p += 2 + n
    return out


def ref_pack(t: str, values: dict) -> bytes:
    """A length-prefixed message of type ``t`` (alpha fields space-padded)."""
    fmt, names, _ = SPEC[t]
    vals = []
    for n, f in zip(names, _fields(fmt)):
        v = values[n]
        vals.append(v.ljust(struct.calcsize(f)).encode() if isinstance(v, str) else v)
    body = t.encode() + struct.pack(">HH", values["stock_locate"], values["tracking_number"])
    body += values["timestamp"].to_bytes(6, "big") + struct.pack(">" + fmt, *vals)
    return len(body).to_bytes(2, "big") + body


def _fields(fmt: str) -> list[str]:
    out, num = [], ""
    for ch in fmt:
        if ch.isdigit():
            num += ch
        else:
            out.append(num + ch)
            num = ""
    return out


def _random_values(t: str, rng) -> dict:
    fmt, names, _ = SPEC[t]
    d = {"stock_locate": int(rng.integers(1, 1 << 16)), "tracking_number": int(rng.integers(0, 1 << 16)),
         "timestamp": int(rng.integers(0, 86_400 * 10 ** 9))}
    for name, f in zip(names, _fields(fmt)):
        if f.endswith("s") or f == "c":
            n = int(f[:-1] or 1)
            d[name] = "".join(chr(c) for c in rng.integers(65, 91, int(rng.integers(1, n + 1))))
        else:
            d[name] = int(rng.integers(0, 1 << {"H": 16, "I": 32, "Q": 63}[f]))
    return d


def _expected_record(d: dict, div: int) -> dict | None:
    """What the decoder must make of a book message (dict of the reference decoder)."""
    t = d["type"]
    side = {"B": sc.SIDE_BID, "S": sc.SIDE_ASK}
    base = {"side": 0, "qty": 0, "px_tick": 0, "ref": 0, "new_ref": 0}
    if t in "AFP":
        base.update(kind=sc.L3_TRADE if t == "P" else sc.L3_ADD, side=side[d["buy_sell_indicator"]],
                    qty=d["shares"], px_tick=d["price"] // div, ref=d["order_reference_number"])
    elif t == "E":
        base.update(kind=sc.L3_EXEC, qty=d["executed_shares"], ref=d["order_reference_number"])
    elif t == "C":
        base.update(kind=sc.L3_EXEC_PX, side=int(d["printable"] == "Y"), qty=d["executed_shares"],
                    px_tick=d["execution_price"] // div, ref=d["order_reference_number"])
    elif t == "X":
        base.update(kind=sc.L3_CANCEL, qty=d["cancelled_shares"], ref=d["order_reference_number"])
    elif t == "D":
        base.update(kind=sc.L3_DELETE, ref=d["order_reference_number"])
    elif t == "U":
        base.update(kind=sc.L3_REPLACE, qty=d["shares"], px_tick=d["price"] // div,
                    ref=d["original_order_reference_number"], new_ref=d["new_order_reference_number"])
    elif t == "Q":
        base.update(kind=sc.L3_CROSS, side=sc.SIDE_NONE_L3, qty=d["shares"], px_tick=d["cross_price"] // div)
    else:
        return None
    return base


def _dispositions_hold(c: dict) -> bool:
    return c["messages"] == sum(c[K.COUNTER_NAMES[i]] for i in K.DISPOSITIONS)


def gen_records(n: int, n_symbols: int, seed: int) -> np.ndarray:
    """Canonical MD_L3 records of every kind ITCH carries (fields a kind does not use are 0)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([sc.L3_ADD, sc.L3_DELETE, sc.L3_CANCEL, sc.L3_EXEC, sc.L3_REPLACE, sc.L3_TRADE,
                        sc.L3_EXEC_PX, sc.L3_CROSS], n, p=[.40, .30, .08, .08, .06, .03, .03, .02])
    r = np.zeros(n, sc.MD_L3_DTYPE)
    r["kind"] = kinds
    r["symbol"] = rng.integers(0, n_symbols, n)
    r["ts_exch_ns"] = np.sort(rng.integers(4 * 3600 * 10 ** 9, 20 * 3600 * 10 ** 9, n))
    qty = rng.integers(1, 1 << 32, n, dtype=np.int64)
    r["qty"] = np.where(kinds == sc.L3_DELETE, 0, qty)
    priced = np.isin(kinds, [sc.L3_ADD, sc.L3_EXEC_PX, sc.L3_REPLACE, sc.L3_TRADE, sc.L3_CROSS])
    r["px_tick"] = np.where(priced, rng.integers(0, ((1 << 32) - 1) // 100, n), 0)
    sided = np.isin(kinds, [sc.L3_ADD, sc.L3_TRADE, sc.L3_EXEC_PX])
    r["side"] = np.where(sided, rng.integers(0, 2, n), np.where(kinds == sc.L3_CROSS, sc.SIDE_NONE_L3, 0))
    r["ref"] = np.where(kinds == sc.L3_CROSS, 0, rng.integers(0, 1 << 63, n, dtype=np.int64).astype(np.uint64) * 2 + 1)
    r["new_ref"] = np.where(kinds == sc.L3_REPLACE, rng.integers(1, 1 << 63, n, dtype=np.int64), 0)
    return r


BOOK_FIELDS = ("kind", "side", "symbol", "qty", "px_tick", "ts_exch_ns", "ts_recv_ns", "ref", "new_ref")


# --- the specification ---------------------------------------------------------------

@pytest.mark.timeout(60)
def test_every_type_has_the_spec_length_and_field_names():
    assert set(itch.TYPES) == set(SPEC) and len(itch.TYPES) == 23
    for t, dt in itch.TYPES.items():
        fmt, names, length = SPEC[t]
        assert 11 + struct.calcsize(">" + fmt) == length == dt.itemsize == itch.MESSAGE_LENGTHS[t], t
        assert list(dt.names) == ["message_type", *_HDR, *names], t


@pytest.mark.timeout(60)
def test_every_type_decodes_like_the_independent_transcription():
    rng = np.random.default_rng(5)
    msgs = [ref_pack(t, _random_values(t, rng)) for _ in range(20) for t in SPEC]
    got = list(itch.iter_messages(b"".join(msgs)))
    assert got == [ref_decode(m[2:]) for m in msgs]


# --- the 200 real messages -----------------------------------------------------------

@pytest.mark.timeout(60)
def test_every_field_of_the_real_slice():
    raw = SLICE.read_bytes()
    ref = [ref_decode(m) for m in ref_split(raw)]
    assert [sum(d["type"] == t for d in ref) for t in "ADXUP"] == [115, 51, 28, 4, 2] and len(ref) == 200
    assert list(itch.iter_messages(itch.read_itch(SLICE))) == ref
    s = io.StringIO()
    assert itch.dump(SLICE, json=True, out=s) == 200
    assert [json.loads(line) for line in s.getvalue().splitlines()] == ref


# Read by hand from the bytes (hex in the comments).
PINNED = {
    0: {"type": "P", "stock_locate": 2764, "tracking_number": 2, "timestamp": 14400900567218,  # 0d18f89010b2
        "order_reference_number": 0, "buy_sell_indicator": "B", "shares": 10, "stock": "FCEL", "price": 13200,
        "match_number": 17796},  # 0x3390, 0x4584
    2: {"type": "A", "stock_locate": 2764, "tracking_number": 0, "timestamp": 14400900689615,
        "order_reference_number": 40470, "buy_sell_indicator": "B", "shares": 3000, "stock": "FCEL", "price": 13400},
    30: {"type": "U", "stock_locate": 992, "tracking_number": 0, "timestamp": 14400946546847,  # 0d18fb4da89f
         "original_order_reference_number": 9989, "new_order_reference_number": 57741, "shares": 500,
         "price": 378600},  # 0x2705 -> 0xe18d, 0x1f4 @ 0x05c6e8
    171: {"type": "A", "stock_locate": 4007, "tracking_number": 0, "timestamp": 14401252117402,  # 0d190d844b9a
          "order_reference_number": 46790, "buy_sell_indicator": "S", "shares": 2000, "stock": "IDXG",
          "price": 8990},  # a sub-penny price: not a whole 0.01 tick
    199: {"type": "D", "stock_locate": 7982, "tracking_number": 0, "timestamp": 14401307647773,  # 0d1910d39f1d
          "order_reference_number": 40040},  # 0x9c68
}


@pytest.mark.timeout(60)
def test_pinned_messages_of_the_real_slice():
    msgs = list(itch.iter_messages(itch.read_itch(SLICE)))
    for i, want in PINNED.items():
        assert msgs[i] == want, i
    s = io.StringIO()
    itch.dump(SLICE, count=3, out=s)
    lines = s.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == ("04:00:00.900567218 P loc=2764 FCEL order_reference_number=0 buy_sell_indicator=B "
                        "shares=10 price=1.3200 match_number=17796")


@pytest.mark.timeout(60)
def test_kernel_records_equal_the_per_type_decode_on_the_real_slice():
    buf = itch.read_itch(SLICE)
    ref = [ref_decode(m) for m in ref_split(SLICE.read_bytes())]
    day = itch.session_midnight_ns(2019, 1, 30)
    recs, names, c = itch.decode(buf, tick_divisor=1, day_ns=day, seq0=1000, unknown_locate="any")
    assert recs.size == 200 and c["records"] == 200 and _dispositions_hold(c)
    sym_of: dict[int, int] = {}
    for i, (r, d) in enumerate(zip(recs, ref)):
        want = _expected_record(d, 1)
        assert {f: int(r[f]) for f in want} == want, i
        assert int(r["seq"]) == 1000 + i and int(r["ts_exch_ns"]) == day + d["timestamp"] and r["ts_recv_ns"] == 0
        assert sym_of.setdefault(d["stock_locate"], int(r["symbol"])) == int(r["symbol"])
        if "stock" in d:
            assert names[r["symbol"]] == d["stock"]
    assert len(set(sym_of.values())) == len(sym_of) == len(names)
    # 0.01 ticks, locates decided by the first message naming their stock: the deletes and
    # cancels of orders added before the slice have no known locate; the IDXG add at 0.8990 is subtick
    recs, names, c = itch.decode(buf)
    assert (c["messages"], c["records"], c["subtick"], c["unknown_locate"]) == (200, 166, 1, 33)
    assert c["type_A"] == 115 and c["type_D"] == 51 and _dispositions_hold(c)
    assert recs[2]["px_tick"] == 134 and recs[2]["seq"] == 3
    assert 31 not in recs["seq"]  # message 30 (a U) is the first message of its locate: unknown
    u = recs[recs["kind"] == sc.L3_REPLACE][0]  # message 43: 0xcff5 -> 0xe195, 500 @ 0x19c670
    assert (u["ref"], u["new_ref"], u["qty"], u["px_tick"], u["seq"]) == (53237, 57749, 500, 16892, 44)


@pytest.mark.timeout(60)
def test_book_types_of_every_kind_decode_like_the_transcription():
    rng = np.random.default_rng(11)
    msgs, ds = [], []
    for _ in range(300):
        t = "AFECXDUPQ"[int(rng.integers(0, 9))]
        d = _random_values(t, rng)
        d["stock_locate"] = 7
        d["stock"] = "ZZZ"
        for f in ("price", "execution_price", "cross_price"):
            if f in d:
                d[f] -= d[f] % 100
        if t in "AFP":
            d["buy_sell_indicator"] = "BS"[int(rng.integers(0, 2))]
        if t == "C":
            d["printable"] = "YN"[int(rng.integers(0, 2))]
        if t == "Q":
            d["shares"] %= 1 << 32
        msgs.append(ref_pack(t, d))
        ds.append(ref_decode(msgs[-1][2:]))
    recs, names, c = itch.decode(b"".join(msgs), ["ZZZ"], day_ns=5)
    assert recs.size == 300 and names == ["ZZZ"] and c["records"] == 300
    for r, d in zip(recs, ds):
        want = _expected_record(d, 100)
        assert {f: int(r[f]) for f in want} == want and r["symbol"] == 0 and r["ts_exch_ns"] == 5 + d["timestamp"]


# --- encode --------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_round_trip_encode_decode():
    names = ["AAPL", "MSFT", "BRK.B", "Q", "ABCDEFGH"]
    recs = gen_records(20_000, len(names), seed=2)
    day = itch.session_midnight_ns(2024, 3, 1)
    recs["ts_exch_ns"] += day
    buf, ec = itch.encode(recs, names, day_ns=day)
    assert ec == {"messages": 20_000 + len(names) + 2, "skipped_kind": 0, "skipped_range": 0}
    got, got_names, c = itch.decode(buf, day_ns=day, seq0=1)
    assert got_names == names and got.size == recs.size
    for f in BOOK_FIELDS:
        assert np.array_equal(got[f], recs[f]), f
    assert np.array_equal(got["seq"], np.arange(20_000) + 2 + len(names))  # after S and the R messages
    assert c["other"] == 2 + len(names) and c["type_R"] == len(names) and c["type_S"] == 2 and _dispositions_hold(c)
    msgs = list(itch.iter_messages(buf, count=len(names) + 1))
    assert msgs[0]["type"] == "S" and msgs[0]["event_code"] == "O"
    assert [(m["type"], m["stock"], m["stock_locate"]) for m in msgs[1:]] == [
        ("R", n, i + 1) for i, n in enumerate(names)]
    assert ref_decode(ref_split(buf.tobytes())[-1])["event_code"] == "C"
    for m in ref_split(buf.tobytes()):  # every message is well formed for the transcription
        ref_decode(m)


@pytest.mark.timeout(60)
def test_encode_counts_what_itch_cannot_carry():
    recs = gen_records(10, 2, seed=3)
    recs["kind"][0] = sc.L3_CLEAR
    recs["symbol"][1] = 5  # no such symbol
    recs["ts_exch_ns"][2] = -1
    recs["kind"][3], recs["side"][3], recs["px_tick"][3] = sc.L3_ADD, 0, 1 << 40  # price beyond 32 bits
    buf, ec = itch.encode(recs, ["A", "B"], start_end=False)
    assert ec == {"messages": 6, "skipped_kind": 1, "skipped_range": 3}
    got, _, c = itch.decode(buf, n_symbols=2, unknown_locate="any")
    assert got.size == 6 and np.array_equal(got["ref"], recs["ref"][4:])


# --- chunks, resumption, files -------------------------------------------------------

@pytest.mark.timeout(60)
def test_chunked_feed_and_full_output_resume_exactly():
    names = [f"S{i}" for i in range(4)]
    recs = gen_records(5_000, 4, seed=7)
    buf, _ = itch.encode(recs, names)
    whole, _, c_whole = itch.decode(buf)
    dec = itch.Decoder(n_symbols=4, capacity=7)  # a full output many times over
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.integers(0, buf.size, 300))
    parts = [dec.feed(buf[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, buf.size])]
    parts.append(dec.feed(b"", final=True))
    got = np.concatenate(parts)
    assert np.array_equal(got, whole)
    c = dec.counters()
    assert c["out_full"] > 0 and c["truncated"] == 0
    assert {k: v for k, v in c.items() if k != "out_full"} == {k: v for k, v in c_whole.items() if k != "out_full"}


@pytest.mark.timeout(60)
def test_packet_by_packet_into_a_preallocated_output():
    """As rx would use it on MoldUDP64 message blocks: one call per block, its own sequence
    number and receive stamp, no allocation."""
    names = ["AA", "BB"]
    recs = gen_records(1_000, 2, seed=12)
    buf, _ = itch.encode(recs, names)
    offs, end = itch.frame(buf)
    assert end == buf.size and offs.size == 1_000 + 4
    dec = itch.Decoder(names)
    out = np.zeros(64, sc.MD_L3_DTYPE)
    got = []
    for k, a in enumerate(range(0, offs.size, 20)):  # blocks of 20 messages
        b = int(offs[a + 20]) if a + 20 < offs.size else buf.size
        st, n = dec.run(buf, b, out, start=int(offs[a]), seq=1 + a, recv_ns=k)
        assert st == itch.DONE and int(dec.D[K.D_POS]) == b
        got.append(out[:n].copy())
    got = np.concatenate(got)
    for f in ("kind", "side", "symbol", "qty", "px_tick", "ts_exch_ns", "ref", "new_ref"):
        assert np.array_equal(got[f], recs[f]), f
    assert np.array_equal(got["seq"], np.arange(1_000) + 4) and np.array_equal(got["ts_recv_ns"], (got["seq"] - 1) // 20)


@pytest.mark.timeout(60)
def test_gzip_file_and_chunked_reading(tmp_path):
    raw = SLICE.read_bytes()
    gz = tmp_path / "01302019.NASDAQ_ITCH50.gz"
    gz.write_bytes(gzip.compress(raw))
    assert itch.read_itch(gz).tobytes() == raw
    assert itch.file_day_ns(gz) == 1_548_824_400 * 10 ** 9  # 2019-01-30 00:00 EST = 05:00 UTC
    assert itch.file_day_ns(SLICE) is None
    dec = itch.Decoder(tick_divisor=1, unknown_locate="any")
    got = np.concatenate([dec.feed(ch) for ch in itch.iter_itch(gz, chunk_bytes=100)] + [dec.feed(b"", final=True)])
    want, _, _ = itch.decode(raw, tick_divisor=1, unknown_locate="any")
    assert got.size == 200 and np.array_equal(got, want)
    s = io.StringIO()
    assert itch.dump(gz, json=True, count=5, out=s) == 5
    assert json.loads(s.getvalue().splitlines()[4]) == ref_decode(ref_split(raw)[4])
    # read in chunks that cut messages: the same 200 messages, then a cut one is reported
    cut = tmp_path / "cut.itch50"
    cut.write_bytes(raw + raw[:30])
    s = io.StringIO()
    assert itch.dump(cut, json=True, out=s, chunk_bytes=97) == 201
    lines = [json.loads(x) for x in s.getvalue().splitlines()]
    assert lines[:200] == [ref_decode(m) for m in ref_split(raw)]
    assert lines[200] == {"type": None, "error": "truncated", "length": 30}


@pytest.mark.timeout(60)
def test_main_dumps_json(capsys):
    assert itch.main(["dump", str(SLICE), "--json", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x) for x in lines] == [PINNED[0], ref_decode(ref_split(SLICE.read_bytes())[1])]


# --- symbols -------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_unselected_symbols_are_skipped_and_counted():
    names = ["AAA", "BBB", "CCC", "DDD"]
    recs = gen_records(4_000, 4, seed=9)
    buf, _ = itch.encode(recs, names)
    got, got_names, c = itch.decode(buf, ["DDD", "BBB"])
    assert got_names == ["DDD", "BBB"]
    keep = np.isin(recs["symbol"], [1, 3])
    assert got.size == keep.sum() and c["skipped_symbol"] == (~keep).sum() and c["symbols"] == 2
    assert np.array_equal(got["symbol"], np.where(recs["symbol"][keep] == 3, 0, 1))
    assert np.array_equal(got["ref"], recs["ref"][keep]) and _dispositions_hold(c)
    # every index taken: later stocks are refused and their messages skipped
    got, got_names, c = itch.decode(buf, n_symbols=3)
    assert got_names == names[:3] and c["symbol_overflow"] == 1
    assert got.size == (recs["symbol"] < 3).sum() and c["skipped_symbol"] == (recs["symbol"] == 3).sum()


@pytest.mark.timeout(60)
def test_locates_without_directory_messages():
    buf = itch.read_itch(SLICE)
    recs, names, c = itch.decode(buf, unknown_locate="skip")
    assert recs.size == 0 and c["unknown_locate"] == 200 and names == []
    recs, names, c = itch.decode(buf, unknown_locate="skip", locates={2764: "FCEL", 7982: "TS"})
    assert names == ["FCEL", "TS"] and c["unknown_locate"] == 200 - recs.size
    assert set(recs["symbol"].tolist()) == {0, 1} and recs.size == sum(
        d["stock_locate"] in (2764, 7982) for d in map(ref_decode, ref_split(SLICE.read_bytes())))
    recs, names, c = itch.decode(buf, ["TS", "FMS"])  # by the stock names of adds and trades
    assert names == ["TS", "FMS"] and c["skipped_symbol"] > 0 and set(recs["symbol"].tolist()) == {0, 1}
    with pytest.raises(itch.ItchError):
        itch.decode(buf, ["TS"], unknown_locate="any")


@pytest.mark.timeout(60)
def test_a_directory_conflict_keeps_the_first_name():
    d = {"stock_locate": 3, "tracking_number": 0, "timestamp": 1, "market_category": "Q",
         "financial_status_indicator": "N", "round_lot_size": 100, "round_lots_only": "N",
         "issue_classification": "C", "issue_sub_type": "Z", "authenticity": "P",
         "short_sale_threshold_indicator": "N", "ipo_flag": "N", "luld_reference_price_tier": "1", "etp_flag": "N",
         "etp_leverage_factor": 0, "inverse_indicator": "N"}
    add = {"stock_locate": 3, "tracking_number": 0, "timestamp": 2, "order_reference_number": 1,
           "buy_sell_indicator": "B", "shares": 5, "stock": "NEW", "price": 100}
    buf = ref_pack("R", {**d, "stock": "OLD"}) + ref_pack("R", {**d, "stock": "NEW"}) + ref_pack("A", add)
    recs, names, c = itch.decode(buf)
    assert names == ["OLD"] and c["locate_conflict"] == 1 and recs.size == 1 and recs[0]["symbol"] == 0


# --- bad input -----------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_subtick_and_bad_fields_are_counted_and_skipped():
    base = {"stock_locate": 1, "tracking_number": 0, "timestamp": 9, "order_reference_number": 4,
            "buy_sell_indicator": "B", "shares": 5, "stock": "X", "price": 10_050}
    c_msg = {"stock_locate": 1, "tracking_number": 0, "timestamp": 9, "order_reference_number": 4,
             "executed_shares": 1, "match_number": 2, "printable": "Y", "execution_price": 10_000}
    buf = (ref_pack("A", base) + ref_pack("A", {**base, "price": 10_000})
           + ref_pack("A", {**base, "buy_sell_indicator": "Z"}) + ref_pack("C", c_msg)
           + ref_pack("C", {**c_msg, "printable": "?"}))
    recs, _, c = itch.decode(buf)
    assert (c["subtick"], c["bad_field"], c["records"]) == (1, 1 + 1, 2) and _dispositions_hold(c)
    assert recs["px_tick"].tolist() == [100, 100] and recs["kind"].tolist() == [sc.L3_ADD, sc.L3_EXEC_PX]
    recs, _, c = itch.decode(buf, tick_divisor=50)
    assert c["subtick"] == 0 and recs[0]["px_tick"] == 201


@pytest.mark.timeout(60)
def test_fuzz_random_cut_and_corrupted_input_is_counted_never_a_crash():
    rng = np.random.default_rng(3)
    valid, _ = itch.encode(gen_records(3_000, 3, seed=4), ["A", "B", "C"])
    real = itch.read_itch(SLICE)
    cases = [rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8) for _ in range(200)]
    cases += [real[: int(rng.integers(0, real.size))] for _ in range(100)]
    cases += [valid[int(rng.integers(0, 50)): int(rng.integers(100, valid.size))] for _ in range(50)]
    for _ in range(100):  # corrupted bytes in a framed stream: lengths, types, fields
        b = valid.copy()
        idx = rng.integers(0, b.size, int(rng.integers(1, 200)))
        b[idx] = rng.integers(0, 256, idx.size)
        cases.append(b)
    for b in cases:
        for mode in ("name", "any"):
            recs, names, c = itch.decode(b, n_symbols=8, unknown_locate=mode)
            assert _dispositions_hold(c) and c["records"] == recs.size and c["truncated"] <= 1
            assert np.isin(recs["kind"], list(itch.L3_KIND_OF.values())).all() and (recs["symbol"] < 8).all()
            assert (np.diff(recs["seq"]) > 0).all() and (recs["seq"] < 1 + c["messages"]).all()
        for d in itch.iter_messages(b):  # dump formatting survives it too
            assert "type" in d
    recs, _, c = itch.decode(valid[:-5])
    assert c["truncated"] == 1 and c["messages"] == 3_000 + 3 + 1
    recs, _, c = itch.decode(b"\x00\x00\x00\x02Zz\x00\x09A1234")
    assert (c["bad_length"], c["unknown_type"], c["truncated"], c["messages"]) == (1, 1, 1, 2)


@pytest.mark.timeout(60)
def test_arguments_are_checked():
    with pytest.raises(itch.ItchError):
        itch.decode(b"", tick_divisor=0)
    with pytest.raises(itch.ItchError):
        itch.decode(b"", ["TOOLONGNAME"])
    with pytest.raises(itch.ItchError):
        itch.decode(b"", unknown_locate="maybe")
    with pytest.raises(itch.ItchError):
        itch.decode(np.zeros(4, np.int32))
    with pytest.raises(itch.ItchError):
        itch.encode(np.zeros(1, sc.MD_DTYPE), ["A"])
    assert itch.key_name(itch.stock_key("BRK.B")) == "BRK.B"
