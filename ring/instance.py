"""Read a running instance's stats words from outside it (the command line, the story
service): no engine process is imported or started."""
from __future__ import annotations

from obpipe.ring import schema
from obpipe.ring.errors import RingError
from obpipe.ring.stats import ROW_SUPERVISOR, StatsBlock


def instance_word(inst: str, row: int, word: int) -> int:
    """One stats word of running instance ``inst`` (RingError if it is not running)."""
    st = StatsBlock.attach(inst)
    try:
        return int(st.row(row)[word])
    finally:
        st.close()


def instance_bootstrap(inst: str) -> str | None:
    """The embedded broker of running instance ``inst`` as host:port, if it started one."""
    try:
        port = instance_word(inst, ROW_SUPERVISOR, schema.ST_SUP_KAFKA_PORT)
    except RingError:
        return None
    return f"127.0.0.1:{port}" if port > 0 else None
