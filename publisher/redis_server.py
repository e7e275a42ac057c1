"""A Redis server of our own (Debian's ``redis-server``) for ``obpipe run``, demos and tests.

Design: ``EmbeddedRedis.start`` runs ``redis-server`` as a child process with no
persistence (``--save "" --appendonly no``: a restart forgets every key, which is what
live state wants) in a fresh temporary directory, listening on a unix socket in that
directory (only this user can reach it; ``unixsocketperm 700``) or, when a port is
given, on 127.0.0.1 only, never on every interface. The child runs in its own session
(Ctrl-C in the terminal reaches only us) with PR_SET_PDEATHSIG=SIGKILL, so it dies
with the thread that started it even if we are SIGKILLed. Ready is "the server at the
address says, in ``INFO server``, that its process_id is our child's" (spoken over a raw
socket: no client library needed to start it): a bare PING would be answered by another
server already on that port while ours fails to bind and exits, so a busy port is also
refused up front. ``stop`` signals its own pid only (SIGTERM, then SIGKILL after a grace
period) and removes the directory.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from obpipe.publisher.broker import _die_with_parent, _port_busy, _stop_child, free_port

_PING = b"*1\r\n$4\r\nPING\r\n"
_INFO_SERVER = b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"


class RedisServerError(RuntimeError):
    """Raised by ``EmbeddedRedis.start`` when the server cannot be started: no
    ``redis-server`` binary, the port is busy, or the server exited or never answered
    PING. The message names the binary and the tail of its log."""


def resolve_redis_server() -> str:
    """Path of ``redis-server``; RedisServerError (saying how to get it) if missing."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerError("no redis-server binary on PATH (Debian: apt-get install redis-server; "
                               "`make redis` does it as root)")
    return path


def _ask(url: str, command: bytes, timeout_s: float) -> bytes | None:
    """Send one RESP ``command`` to the Redis at ``url`` and return the raw reply (a
    simple string, or a bulk string's payload); None if it cannot be asked."""
    try:
        if url.startswith("unix://"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr: object = url[len("unix://"):]
        else:
            hostport = url.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
            host, _, port = hostport.rpartition(":")
            s = socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_STREAM)
            addr = (host.strip("[]") or "127.0.0.1", int(port or 6379))
        with s:
            s.settimeout(timeout_s)
            s.connect(addr)
            s.sendall(command)
            reply = s.recv(65536)
            if not reply.startswith(b"$"):
                return reply
            head, _, body = reply.partition(b"\r\n")
            want = int(head[1:])
            while len(body) < want:
                more = s.recv(65536)
                if not more:
                    return None
                body += more
            return body[:want]
    except (OSError, ValueError):
        return None


def ping(url: str, timeout_s: float = 1.0) -> bool:
    """True if the Redis at ``url`` (``unix:///path`` or ``redis://host:port``) answers
    PING within ``timeout_s`` seconds (no AUTH: for our own server and open local ones)."""
    return (_ask(url, _PING, timeout_s) or b"").startswith(b"+PONG")


def server_pid(url: str, timeout_s: float = 1.0) -> int | None:
    """The process id the Redis at ``url`` reports (``INFO server``); None if not asked."""
    info = _ask(url, _INFO_SERVER, timeout_s) or b""
    for line in info.splitlines():
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


class EmbeddedRedis:
    """A running ``redis-server`` without persistence, owned by this process.

    Attributes:
        pid: the server's process id.
        url: ``unix:///<dir>/redis.sock`` or ``redis://127.0.0.1:PORT`` (for redis-py's
            ``Redis.from_url``).
        socket_path: the unix socket (None when listening on a port).
        port: the TCP port on 127.0.0.1 (0 when on a unix socket).
        log_path: the server's log file (removed by ``stop``).

    Use ``EmbeddedRedis.start()``, as a context manager or followed by ``stop()``.
    PR_SET_PDEATHSIG is tied to the starting *thread*: start it from one that outlives
    the server (normally the main thread).
    """

    def __init__(self, proc: subprocess.Popen, work_dir: Path, socket_path: str | None, port: int):
        self._proc = proc
        self.pid = proc.pid
        self._dir = work_dir
        self.socket_path = socket_path
        self.port = port
        self.url = f"unix://{socket_path}" if socket_path else f"redis://127.0.0.1:{port}"
        self.log_path = work_dir / "redis.log"

    @classmethod
    def start(cls, port: int | None = None, *, tag: str = "", timeout_s: float = 10.0, binary: str | None = None,
              cores=None) -> EmbeddedRedis:
        """Start a server and wait until it answers PING.

        Args:
            port: None: a unix socket in a new temporary directory; 0: a free TCP port on
                127.0.0.1; else that port on 127.0.0.1 (e.g. to restart a server where
                its clients look for it).
            tag: put in the temporary directory's name (e.g. the instance name).
            timeout_s: seconds to wait for PONG.
            binary: the server binary; None: ``redis-server`` from PATH.
            cores: CPU cores it may run on; None: every core (not the caller's pinning).

        Raises:
            RedisServerError: binary missing, port busy, server exited or did not answer
                (as itself: another server's answer on that address does not count).
        """
        binary = binary or resolve_redis_server()
        if port and _port_busy(port):
            raise RedisServerError(f"cannot start {binary} on 127.0.0.1:{port}: the port is in use")
        work_dir = Path(tempfile.mkdtemp(prefix=f"obpipe-redis-{tag}-" if tag else "obpipe-redis-"))
        if port is None:
            sock_path, tcp_port = str(work_dir / "redis.sock"), 0
            listen = ["--port", "0", "--unixsocket", sock_path, "--unixsocketperm", "700"]
        else:
            sock_path, tcp_port = None, port or free_port()
            listen = ["--port", str(tcp_port), "--bind", "127.0.0.1"]
        args = [binary, "--save", "", "--appendonly", "no", "--dir", str(work_dir), "--daemonize", "no",
                "--logfile", str(work_dir / "redis.log"), "--protected-mode", "yes", *listen]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent(os.getpid(), cores))
        except OSError as e:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise RedisServerError(f"cannot run {binary}: {e}") from e
        server = cls(proc, work_dir, sock_path, tcp_port)
        deadline = time.monotonic() + timeout_s
        while server_pid(server.url, 0.5) != proc.pid:
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                       else f"did not answer within {timeout_s} s")
                tail = server.log_tail()
                server.stop()
                raise RedisServerError(f"{binary} on {server.url} {why}; its log ends: {tail}")
            time.sleep(0.01)
        return server

    def log_tail(self, n: int = 600) -> str:
        """The last ``n`` characters of the server's log (empty if none)."""
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM the server's own pid, SIGKILL it after ``timeout_s``; remove its
        directory. Idempotent."""
        _stop_child(self._proc, timeout_s)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(pid={self.pid}, url={self.url!r}, alive={self.alive()})"
