"""The story service's HTTP side: a JSON API and one web page (stdlib ``http.server``).

    GET /                      the page: a symbol's mid and spread over time (from the
                               summaries) with its stories marked on it and listed beside,
                               refreshed every 2 s
    GET /api/symbols
    GET /api/stories?symbol=&kind=&since=&until=&limit=&offset=&order=asc|desc
    GET /api/signals?symbol=&kind=&since=&until=&limit=&offset=
    GET /api/summaries?symbol=&since=&until=&limit=&offset=[&points=N]  (N: buckets, for charts)
    GET /api/stats             the consumer's counters (when it runs in this process)

Unknown or bad parameters get 400 with ``{"error": ...}``; SQL is parameterized
(``story.api``).  Binds 127.0.0.1 unless configured otherwise.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from . import api
from .store import Store

PAGE = Path(__file__).with_name("page.html")
_PARAMS = {"/api/stories": {"symbol", "kind", "since", "until", "limit", "offset", "order"},
           "/api/signals": {"symbol", "kind", "since", "until", "limit", "offset"},
           "/api/summaries": {"symbol", "since", "until", "limit", "offset", "points"},
           "/api/symbols": set(), "/api/stats": set()}


def _int(q: dict, name: str, default: int) -> int:
    v = q.get(name, [None])[-1]
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        raise api.BadQuery(f"{name}={v!r}: a whole number") from None


class _Handler(BaseHTTPRequestHandler):
    server_version = "obpipe-story"
    store: Store
    stats = None  # callable -> dict

    def log_message(self, fmt, *args):  # quiet: the service logs what matters
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def do_GET(self):  # noqa: N802 (http.server's name)
        u = urlparse(self.path)
        q = parse_qs(u.query, keep_blank_values=True)
        try:
            if u.path in ("/", "/index.html"):
                self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
                return
            if u.path not in _PARAMS:
                self._json(404, {"error": f"no such path {u.path}"})
                return
            unknown = set(q) - _PARAMS[u.path]
            if unknown:
                raise api.BadQuery(f"unknown parameter(s) {', '.join(sorted(unknown))} "
                                   f"(known: {', '.join(sorted(_PARAMS[u.path])) or 'none'})")
            one = {k: v[-1] for k, v in q.items()}
            kinds = q.get("kind")
            st = self.store
            if u.path == "/api/symbols":
                out = api.symbols(st)
            elif u.path == "/api/stats":
                out = self.stats() if self.stats else {}
            elif u.path == "/api/stories":
                order = one.get("order", "asc")
                if order not in ("asc", "desc"):
                    raise api.BadQuery(f"order={order!r}: asc or desc")
                out = api.stories_query(st, one.get("symbol"), kinds, one.get("since"), one.get("until"),
                                        _int(q, "limit", 100), _int(q, "offset", 0), newest_first=order == "desc")
            elif u.path == "/api/signals":
                out = api.signals_query(st, one.get("symbol"), kinds, one.get("since"), one.get("until"),
                                        _int(q, "limit", 100), _int(q, "offset", 0))
            else:
                out = api.summaries_query(st, one.get("symbol"), one.get("since"), one.get("until"),
                                          _int(q, "limit", 1000), _int(q, "offset", 0),
                                          _int(q, "points", 0) if "points" in q else None)
            self._json(200, out)
        except api.BadQuery as e:
            self._json(400, {"error": str(e)})
        except Exception as e:  # a database error must not kill the server
            self._json(500, {"error": f"{type(e).__name__}: {e}"})


def serve(store: Store, host: str, port: int, stats=None) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start the HTTP server in a daemon thread; returns (server, thread)."""
    handler = type("Handler", (_Handler,), {"store": store, "stats": staticmethod(stats) if stats else None})
    srv = ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, name="story-http", daemon=True)
    t.start()
    return srv, t
