"""The tick store (ClickHouse: embedded chdb or a server) and the tick recorder process (docs/TICKS.md)."""
