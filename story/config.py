"""The story service's configuration: one frozen dataclass per section, from TOML.

``load(path)`` reads ``configs/story.toml`` when no path is given.  Unknown keys and
bad values are errors naming the key, as in the engine's config (same loader).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from obpipe.ring.settings import ConfigError, build_section, read_toml

from obpipe.story.narratives import DEFAULT_TEMPLATES, NarrativeConfig, template_error

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "configs" / "story.toml"


@dataclass(frozen=True)
class KafkaSection:
    bootstrap_servers: str = ""  # "": the running obpipe instance's embedded broker, then $OBPIPE_KAFKA, then 127.0.0.1:9092
    instance: str = "main"  # whose embedded broker to look for
    topic_prefix: str = "obpipe"
    group_id: str = "obpipe-story"
    client: dict[str, str | int | float | bool] = field(default_factory=dict)  # extra librdkafka settings
    batch_max: int = 1000  # messages per consume call (one database transaction, then one offset commit)


@dataclass(frozen=True)
class DbSection:
    url: str = "story.db"  # a file (SQLite, WAL) or postgresql://user@host/db


@dataclass(frozen=True)
class RetentionSection:
    keep_hours: float = 168.0  # rows stored more than this long ago (wall clock of ingestion) are deleted; 0 = keep all
    interval_s: float = 60.0  # how often retention runs
    batch: int = 5000  # rows per delete transaction


@dataclass(frozen=True)
class HttpSection:
    enabled: bool = True
    host: str = "127.0.0.1"  # this machine only unless changed
    port: int = 8080  # 0: any free port (printed)
    # Host headers answered (port ignored); others get 400, so a DNS-rebound name cannot
    # read the API. Add the machine's name here when `host` is opened up; "*" allows any.
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    idle_timeout_s: float = 5.0  # a kept-alive connection idle this long after a response is closed
    header_timeout_s: float = 10.0  # a connection must send a whole request head within this (slow clients)
    max_connections: int = 1000  # past this many open connections, requests get 503 (each is one fd)

    def __post_init__(self):  # (validated here, beside the keys: errors name them)
        for h in self.allowed_hosts:
            if h != "*" and not re.fullmatch(r"[A-Za-z0-9.:-]{1,253}", h):
                raise ConfigError(f"http.allowed_hosts: {h!r} is not a host name or address (or \"*\")")
        if not self.allowed_hosts:
            raise ConfigError("http.allowed_hosts: empty (nothing could be answered); the default is loopback")
        for k in ("idle_timeout_s", "header_timeout_s"):
            v = getattr(self, k)
            if not (math.isfinite(v) and 0 < v <= 3600):
                raise ConfigError(f"http.{k}: must be > 0 and <= 3600 s, got {v}")
        if not 1 <= self.max_connections <= 100_000:
            raise ConfigError(f"http.max_connections: must be 1..100000, got {self.max_connections}")


@dataclass(frozen=True)
class NarrativesSection:
    merge_gap_ms: float = 1000.0
    spread_median_window_s: float = 60.0
    templates: dict[str, str] = field(default_factory=dict)  # per kind, overriding the built-in ones

    def rules(self) -> NarrativeConfig:
        return NarrativeConfig(self.merge_gap_ms, {**DEFAULT_TEMPLATES, **self.templates}, self.spread_median_window_s)


@dataclass(frozen=True)
class StoryConfig:
    kafka: KafkaSection = KafkaSection()
    db: DbSection = DbSection()
    retention: RetentionSection = RetentionSection()
    http: HttpSection = HttpSection()
    narratives: NarrativesSection = NarrativesSection()

    def __post_init__(self):
        _validate(self)


def _validate(c: StoryConfig) -> None:
    def bad(key, why):
        raise ConfigError(f"{key}: {why}")

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", c.kafka.topic_prefix):
        bad("kafka.topic_prefix", f"{c.kafka.topic_prefix!r}: letters, digits, '.', '_' or '-' only")
    if not c.kafka.group_id:
        bad("kafka.group_id", "must not be empty")
    if c.kafka.batch_max < 1:
        bad("kafka.batch_max", "must be >= 1")
    if not c.db.url:
        bad("db.url", "must name a file or a postgresql:// URL")
    for k in ("keep_hours", "interval_s"):
        v = getattr(c.retention, k)
        if not (math.isfinite(v) and v >= 0):
            bad(f"retention.{k}", f"must be a number >= 0, got {v}")
    if c.retention.batch < 1:
        bad("retention.batch", "must be >= 1")
    if not 0 <= c.http.port <= 65535:
        bad("http.port", f"must be 0..65535, got {c.http.port}")
    if not (math.isfinite(c.narratives.merge_gap_ms) and c.narratives.merge_gap_ms >= 0):
        bad("narratives.merge_gap_ms", "must be >= 0")
    for kind, t in c.narratives.templates.items():
        if kind not in DEFAULT_TEMPLATES:
            bad(f"narratives.templates.{kind}", f"no such signal kind ({', '.join(DEFAULT_TEMPLATES)})")
        why = template_error(kind, t)
        if why:
            bad(f"narratives.templates.{kind}", f"{t!r}: {why}")


def load(path: str | Path | None = None, **overrides) -> StoryConfig:
    """Load the story config (``overrides``: {section: {key: value}}, checked likewise)."""
    p = Path(path) if path is not None else DEFAULT_PATH
    table = read_toml(p) if p.exists() or path is not None else {}
    for sec, vals in overrides.items():
        table.setdefault(sec, {}).update(vals)
    try:
        return build_section(StoryConfig, table, "")
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
