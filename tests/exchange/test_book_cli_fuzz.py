"""Fuzz `obpipe book` with random and mutated CSV lines (issue 13): it never raises, every
line it cannot read is reported on stderr with its number (and only those), and its
output for the lines it reads equals the reference matcher's for the same requests."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from obpipe.exchange import csv_cli as book_cli
from obpipe.exchange.matching import requests
from obpipe.ring import schema as sc
from tests.helpers import REPO

from .reference_matcher import RefMatcher

KINDS = ["LIMIT", "IOC", "FOK", "MARKET", "CANCEL", "MODIFY", "PRINT"]
NASTY = ["9" * 5000, "0" * 5000 + "1", "1²", "٣", "-1", "+1", "1e3", "0x10", "nan", " ", "", ",", "\x00", "\t7",
         "1.", ".5", "1.234", "4294967296", str((1 << 63) - 1), str(1 << 64), "\udcff", "ß", "LIMIT"]


def _price(r) -> str:
    u = r.random()
    if u < 0.05:  # far from the market: parked, or moves the window
        return f"{int(r.integers(1, 10 ** int(r.integers(1, 9))))}.{int(r.integers(100)):02d}"
    return f"{100 + int(r.integers(-30, 31)) // 10}.{int(r.integers(0, 100)):02d}"


def valid_line(r, next_id: int) -> str:
    kind = KINDS[int(r.choice(len(KINDS), p=[0.42, 0.08, 0.08, 0.07, 0.15, 0.15, 0.05]))]
    side = "BUY" if r.random() < 0.5 else "SELL"
    qty = str(int(r.integers(1, 80)))
    acct = f",,{int(r.integers(0, 4))}" if r.random() < 0.3 else ""
    oid = str(int(r.integers(1, next_id + 2)))
    if kind in ("LIMIT", "IOC", "FOK"):
        return f"{kind},{side},{_price(r)},{qty}{acct}"
    if kind == "MARKET":
        return f"MARKET,{side},,{qty}{acct}"
    if kind == "CANCEL":
        return f"CANCEL,,,,{oid}" + (f",{int(r.integers(0, 4))}" if acct else "")
    if kind == "MODIFY":
        px = _price(r) if r.random() < 0.6 else ""
        return f"MODIFY,,{px},{qty},{oid}" + (f",{int(r.integers(0, 4))}" if acct else "")
    return "PRINT"


def mutate(r, line: str) -> str:
    """One to three random edits: a character flipped, dropped or inserted, a field
    replaced by something nasty, fields added or removed, case changed."""
    for _ in range(int(r.integers(1, 4))):
        op = int(r.integers(6))
        f = line.split(",")
        if op == 0 and line:
            i = int(r.integers(len(line)))
            line = line[:i] + chr(int(r.integers(1, 0x250))) + line[i + 1:]
        elif op == 1 and line:
            i = int(r.integers(len(line)))
            line = line[:i] + line[i + 1:]
        elif op == 2:
            f[int(r.integers(len(f)))] = NASTY[int(r.integers(len(NASTY)))]
            line = ",".join(f)
        elif op == 3:
            f.insert(int(r.integers(len(f) + 1)), NASTY[int(r.integers(len(NASTY)))])
            line = ",".join(f)
        elif op == 4 and len(f) > 1:
            del f[int(r.integers(len(f)))]
            line = ",".join(f)
        else:
            line = line.lower() if r.random() < 0.5 else line.swapcase()
    return line.replace("\n", " ").replace("\r", " ")


def random_line(r) -> str:
    n = int(r.integers(0, 40))
    return "".join(chr(int(x)) for x in r.integers(0x20, 0x7F, n)) if r.random() < 0.7 else \
        "".join(chr(int(x)) for x in r.integers(1, 0x3000, n)).replace("\n", " ").replace("\r", " ")


def campaign(seed: int, n: int) -> list[str]:
    r = np.random.default_rng(seed)
    lines, ids = [], 1
    for _ in range(n):
        u = r.random()
        line = valid_line(r, ids)
        if u < 0.25:
            line = mutate(r, line)
        elif u < 0.30:
            line = random_line(r)
        if line.split(",")[0].strip().upper() in ("LIMIT", "IOC", "FOK", "MARKET"):
            ids += 1
        lines.append(line)
    return lines


def reference_output(lines: list[str], bad: set[int]) -> list[str]:
    """What `obpipe book` must print for ``lines`` whose numbers in ``bad`` are not read:
    the reference matcher's reports, formatted by the same rules, request by request."""
    ref = RefMatcher(1, capacity=1 << 20)
    out = []
    req = requests(1)
    fp = book_cli.format_price
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if no in bad or not s or s.startswith("#"):
            continue
        if not book_cli.parse_line(s, 2, req[0]):  # PRINT
            out.append("=== ORDER BOOK ===")
            out.append("--- ASKS (lowest first) ---")
            row = "{:>10}  |{:>10}  ({} orders)"
            out += [row.format(fp(p, 2), q, c) for p, q, c in ref.levels(0, sc.SIDE_ASK)]
            out += ["--- SPREAD ---", "--- BIDS (highest first) ---"]
            out += [row.format(fp(p, 2), q, c) for p, q, c in ref.levels(0, sc.SIDE_BID)]
            out.append("==================")
            continue
        reports, trades, _md = ref.process(req)
        t = 0
        for typ, side, reason, flags, _sym, qty, _leaves, px, oid, _acct in reports:
            if typ == sc.R_FILL and flags & sc.RF_AGGRESSOR:
                b, s_, tpx, tq, _ = trades[t]
                out.append(f"TRADE {b} {s_} {fp(tpx, 2)} {tq}")
                t += 1
            elif typ == sc.R_CANCELLED:
                out.append(f"CANCELLED {oid}" if reason == sc.RS_USER else
                           f"CANCELLED {oid} {sc.REASON_NAMES[reason]} {qty}")
            elif typ == sc.R_REJECT:
                out.append(f"REJECTED {oid} {sc.REASON_NAMES[reason]}")
            elif typ == sc.R_MODIFIED:
                out.append(f"MODIFIED {oid} {fp(px, 2)} {qty}")
    return out


@pytest.mark.fuzz
@pytest.mark.timeout(600)
def test_random_and_mutated_lines_never_crash_and_valid_ones_match_the_reference(fuzz_scale):
    n = 20_000 * fuzz_scale
    lines = campaign(20261202, n)
    out, err = io.StringIO(), io.StringIO()
    n_bad = book_cli.run(io.StringIO("\n".join(lines) + "\n"), out, err)  # (an exception fails the test)
    err_lines = err.getvalue().split("\n")[:-1]  # (not splitlines: it also splits at U+2028 and friends)
    assert all(e.isprintable() and len(e) < 500 for e in err_lines)  # one short line each
    reported = [e.split(":", 1)[0] for e in err_lines]
    assert all(x.startswith("line ") for x in reported), err.getvalue()[:2000]
    bad = {int(x[5:]) for x in reported}
    assert len(bad) == len(reported) == n_bad
    # exactly the lines the parser refuses are reported (and, among them, every line
    # built invalid on purpose that the parser must refuse)
    req = requests(1)
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            assert no not in bad
            continue
        try:
            book_cli.parse_line(s, 2, req[0])
            ok = True
        except book_cli.LineError:
            ok = False
        assert ok == (no not in bad), (no, line)
    assert 0.1 * n < len(bad) < 0.5 * n  # the campaign is what it means to be
    assert out.getvalue().splitlines() == reference_output(lines, bad)


@pytest.mark.fuzz
@pytest.mark.timeout(300)
def test_random_bytes_in_a_file_are_bad_lines_not_a_traceback(tmp_path, fuzz_scale):
    r = np.random.default_rng(7)
    rows = [bytes(r.integers(0, 256, int(r.integers(0, 60)), dtype=np.uint8)).replace(b"\n", b" ")
            for _ in range(2000 * fuzz_scale)]
    rows[::3] = [b"LIMIT,BUY,100.00,5"] * len(rows[::3])
    p = tmp_path / "bytes.csv"
    p.write_bytes(b"\n".join(rows) + b"\n")
    res = subprocess.run([sys.executable, "-m", "obpipe", "book", str(p)], capture_output=True, cwd=REPO,
                         timeout=240, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    err = res.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in res.stderr and res.returncode == 1, err[-2000:]
    assert err.splitlines()[-1].startswith("obpipe book: ") and "bad line(s)" in err.splitlines()[-1]
    assert all(e.startswith("line ") for e in err.splitlines()[:-1])
    assert res.stdout.decode().count("\n") == 0  # only resting bids: no trade, no PRINT
