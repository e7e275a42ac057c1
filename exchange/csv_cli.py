"""``obpipe book``: the matching engine driven by CSV commands, one per line.

Grammar (fields separated by commas, surrounding blanks ignored, type case-insensitive)::

    LIMIT,BUY|SELL,PRICE,QTY[,,ACCOUNT]     good-till-cancelled limit order
    IOC,BUY|SELL,PRICE,QTY[,,ACCOUNT]       limit, immediate-or-cancel
    FOK,BUY|SELL,PRICE,QTY[,,ACCOUNT]       limit, fill-or-kill
    MARKET,BUY|SELL,,QTY[,,ACCOUNT]         market order (never rests)
    CANCEL,,,,ID[,ACCOUNT]
    MODIFY,,[PRICE],QTY,ID[,ACCOUNT]        new open quantity; an empty price keeps it
    PRINT

New orders get ids 1, 2, 3, ... in arrival order (rejected ones too).  Output: one
``TRADE <buy id> <sell id> <price> <qty>`` per fill, ``CANCELLED <id>`` for a cancel
(``CANCELLED <id> <reason> <qty>`` when the engine cancelled the rest itself),
``MODIFIED <id> <price> <qty>``, ``REJECTED <id> <reason>``, and the book for PRINT.
A line that cannot be read is reported on stderr with its number; processing goes on
and the exit status is 1.  Blank lines and lines starting with ``#`` are skipped.

Lines are parsed in Python (I/O bound) and matched in batches by the compiled kernel:
up to ``BATCH`` requests, cut at every PRINT.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from obpipe.ring import schema

from obpipe.exchange._match_kernels import MAX_PX_TICK
from obpipe.exchange.matching import DEFAULT_BAND_TICKS, MatchingEngine, requests

BATCH = 4096
_TYPES = {"LIMIT": (schema.OE_NEW, schema.OT_LIMIT, schema.TIF_GTC),
          "IOC": (schema.OE_NEW, schema.OT_LIMIT, schema.TIF_IOC),
          "FOK": (schema.OE_NEW, schema.OT_LIMIT, schema.TIF_FOK),
          "MARKET": (schema.OE_NEW, schema.OT_MARKET, schema.TIF_IOC),
          "CANCEL": (schema.OE_CANCEL, 0, 0),
          "MODIFY": (schema.OE_MODIFY, 0, 0)}
_SIDES = {"BUY": schema.BUY, "SELL": schema.SELL}


class LineError(ValueError):
    """A command line that cannot be read (raised by ``parse_line``)."""


def parse_price(text: str, decimals: int) -> int:
    """'100.05' -> 10005 ticks at 2 decimals (exact: no float)."""
    t = text.strip()
    whole, dot, frac = t.partition(".")
    if not (_digits(whole) and (not dot or _digits(frac))):
        raise LineError(f"price {_short(text)} is not a number like 100.25")
    if len(frac) > decimals:
        raise LineError(f"price {_short(text)} has more than {decimals} decimals")
    whole = whole.lstrip("0") or "0"  # (int() counts leading zeros against its 4,300-digit limit)
    if len(whole) > _MAX_DIGITS:
        raise LineError(f"price {_short(text)} is too large")
    px = int(whole) * 10 ** decimals + int((frac or "0").ljust(decimals, "0") or "0")
    if px > MAX_PX_TICK:
        raise LineError(f"price {_short(text)} is too large")
    return px


_MAX_DIGITS = 19  # more digits than any int64 (and than MAX_PX_TICK): too large, without converting


def _short(text: str) -> str:
    """``text`` quoted, cut to 40 characters (a 100k-digit field is not echoed whole)."""
    t = text.strip()
    return repr(t) if len(t) <= 40 else f"{t[:20]!r}... ({len(t):,} characters)"


def _shown(line: str) -> str:
    """A bad line as echoed on stderr: one line of printable text (control characters,
    line separators such as U+2028 and undecodable bytes escaped), at most ~200 characters."""
    t = line if len(line) <= 200 else line[:200] + "..."
    return t if t.isprintable() else repr(t)[1:-1]


def _digits(t: str) -> bool:
    """ASCII digits only (str.isdigit also accepts '²' and other digits int() refuses)."""
    return t.isascii() and t.isdigit()


def format_price(px_tick: int, decimals: int) -> str:
    if decimals == 0:
        return str(px_tick)
    sign = "-" if px_tick < 0 else ""
    q, r = divmod(abs(px_tick), 10 ** decimals)
    return f"{sign}{q}.{r:0{decimals}d}"


def _int_field(text: str, what: str, lo: int, hi: int) -> int:
    t = text.strip()
    if not _digits(t):
        raise LineError(f"{what} {_short(text)} is not a whole number")
    t = t.lstrip("0") or "0"  # (int() counts leading zeros against its 4,300-digit limit)
    if len(t) > _MAX_DIGITS:
        raise LineError(f"{what} {_short(text)} outside {lo}..{hi}")
    v = int(t)
    if not lo <= v <= hi:
        raise LineError(f"{what} {v} outside {lo}..{hi}")
    return v


def parse_line(line: str, decimals: int, out) -> bool:
    """Fill request ``out`` (one ORDER_IN_DTYPE record) from ``line``; returns False
    for PRINT.  Raises ``LineError`` saying what is wrong."""
    f = [x.strip() for x in line.split(",")]
    kind = f[0].upper()
    if kind == "PRINT":
        if any(f[1:]):
            raise LineError("PRINT takes no fields")
        return False
    if kind not in _TYPES:
        raise LineError(f"unknown command {_short(f[0])} (LIMIT, MARKET, IOC, FOK, CANCEL, MODIFY, PRINT)")
    if len(f) > 6:
        raise LineError(f"{len(f)} fields, at most 6 (TYPE,SIDE,PRICE,QTY,ID,ACCOUNT)")
    f += [""] * (6 - len(f))
    typ, ot, tif = _TYPES[kind]
    out["type"], out["ord_type"], out["tif"] = typ, ot, tif
    out["symbol"], out["order_id"], out["px_tick"], out["qty"] = 0, 0, 0, 0
    out["account"] = _int_field(f[5], "account", 0, (1 << 32) - 1) if f[5] else 0
    if typ == schema.OE_NEW:
        side = _SIDES.get(f[1].upper())
        if side is None:
            raise LineError(f"side {_short(f[1])} is not BUY or SELL")
        out["side"] = side
        if ot == schema.OT_MARKET:
            if f[2]:
                raise LineError("a market order takes no price (MARKET,SIDE,,QTY)")
        elif not f[2]:
            raise LineError(f"{kind} needs a price")
        else:
            out["px_tick"] = parse_price(f[2], decimals)
        if not f[3]:
            raise LineError(f"{kind} needs a quantity")
        out["qty"] = _int_field(f[3], "quantity", 0, schema.MAX_ORDER_QTY)
        if f[4]:
            raise LineError(f"{kind} takes no order id (ids are assigned 1, 2, 3, ...)")
        return True
    if not f[4]:
        raise LineError(f"{kind} needs an order id in field 5 ({kind},,,,ID)")
    out["order_id"] = _int_field(f[4], "order id", 1, (1 << 63) - 1)
    if typ == schema.OE_MODIFY:
        if not f[3]:
            raise LineError("MODIFY needs the new quantity (MODIFY,,[PRICE],QTY,ID)")
        out["qty"] = _int_field(f[3], "quantity", 0, schema.MAX_ORDER_QTY)
        out["px_tick"] = parse_price(f[2], decimals) if f[2] else 0
        if f[2] and out["px_tick"] <= 0:
            raise LineError("MODIFY price must be > 0 (leave it empty to keep the order's price)")
    return True


def format_book(eng: MatchingEngine, decimals: int, symbol: int = 0) -> str:
    """The PRINT block: asks lowest first, then bids highest first."""
    lines = ["=== ORDER BOOK ===", "--- ASKS (lowest first) ---"]
    row = "{:>10}  |{:>10}  ({} orders)"
    lines += [row.format(format_price(p, decimals), q, n) for p, q, n in eng.levels(symbol, schema.SIDE_ASK)]
    lines.append("--- SPREAD ---")
    lines.append("--- BIDS (highest first) ---")
    lines += [row.format(format_price(p, decimals), q, n) for p, q, n in eng.levels(symbol, schema.SIDE_BID)]
    lines.append("==================")
    return "\n".join(lines)


def format_output(out, decimals: int) -> list[str]:
    """Text lines for the reports and trades of one batch, in order.  A fill is one
    TRADE line (printed at the aggressor's fill report, which comes first)."""
    lines = []
    t = 0
    trades = out.trades
    fp = format_price
    for r in out.reports:
        typ = int(r["type"])
        if typ == schema.R_FILL:
            if int(r["flags"]) & schema.RF_AGGRESSOR:
                b, s, px, q = (int(x) for x in trades[t, :4])
                lines.append(f"TRADE {b} {s} {fp(px, decimals)} {q}")
                t += 1
        elif typ == schema.R_CANCELLED:
            reason = int(r["reason"])
            if reason == schema.RS_USER:
                lines.append(f"CANCELLED {int(r['order_id'])}")
            else:
                lines.append(f"CANCELLED {int(r['order_id'])} {schema.REASON_NAMES[reason]} {int(r['qty'])}")
        elif typ == schema.R_REJECT:
            lines.append(f"REJECTED {int(r['order_id'])} {schema.REASON_NAMES[int(r['reason'])]}")
        elif typ == schema.R_MODIFIED:
            lines.append(f"MODIFIED {int(r['order_id'])} {fp(int(r['px_tick']), decimals)} {int(r['qty'])}")
    return lines


def run(stream, out, err, decimals: int = 2, band_ticks: int = DEFAULT_BAND_TICKS,
        capacity: int = 1 << 20, interactive: bool = False) -> int:
    """Run the commands of ``stream``; returns the number of bad lines."""
    eng = MatchingEngine(1, band_ticks=band_ticks, capacity=capacity, max_batch=BATCH)
    buf = requests(BATCH)
    n = 0
    bad = 0

    def flush():
        nonlocal n
        if n:
            res = eng.process(buf[:n])
            text = format_output(res, decimals)
            if text:
                out.write("\n".join(text) + "\n")
            n = 0

    for lineno, line in enumerate(stream, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            is_req = parse_line(s, decimals, buf[n])
        except LineError as e:
            err.write(f"line {lineno}: {e}: {_shown(s)}\n")
            bad += 1
            continue
        if is_req:
            n += 1
            if n == BATCH or interactive:
                flush()
        else:
            flush()
            out.write(format_book(eng, decimals) + "\n")
        if interactive:
            out.flush()
    flush()
    out.flush()
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="obpipe book", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1].split("\n\nLines are parsed")[0])
    p.add_argument("file", nargs="?", help="command file (default: stdin)")
    p.add_argument("--decimals", type=int, default=2, help="price decimals: 1 tick = 10^-decimals (default 2)")
    p.add_argument("--band-ticks", type=int, default=DEFAULT_BAND_TICKS,
                   help="price ladder (window) width in ticks; prices outside it are accepted too (default %(default)s)")
    p.add_argument("--capacity", type=int, default=1 << 20, help="resting orders the book holds")
    a = p.parse_args(argv)
    if not 0 <= a.decimals <= 9:
        p.error(f"--decimals must be 0..9, got {a.decimals}")
    if a.band_ticks < 2 or a.capacity < 1:
        p.error("--band-ticks must be >= 2 and --capacity >= 1")
    try:  # (a byte that is not UTF-8 is a bad line, reported by the parser with its number)
        stream = open(a.file, errors="surrogateescape") if a.file else sys.stdin
        if stream is sys.stdin and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")
    except OSError as e:
        print(f"obpipe book: cannot read {a.file}: {e.strerror}", file=sys.stderr)
        return 2
    with stream:
        bad = run(stream, sys.stdout, sys.stderr, a.decimals, a.band_ticks, a.capacity,
                  interactive=stream.isatty())
    if bad:
        print(f"obpipe book: {bad} bad line(s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
