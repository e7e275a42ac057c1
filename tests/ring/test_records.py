"""The record-word packers of ``obpipe.ring.records`` against the numpy dtypes of
``obpipe.ring.schema``: a word packed by the kernel helper, viewed as the record, reads
back the fields it was packed from; a record written by numpy field by field unpacks
to its fields.  And the rx tracker fits the words its stats row reserves for it."""
from __future__ import annotations

import numpy as np
import pytest

from obpipe.ring import records as R
from obpipe.ring import schema as sc

RNG = np.random.default_rng(14)


def _random_fields(dt: np.dtype, names, n: int) -> dict[str, np.ndarray]:
    """n random values per field, each over its whole range (max and 0 included)."""
    out = {}
    for name in names:
        info = np.iinfo(dt.fields[name][0])
        v = RNG.integers(0, int(info.max), n, dtype=np.uint64, endpoint=True).astype(np.int64)
        v[0], v[1] = 0, int(info.max)
        out[name] = v
    return out


def _check_word(dt, word, names, pack, unpack, n=200):
    f = _random_fields(dt, names, n)
    recs = np.zeros(n, dt)
    words = recs.view(np.int64).reshape(n, -1)
    for i in range(n):
        words[i, word] = pack(*(int(f[k][i]) for k in names))
    for k in names:  # packed by the helper, read by numpy's field offsets
        assert np.array_equal(recs[k].astype(np.int64), f[k]), k
    other = [k for k in dt.names if k not in names]
    assert all(not recs[k].any() for k in other)  # nothing spilt outside the word

    recs2 = np.zeros(n, dt)  # written by numpy, unpacked by the helper
    for k in names:
        recs2[k] = f[k]
    w2 = recs2.view(np.int64).reshape(n, -1)
    for i in range(n):
        assert tuple(unpack(w2[i, word])) == tuple(int(f[k][i]) for k in names), i


@pytest.mark.parametrize("dt", [sc.MD_DTYPE, sc.WIRE_MSG_DTYPE], ids=["md", "wire_msg"])
def test_market_data_word_0_packs_and_unpacks_as_the_dtype_lays_it_out(dt):
    _check_word(dt, 0, R.MD_W0_FIELDS, R.md_w0, R.md_w0_fields)


def test_market_data_word_0_is_the_documented_kind_side_symbol_qty_layout():
    assert R.md_w0(1, 2, 3, 4) == 1 | 2 << 8 | 3 << 16 | 4 << 32  # docs/PROTOCOL.md, the wire message
    assert R.md_w0(0, 0, 0, 0xFFFFFFFF) == -(1 << 32)  # qty's top bit is the word's sign bit


def test_a_value_wider_than_its_field_does_not_spill_into_its_neighbours():
    w = np.zeros(R.MD_WORDS, np.int64)
    w[0] = R.md_w0(0, 0, 0x1_FFFF, 0)
    r = w.view(sc.MD_DTYPE)[0]
    assert (int(r["kind"]), int(r["side"]), int(r["symbol"]), int(r["qty"])) == (0, 0, 0xFFFF, 0)
    assert R.report_w1(1 << 32 | 5, 0) == 5


def test_report_words_0_and_1_pack_and_unpack_as_the_dtype_lays_them_out():
    names0 = R.REPORT_W0_FIELDS[:-1]  # _reserved: always written 0
    _check_word(sc.ORDER_OUT_DTYPE, 0, names0, R.report_w0, R.report_w0_fields)
    _check_word(sc.ORDER_OUT_DTYPE, 1, R.REPORT_W1_FIELDS, R.report_w1, R.report_w1_fields)


def test_packet_header_words_0_and_2_pack_and_unpack_as_the_dtype_lays_them_out():
    _check_word(sc.WIRE_HEADER_DTYPE, 0, R.WIRE_H0_FIELDS, R.wire_h0, R.wire_h0_fields)
    _check_word(sc.WIRE_HEADER_DTYPE, 2, R.WIRE_H2_FIELDS, R.wire_h2, R.wire_h2_fields)


def test_word_indices_are_the_dtype_offsets():
    for dt, idx in ((sc.MD_DTYPE, {"px_tick": R.MD_W_PX, "seq": R.MD_W_SEQ, "ts_exch_ns": R.MD_W_TS_EXCH,
                                   "ts_recv_ns": R.MD_W_TS_RECV}),
                    (sc.WIRE_MSG_DTYPE, {"order_id": R.WIRE_W_ORDER_ID, "px_tick": R.WIRE_W_PX,
                                         "ts_exch_ns": R.WIRE_W_TS_EXCH}),
                    (sc.ORDER_OUT_DTYPE, {"px_tick": R.REP_W_PX, "order_id": R.REP_W_ORDER_ID}),
                    (sc.WIRE_HEADER_DTYPE, {"seq": R.WIRE_W_SEQ})):
        for name, w in idx.items():
            assert dt.fields[name][1] == 8 * w, name
    assert sc.WIRE_HEADER_DTYPE.fields["magic"][1] == 8 * R.WIRE_W_H0 == 0
    assert sc.WIRE_HEADER_DTYPE.fields["count"][1] == 8 * R.WIRE_W_H2 == 16
    assert (R.MD_WORDS, R.WIRE_MSG_WORDS, R.REPORT_WORDS, R.WIRE_HEADER_WORDS) == (5, 4, 4, 3)


@pytest.mark.parametrize("fields, word, names, says", [
    ([("a", "u1"), ("b", "u1"), ("c", "<u2"), ("d", "<u4")], 0, ("a", "b", "c"), "do not fill word"),
    ([("a", "u1"), ("b", "u1"), ("c", "<u2"), ("d", "<u4")], 0, ("a", "b", "c", "d", "a"), "overlaps"),
    ([("a", "<u4"), ("b", "<u4"), ("c", "<i8")], 0, ("a", "b", "c"), "not inside word"),
    ([("a", "<u4"), ("f", "<f4"), ("c", "<i8")], 0, ("a", "f"), "not a scalar integer"),
])
def test_a_word_layout_that_the_fields_do_not_tile_fails_at_import_naming_the_field(fields, word, names, says):
    with pytest.raises(AssertionError, match=says):
        R._word_fields(np.dtype(fields, align=True), word, names)


def test_the_rx_tracker_fits_the_words_its_stats_row_reserves():
    from obpipe.feed_sim import wire_kernels as WK

    t_words = {k: v for k, v in vars(WK).items() if k.startswith("T_")}
    assert WK.NT == sc.RX_TRACKER_WORDS
    assert max(t_words.values()) < WK.NT and min(t_words.values()) >= 0
    assert sc.RX_TRACKER_BASE >= sc.ST_STATE + 1  # after the common words of every row
    assert sc.RX_TRACKER_BASE + WK.NT <= sc.ST_RX_PORT < sc.ST_RX_KERNEL_DROPS < sc.STATS_WORDS
