"""The tick store: quotes, trades, depth and OHLCV bars in ClickHouse (docs/TICKS.md)."""
from obpipe.ticks.store import (BAR_TABLES, DEFAULT_RETENTION_DAYS, WHATS, StoreError, TickStore, check_read_only,
                                parse_width, unavailable)

__all__ = ["BAR_TABLES", "DEFAULT_RETENTION_DAYS", "WHATS", "StoreError", "TickStore", "check_read_only",
           "parse_width", "unavailable"]
