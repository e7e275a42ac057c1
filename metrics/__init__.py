"""Prometheus metrics of a running instance: a collector reading the stats block,
snapshots and latency histogram at scrape time, served on a loopback port
(docs/METRICS.md)."""
