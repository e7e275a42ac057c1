"""The story service's HTTP side under abuse (issue 13, items 5 and 6): stored script in
the page, DNS rebinding, idle and slow connections, bad parameters, leaked errors, and a
seeded fuzz of query strings.  The server is the real one (uvicorn on a loopback port)
over a real SQLite store; the page runs in Debian's headless Chromium."""
from __future__ import annotations

import contextlib
import html
import http.client
import json
import logging
import re
import socket
import string
import time
import urllib.parse

import pytest

from obpipe.publisher.schema import SIGNAL_KINDS
from obpipe.story import api
from obpipe.story.config import HttpSection
from obpipe.story.http import CSP, serve
from obpipe.story.store import Store, signal_row, summary_row
from tests.helpers import REPO, chromium, make_signal, make_summary, started

T0 = 34_200_000_000_000  # 09:30:00 feed time
I64_MAX = 2**63 - 1


@pytest.fixture
def store(tmp_path):
    s = Store.open(str(tmp_path / "s.db"))
    s.insert([signal_row(make_signal(k, "AMZN", seq=i, ts_exch_ns=T0 + i * 10**8))
              for i, k in enumerate(SIGNAL_KINDS, 1)],
             [summary_row(make_summary(start_ns=T0, end_ns=T0 + 10**8))])
    s.replace_stories("AMZN", "sweep", "buy", 0, None, [("AMZN-1-sweep", "AMZN", "sweep", "buy", T0, T0 + 10**8, 0.5,
                                                   "Aggressive buying", json.dumps(["AMZN-1-sweep"]))])
    yield s
    s.close()


@pytest.fixture
def server(store):
    srv, _ = serve(store, "127.0.0.1", 0)
    yield srv
    srv.shutdown()


def _get(port: int, target: str, host: str | None = None, timeout_s: float = 10) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        c.putrequest("GET", target, skip_host=host is not None)
        if host is not None:
            c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


@pytest.mark.timeout(60)
def test_a_host_header_not_allowed_gets_400_so_a_rebound_name_cannot_read_the_api(server):
    port = server.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "localhost.", "10.0.0.1"):
        code, _, body = _get(port, "/api/stories?symbol=AMZN", host=host)
        assert code == 400 and "is not served here" in json.loads(body)["error"], (host, code, body)
    code, _, body = _get(port, "/", host=f"evil.example:{port}")
    assert code == 400 and b"obpipe" not in body  # nor the page
    for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}"):
        code, _, body = _get(port, "/api/stories?symbol=AMZN", host=host)
        assert code == 200 and [s["id"] for s in json.loads(body)] == ["AMZN-1-sweep"], (host, code, body)


@pytest.mark.timeout(60)
def test_allowed_hosts_is_configurable(store):
    srv, _ = serve(store, "127.0.0.1", 0, cfg=HttpSection(allowed_hosts=("story.internal",)))
    try:
        assert _get(srv.port, "/api/symbols", host="story.internal:8080")[0] == 200
        assert _get(srv.port, "/api/symbols", host="127.0.0.1")[0] == 400
    finally:
        srv.shutdown()


def test_http_config_errors_name_the_key(tmp_path):
    from obpipe.config import ConfigError
    from obpipe.story.config import load

    for table, key in (("allowed_hosts = ['evil example']", "http.allowed_hosts"), ("allowed_hosts = []", "http.allowed_hosts"),
                       ("header_timeout_s = 0.0", "http.header_timeout_s"), ("idle_timeout_s = 1e9", "http.idle_timeout_s"),
                       ("max_connections = 0", "http.max_connections")):
        p = tmp_path / "s.toml"
        p.write_text(f"[http]\n{table}\n")
        with pytest.raises(ConfigError, match=key):
            load(p)
    assert load(None).http.allowed_hosts == ("127.0.0.1", "localhost", "::1")  # configs/story.toml: loopback


def test_the_page_files_are_package_data():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["obpipe.story"]
    import fnmatch
    for name in ("page.html", "page.js", "page.css"):
        assert any(fnmatch.fnmatch(name, pat) for pat in data), (name, data)


@pytest.mark.timeout(60)
def test_a_19_digit_since_and_other_out_of_range_numbers_get_400_with_a_reason(server):
    for target, name in (("/api/stories?since=9999999999999999999", "since"),
                         ("/api/signals?until=9223372036854775808", "until"),
                         ("/api/summaries?since=-1", "since"),
                         ("/api/stories?since=" + "9" * 40 + "d", "since"),
                         ("/api/stories?offset=" + "9" * 19, "offset"),
                         ("/api/signals?limit=1_0", "limit"),
                         ("/api/summaries?points=%D9%A1", "points"),  # an Arabic-Indic digit one
                         ("/api/stories?symbol=" + "A" * 17, "symbol"),
                         ("/api/stories?symbol=%3Cimg%3E", "symbol")):
        code, _, body = _get(server.port, target)
        assert code == 400, (target, code, body)
        assert json.loads(body)["error"].startswith(name + "="), (target, body)
    # the largest legal values answer
    for target in ("/api/stories?since=9223372036854775807", "/api/stories?since=999999999999d&offset=1000000000000"):
        assert _get(server.port, target)[0] == 200, target


@pytest.mark.timeout(60)
def test_an_unexpected_error_is_500_without_its_text_and_is_logged(store, server, caplog):
    store.execute("DROP TABLE stories")
    store.conn().commit()
    with caplog.at_level(logging.ERROR, logger="obpipe.story.http"):
        code, _, body = _get(server.port, "/api/stories?symbol=AMZN")
    assert code == 500
    assert json.loads(body) == {"error": "internal error (logged by the service)"}
    assert b"stories" not in body and b"Error" not in body  # no exception class, no table name
    assert any("no such table" in r.getMessage() + str(r.exc_info) for r in caplog.records)


@pytest.mark.timeout(120)
def test_idle_and_slow_connections_are_closed_and_500_idle_ones_do_not_delay_a_query(store):
    cfg = HttpSection(header_timeout_s=2.0, idle_timeout_s=1.0)
    srv, _ = serve(store, "127.0.0.1", 0, cfg=cfg)
    idle: list[socket.socket] = []
    try:
        for _ in range(500):  # connected, never a byte
            idle.append(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # a head one byte at a time
        kept = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # keep-alive after one answer
        kept.sendall(b"GET /api/symbols HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert kept.recv(65536).split(b"\r\n", 1)[0].endswith(b" 200 OK")
        t = time.monotonic()
        code, _, body = _get(srv.port, "/api/stories?symbol=AMZN&since=10m", timeout_s=5)
        took = time.monotonic() - t
        assert code == 200 and json.loads(body)[0]["id"] == "AMZN-1-sweep"
        assert took < 1.0, f"a query took {took:.2f} s with 500 idle connections open"

        head = b"GET /api/symbols HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 1000
        closed_slow = None
        t0 = time.monotonic()
        for i, byte in enumerate(head):  # 5 bytes/s: 200 s for the head, if the server waited
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                closed_slow = time.monotonic() - t0
                break
            slow.settimeout(0.2)
            try:
                if slow.recv(1) == b"":
                    closed_slow = time.monotonic() - t0
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed_slow = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 15:
                break
        assert closed_slow is not None and closed_slow < 2.0 + 3.0, "a byte-trickling client was not closed"

        def closed(s: socket.socket, by: float) -> bool:
            """Closed by the server before ``by``, reading what is left of an answer (the
            kept-alive one's body may come in a later segment than its head)."""
            while True:
                s.settimeout(max(0.01, by - time.monotonic()))
                try:
                    if s.recv(65536) == b"":
                        return True
                except ConnectionResetError:
                    return True
                except socket.timeout:
                    return False
        by = time.monotonic() + 10
        assert closed(kept, by), "a kept-alive idle connection was not closed"
        still_open = sum(not closed(s, by) for s in idle)
        assert still_open == 0, f"{still_open} of 500 silent connections still open"
        assert srv.open_connections() == 0
        assert _get(srv.port, "/api/symbols")[0] == 200  # and it still serves
    finally:
        for s in idle:
            s.close()
        srv.shutdown()


@pytest.mark.timeout(120)
def test_a_client_that_never_reads_its_answers_is_dropped(store):
    text = "x" * 1000
    store.replace_stories("AMZN", "imbalance", "buy", 0, None, [(f"AMZN-{i}-imbalance", "AMZN", "imbalance", "buy", T0 + i,
                                                          T0 + i, 0.5, text, "[]") for i in range(5000)])
    srv, _ = serve(store, "127.0.0.1", 0, cfg=HttpSection(header_timeout_s=1.0, idle_timeout_s=1.0))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(b"GET /api/stories?kind=imbalance&limit=5000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4)
        deadline = time.monotonic() + 2
        while srv.open_connections() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.open_connections() == 1  # (~5 MB per answer, a 4 KiB receive buffer, nothing read)
        deadline = time.monotonic() + 15
        while srv.open_connections() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert srv.open_connections() == 0, "a client reading nothing still holds its connection"
        assert _get(srv.port, "/api/symbols")[0] == 200
    finally:
        sock.close()
        srv.shutdown()


@pytest.mark.timeout(60)
def test_obpipe_story_serve_answers_and_ctrl_c_ends_it_within_2_s_even_with_connections_open(tmp_path):
    import signal
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "obpipe.story", "serve", "--db", str(tmp_path / "s.db"), "--port", "0"],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    idle = []
    with contextlib.closing(p.stderr), started(p):  # (stopped, then its pipe closed)
        try:
            line = p.stderr.readline()
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", line).group(1))
            assert _get(port, "/api/symbols")[:1] == (200,)
            idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
            idle[0].sendall(b"GET /api/symbols HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a head
            t = time.monotonic()
            p.send_signal(signal.SIGINT)
            assert p.wait(10) == 0 and time.monotonic() - t < 2.0, p.stderr.read()
        finally:
            for s in idle:
                s.close()


@pytest.mark.timeout(60)
def test_a_kept_alive_connection_answers_without_a_nagle_stall(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    took = []
    try:
        for _ in range(21):
            t = time.monotonic()
            c.request("GET", "/api/symbols")
            assert c.getresponse().read().startswith(b"[")
            took.append(time.monotonic() - t)
        (conn,) = server._server.server_state.connections  # (uvicorn's: the one accepted socket)
        assert conn.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        c.close()
    # ~0.5 ms each; a listening socket made without IPPROTO_TCP left asyncio's TCP_NODELAY off: 40+ ms each
    assert sorted(took)[10] < 0.030, took


@pytest.mark.timeout(60)
def test_the_page_is_served_under_a_csp_forbidding_inline_script_and_builds_no_markup(server):
    code, hdr, page = _get(server.port, "/")
    assert code == 200 and hdr["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    assert hdr["x-content-type-options"] == "nosniff"
    text = page.decode()
    assert re.findall(r"<script[^>]*>", text) == ['<script src="/page.js" defer>']  # no inline script
    assert "<script src=\"/page.js\" defer></script>" in text and " style=" not in text and " on" not in text
    code, hdr, js = _get(server.port, "/page.js")
    assert code == 200 and hdr["content-type"].startswith("text/javascript")
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", js.decode())
    code, hdr, _ = _get(server.port, "/api/symbols")
    assert hdr["content-type"] == "application/json" and hdr["x-content-type-options"] == "nosniff"


# -- stored XSS, in the browser ------------------------------------------------------------

#: Each payload would mark the body (``data-xss``) and the title if it ever ran as script.
P_IMG = "<img src=x onerror=\"document.body.dataset.xss='img';document.title='XSS'\">"
P_SCRIPT = "\"><script>document.body.dataset.xss='script';document.title='XSS'</script>"
P_ATTR = "x\" onmouseover=\"document.body.dataset.xss='attr'\" data-x=\""


def _xss_store(tmp_path) -> tuple[Store, list[tuple]]:
    """Stories whose id, text, kind and symbol carry script, written straight into the
    store (as a compromised producer or a service without validation would have)."""
    s = Store.open(str(tmp_path / "xss.db"))
    rows = [(f"AMZN-1-{P_SCRIPT}{P_IMG}", "AMZN", "sweep", "buy", T0, T0 + 10**8, 0.9, P_IMG + " then " + P_SCRIPT,
             json.dumps(["a"])),
            (P_ATTR, "AMZN", "sweep", "buy", T0 + 10**9, T0 + 2 * 10**9, 0.5, P_SCRIPT, json.dumps(["b", "c"])),
            (f"AMZN-3-{P_IMG}", "AMZN", P_IMG, "buy", T0 + 3 * 10**9, T0 + 4 * 10**9, 0.1, P_ATTR, json.dumps([]))]
    for r in rows:
        s.replace_stories(r[1], r[2], r[3], r[4], None, [r])
    bad_sym = (f"X-1-{P_IMG}", P_IMG + P_SCRIPT, "sweep", "buy", T0, T0 + 1, 0.5, P_IMG, json.dumps(["d"]))
    s.replace_stories(bad_sym[1], "sweep", "buy", T0, None, [bad_sym])
    return s, rows


def _dump(port: int, query: str) -> str:
    dom = chromium("--virtual-time-budget=6000", "--dump-dom", f"http://127.0.0.1:{port}/{query}", timeout_s=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout


#: (tag, attribute names) of every element the page itself makes.
PAGE_ELEMENTS = {("html", "lang"), ("head", ""), ("meta", "charset"), ("title", ""), ("link", "href rel"),
                 ("script", "defer src"), ("body", ""), ("body", "data-loaded data-marked data-plotted data-points data-stories"),
                 ("header", ""), ("h1", ""), ("label", ""), ("select", "id"), ("option", ""), ("option", "selected"),
                 ("option", "value"), ("span", "id"), ("main", ""), ("div", "id"), ("canvas", "height id width"),
                 ("h3", ""), ("div", "class data-id"), ("div", ""), ("div", "class"), ("p", "")}


def _elements(dom: str) -> set[tuple[str, str]]:
    """(tag, sorted attribute names) of every element in a dumped DOM."""
    from html.parser import HTMLParser

    found = set()

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.add((tag, " ".join(sorted(a for a, _ in attrs))))
    P().feed(dom)
    return found


def _body_attrs(dom: str) -> dict:
    return dict(re.findall(r'data-(\w+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))


@pytest.mark.timeout(300)
def test_stored_script_in_story_id_text_kind_and_symbol_renders_as_text_and_never_runs(tmp_path):
    s, rows = _xss_store(tmp_path)
    srv, _ = serve(s, "127.0.0.1", 0)
    try:
        dom = _dump(srv.port, "?symbol=AMZN&since=1d")
        attrs = _body_attrs(dom)
        assert attrs.get("loaded") == "1" and attrs.get("stories") == "3", (attrs, dom[-2000:])  # the page ran
        assert "xss" not in attrs and "<title>obpipe stories</title>" in dom, dom[-3000:]  # no payload ran
        assert _elements(dom) <= PAGE_ELEMENTS, _elements(dom) - PAGE_ELEMENTS  # no img, no script, no on*=
        shown = [(html.unescape(i), html.unescape(t), html.unescape(meta)) for i, t, meta in re.findall(
            r'<div class="story sev-\w+" data-id="([^"]*)"><div>(.*?)</div><div class="t">(.*?)</div></div>', dom)]
        newest_first = sorted(rows, key=lambda r: r[4], reverse=True)
        assert [(i, t) for i, t, _ in shown] == [(r[0], r[7]) for r in newest_first]  # the literal text
        assert P_IMG in shown[0][2]  # the kind, as text
        options = [html.unescape(o) for o in re.findall(r"<option[^>]*>(.*?)</option>", dom)]
        assert P_IMG + P_SCRIPT in options and "AMZN" in options  # the symbol, listed as text

        # a link naming the payload symbol: shown as text, never queried, nothing runs
        dom = _dump(srv.port, "?symbol=" + urllib.parse.quote(P_IMG + P_SCRIPT) + "&since=1d")
        attrs = _body_attrs(dom)
        assert "xss" not in attrs and "<title>obpipe stories</title>" in dom and _elements(dom) <= PAGE_ELEMENTS
        assert "that symbol cannot be queried" in dom
    finally:
        srv.shutdown()
        s.close()


# -- fuzz ------------------------------------------------------------------------------------

_PATHS = {"/api/stories": ("symbol", "kind", "since", "until", "limit", "offset", "order"),
          "/api/signals": ("symbol", "kind", "since", "until", "limit", "offset"),
          "/api/summaries": ("symbol", "since", "until", "limit", "offset", "points")}
_RANGES = {"limit": (1, api.MAX_LIMIT), "offset": (0, api.MAX_OFFSET), "points": (1, api.MAX_LIMIT)}


def _valid(path: str, name: str, value: str) -> bool:
    """The reference: is this one parameter acceptable (the API's rules, written plainly)?"""
    if name not in _PATHS[path]:
        return False
    digits = value.lstrip("-")
    is_int = 1 <= len(digits) <= 19 and all(c in string.digits for c in digits) and len(value) - len(digits) <= 1
    if name in _RANGES:
        lo, hi = _RANGES[name]
        return is_int and lo <= int(value) <= hi
    if name == "symbol":
        return 1 <= len(value) <= 16 and all(c in string.ascii_letters + string.digits + "._-" for c in value)
    if name == "kind":
        return value in SIGNAL_KINDS
    if name == "order":
        return value in ("asc", "desc")
    if value == "":  # since/until: blank is no bound
        return True
    if is_int:
        return 0 <= int(value) <= I64_MAX
    m = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?(ms|s|m|h|d)", value)
    return bool(m) and len(m.group(1)) <= 12 and len(m.group(2) or "") <= 9


@pytest.mark.fuzz
@pytest.mark.timeout(300)
def test_fuzzed_query_strings_get_200_json_or_400_naming_the_bad_parameter_never_5xx(server, fuzz_scale):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = {"symbol": st.sampled_from(["AMZN", "S0", "a.b-c_d", "A" * 16]),
            "kind": st.sampled_from(SIGNAL_KINDS),
            "since": st.one_of(st.sampled_from(["10m", "1.5s", "90ms", "999999999999d", "", "0", str(I64_MAX)]),
                               st.integers(-10, 10**19 + 10).map(str)),
            "limit": st.integers(-1, api.MAX_LIMIT + 1).map(str), "offset": st.integers(-1, 10**13).map(str),
            "order": st.sampled_from(["asc", "desc"]), "points": st.integers(-1, api.MAX_LIMIT + 1).map(str)}
    good["until"] = good["since"]
    junk = st.one_of(st.text(max_size=40), st.text(alphabet="0123456789-._msdh ", max_size=25),
                     st.sampled_from([P_IMG, P_SCRIPT, "'; DROP TABLE stories; --", "%00", "1e9", "NaN", "1_000",
                                      "\u0661", "9" * 19, "9" * 400 + "d", "-0", "+1", " 1", "1 ", "10m\n"]))
    any_name = st.sampled_from(sorted(good) + ["colour", "", "SYMBOL", "kind[]", "since "])

    @st.composite
    def query(draw):
        path = draw(st.sampled_from(sorted(_PATHS)))
        mine = st.sampled_from(_PATHS[path])
        pair = st.one_of(mine.flatmap(lambda n: st.tuples(st.just(n), good[n])),  # mostly well-formed ...
                         mine.flatmap(lambda n: st.tuples(st.just(n), good[n])),
                         mine.flatmap(lambda n: st.tuples(st.just(n), good[n])),
                         st.tuples(mine, junk), st.tuples(any_name, st.one_of(junk, good["since"])))  # ... or not
        return path, draw(st.lists(pair, max_size=5))

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    seen = {200: 0, 400: 0}

    @settings(max_examples=800 * fuzz_scale, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(q=query())
    def one(q):
        path, params = q
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        conn.request("GET", target)
        r = conn.getresponse()
        body = r.read()
        assert r.status in (200, 400), (target, r.status, body[:300])
        assert r.getheader("content-type") == "application/json"
        doc = json.loads(body)
        last = dict(params)  # (the last of a repeated parameter counts; every kind counts)
        bad = [n for n, v in params if n == "kind" and not _valid(path, n, v)] + \
              [n for n, v in last.items() if n != "kind" and not _valid(path, n, v)]
        if r.status == 400:
            assert bad, f"{target}: refused, but every parameter is valid: {doc}"
            assert isinstance(doc["error"], str) and any(repr(n[:40]) in doc["error"] or doc["error"].startswith(
                f"{n}=") for n in bad), (target, doc)
        else:
            assert not bad, f"{target}: answered 200 despite bad {bad}"
            assert isinstance(doc, list)
        seen[r.status] += 1

    try:
        one()
    finally:
        conn.close()
    assert seen[200] > 60 and seen[400] > 60, seen  # both sides of the rules were exercised
