"""The story service's HTTP side: a JSON API and one web page (Starlette on uvicorn).

    GET /                      the page: a symbol's mid and spread over time (from the
                               summaries) with its stories marked on it and listed beside,
                               refreshed every 2 s (page.js, page.css: no inline script)
    GET /api/symbols
    GET /api/stories?symbol=&kind=&since=&until=&limit=&offset=&order=asc|desc
    GET /api/signals?symbol=&kind=&since=&until=&limit=&offset=
    GET /api/summaries?symbol=&since=&until=&limit=&offset=[&points=N]  (N: buckets, for charts)
    GET /api/stats             the consumer's counters (when it runs in this process)

Design: the server must not hold a thread per connection, keep a connection that
never finishes a request, answer for any Host, or send exception text to the client
(docs/DECISIONS.md "The story service's HTTP side").  So:

- uvicorn (asyncio + h11) holds an idle connection as one socket, not a thread; a
  connection must send a whole request head within ``header_timeout_s`` of opening or
  of its last response (``_Protocol``: uvicorn arms its keep-alive timer only after a
  response, and any byte cancels it, so alone it would keep a silent or byte-trickling
  client forever), and one idle ``idle_timeout_s`` after a response is closed;
  past ``max_connections`` requests get 503.
- Every request's Host must be in ``allowed_hosts`` (loopback names by default), else
  400: a page on another origin whose name was rebound to 127.0.0.1 cannot read the API.
- Every bad parameter is 400 ``{"error": reason}`` (the reason names the parameter);
  an unexpected error is logged with its traceback and answered 500
  ``{"error": "internal error"}``, never its text.
- The page is built with ``textContent`` (stored text is data, never markup) and
  served with a Content-Security-Policy that allows only this origin's script and
  style files (no inline script, no ``eval``, no other origin).

SQL is parameterized (``story.api``).  Binds 127.0.0.1 unless configured otherwise.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from obpipe.story import api
from obpipe.story.config import HttpSection
from obpipe.story.store import Store

log = logging.getLogger("obpipe.story.http")

HERE = Path(__file__).parent
#: Static files: name -> content type (read at start; the package ships them, see pyproject).
STATIC = {"page.html": "text/html; charset=utf-8", "page.js": "text/javascript; charset=utf-8",
          "page.css": "text/css; charset=utf-8"}
#: Only this origin's files; no inline script or style, no eval, no frames, no forms.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                     "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
_PARAMS = {"/api/stories": {"symbol", "kind", "since", "until", "limit", "offset", "order"},
           "/api/signals": {"symbol", "kind", "since", "until", "limit", "offset"},
           "/api/summaries": {"symbol", "since", "until", "limit", "offset", "points"},
           "/api/symbols": set(), "/api/stats": set()}


def _json(code: int, obj) -> JSONResponse:
    return JSONResponse(obj, code, headers=_SECURITY_HEADERS)


def _error(code: int, why: str) -> JSONResponse:
    return _json(code, {"error": why})


class _Query:
    """A request's query string, checked against the path's known parameters."""

    def __init__(self, path: str, request: Request):
        items = request.query_params.multi_items()
        unknown = {k for k, _ in items} - _PARAMS[path]
        if unknown:
            raise api.BadQuery(f"unknown parameter(s) {', '.join(sorted(repr(u[:40]) for u in unknown))} "
                               f"(known: {', '.join(sorted(_PARAMS[path])) or 'none'})")
        self.one = dict(items)  # the last of a repeated parameter
        self.kinds = [v for k, v in items if k == "kind"] or None

    def int(self, name: str, default: int | None, lo: int, hi: int) -> int | None:
        v = self.one.get(name)
        return default if v is None else api.parse_int(name, v, lo, hi)


def _answer(path: str, request: Request, store: Store, stats):
    q = _Query(path, request)
    if path == "/api/symbols":
        return api.symbols(store)
    if path == "/api/stats":
        return stats() if stats else {}
    one, lim, off = q.one, q.int("limit", None, 1, api.MAX_LIMIT), q.int("offset", 0, 0, api.MAX_OFFSET)
    if path == "/api/stories":
        order = one.get("order", "asc")
        if order not in ("asc", "desc"):
            raise api.BadQuery(f"order={order[:40]!r}: asc or desc")
        return api.stories_query(store, one.get("symbol"), q.kinds, one.get("since"), one.get("until"),
                                 lim or 100, off, newest_first=order == "desc")
    if path == "/api/signals":
        return api.signals_query(store, one.get("symbol"), q.kinds, one.get("since"), one.get("until"),
                                 lim or 100, off)
    return api.summaries_query(store, one.get("symbol"), one.get("since"), one.get("until"), lim or 1000, off,
                               q.int("points", None, 1, api.MAX_LIMIT))


def _host_of(header: str) -> str:
    """The name in a Host header, without its port ("[::1]:80" -> "::1")."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class _AllowedHosts:
    """ASGI middleware: a request whose Host is not allowed is answered 400 (DNS rebinding)."""

    def __init__(self, app, allowed: tuple[str, ...]):
        self.app, self.any = app, "*" in allowed
        self.allowed = {h.lower().strip("[]") for h in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.any:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            if host is None or _host_of(host) not in self.allowed:
                resp = _error(400, f"Host {host[:60]!r} is not served here" if host else "no Host header")
                await resp(scope, receive, send)
                return
        await self.app(scope, receive, send)


def app(store: Store, cfg: HttpSection = HttpSection(), stats=None) -> _AllowedHosts:
    """The ASGI application: the page, its two static files and the JSON API."""
    files = {name: (HERE / name).read_bytes() for name in STATIC}

    def static(name: str):
        def endpoint(request: Request) -> Response:
            return Response(files[name], 200, headers=_SECURITY_HEADERS, media_type=STATIC[name])
        return endpoint

    def api_endpoint(path: str):
        def endpoint(request: Request) -> Response:  # (sync: Starlette runs it in its thread pool)
            try:
                return _json(200, _answer(path, request, store, stats))
            except api.BadQuery as e:
                return _error(400, str(e))
            except Exception:  # a database error must not kill the server, nor reach the client
                log.exception("story http: %s?%s failed", path, request.url.query[:200])
                return _error(500, "internal error (logged by the service)")
        return endpoint

    async def not_found(request: Request, exc) -> Response:
        return _error(exc.status_code, f"no such path {request.url.path[:80]!r}" if exc.status_code == 404
                      else "method not allowed" if exc.status_code == 405 else "bad request")

    routes = [Route("/", static("page.html")), Route("/index.html", static("page.html")),
              Route("/page.js", static("page.js")), Route("/page.css", static("page.css"))]
    routes += [Route(p, api_endpoint(p)) for p in _PARAMS]
    inner = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return _AllowedHosts(inner, cfg.allowed_hosts)


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline: a connection that has not
    sent a whole request head ``header_timeout_s`` after opening (or after its last
    response) is closed, whether it is silent or trickles bytes (slowloris); one that
    has not read its answers by then (bytes still buffered for it) is aborted.  A
    request whose query is still running is looked at again one deadline later."""

    header_timeout_s = 10.0  # (set per server by a subclass)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_deadline = None
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_deadline()

    def connection_lost(self, exc) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport.get_write_buffer_size():  # answers unread a whole deadline after the last one
            self.transport.abort()  # (close() would wait for the buffer to drain: forever)
            return
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:  # a query still running
            self._arm_head_deadline()
            return
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:  # (mid-request head: nothing to tell h11)
            pass
        self.transport.close()


class StoryHttp:
    """The running server: ``port``, ``server_address`` and ``shutdown()``."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket, thread: threading.Thread):
        self._server, self._sock, self.thread = server, sock, thread
        self.server_address = sock.getsockname()[:2]
        self.port = self.server_address[1]

    def open_connections(self) -> int:
        """Connections the server holds now (for tests and diagnostics)."""
        return len(self._server.server_state.connections)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._server.should_exit = True
        self.thread.join(timeout_s)
        self._sock.close()


def serve(store: Store, host: str, port: int, stats=None, cfg: HttpSection | None = None) -> tuple[StoryHttp, threading.Thread]:
    """Start the HTTP server in a daemon thread (its own event loop); returns (server, thread)
    once it accepts.  ``cfg``: the ``[http]`` section's limits (host and port are the arguments)."""
    cfg = cfg or HttpSection()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # (proto named: asyncio then sets
    # TCP_NODELAY on accepted sockets; with proto 0 it does not, and a kept-alive small answer waits ~40 ms)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    protocol = type("Protocol", (_Protocol,), {"header_timeout_s": cfg.header_timeout_s})
    config = uvicorn.Config(app(store, cfg, stats), http=protocol, lifespan="off", log_config=None,
                            access_log=False, server_header=False, timeout_keep_alive=cfg.idle_timeout_s,
                            limit_concurrency=cfg.max_connections, timeout_graceful_shutdown=2,
                            h11_max_incomplete_event_size=16 * 1024)
    server = uvicorn.Server(config)
    t = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), name="story-http", daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"story http did not start on {host}:{port}")
        time.sleep(0.01)
    srv = StoryHttp(server, sock, t)
    return srv, t
