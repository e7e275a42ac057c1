# obpipe - thin targets; each sets up what it needs.  `make` alone lists them.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
DEV    := $(VENV)/.installed-dev
BENCH  := $(VENV)/.installed-bench
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help install run run-exchange test stats clean-shm metrics prometheus bench bench-core bench-pipeline bench-kafka bench-matching bench-story bench-store bench-ticks bench-itch bench-metrics bench-table fuzz flaky-check lobster-check kafka tail exchange book story browser redis postgres

help:           ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEV): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]' && touch $@

$(BENCH): pyproject.toml $(DEV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev,bench]' && touch $@

install: $(DEV)  ## create .venv and install obpipe (editable) with test tools

run: $(DEV) redis ## run the pipeline on embedded defaults (Ctrl-C stops; ARGS="--duration 10")
	$(VENV)/bin/obpipe run $(ARGS)

run-exchange: $(DEV) redis ## the pipeline fed by the exchange and simulated traders (ARGS="--duration 10 --rate 5000")
	$(VENV)/bin/obpipe run --source exchange $(ARGS)

exchange: $(DEV) ## the order-entry exchange on 127.0.0.1:9000 until Ctrl-C, anonymous trading on, journal exchange.journal and its store exchange.journal.db (JOURNAL=F; ARGS="--md 127.0.0.1:PORT")
	$(VENV)/bin/obpipe exchange --anonymous --journal $(or $(JOURNAL),exchange.journal) $(ARGS)

book: $(DEV)     ## the matching engine on CSV commands from stdin (ARGS=FILE to read a file)
	$(VENV)/bin/obpipe book $(ARGS)

story: $(DEV)    ## the story service against the local broker (the running instance's), SQLite story.db, page on http://127.0.0.1:8080/
	$(VENV)/bin/obpipe-story run $(ARGS)

test: $(DEV) browser redis postgres prometheus ## run the test suite
	$(VPY) -m pytest $(ARGS)

fuzz: $(DEV) browser ## the fuzz and abuse campaigns of the suite, ten times longer (OBPIPE_FUZZ_SCALE=10), and the slow stress and timing tests `make test` leaves out
	OBPIPE_FUZZ_SCALE=10 $(VPY) -m pytest -m "fuzz or slow" -p no:cacheprovider -o timeout=1800 $(ARGS)

flaky-check: $(DEV) ## run TESTS="node ids" N times in a row (N=20) while every core is kept busy
	$(VPY) -m tests.under_load -n $(or $(N),20) $(TESTS)

browser:         ## Debian's chromium for the web page test (apt-get when missing and root; else that test skips)
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium (the story page test renders the page in it)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	      || echo "could not install chromium: the page test will skip"; \
	  else echo "no chromium and not root: the page test will skip"; fi; }

redis:           ## Debian's redis-server for the live state ([redis]; apt-get when missing and root; else runs go on without it and its tests skip)
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's redis-server (obpipe run writes the live book state to it)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null) \
	      || echo "could not install redis-server: runs go on without Redis and the Redis tests skip"; \
	  else echo "no redis-server and not root: runs go on without Redis and the Redis tests skip"; fi; }

prometheus:      ## Debian's prometheus (and promtool) for the metrics tests (apt-get when missing and root; else they skip). The tests start their own on a loopback port; the package's service is not started
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's prometheus (the metrics tests scrape a pipeline with it)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "could not install prometheus: the Prometheus tests will skip"; \
	  else echo "no prometheus and not root: the Prometheus tests will skip"; fi; }

postgres:        ## Debian's PostgreSQL server for the PostgreSQL store tests and bench-store (apt-get when missing and root; else they skip)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's postgresql (the PostgreSQL store tests start their own server)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null) \
	      || echo "could not install postgresql: the PostgreSQL tests will skip"; \
	  else echo "no PostgreSQL server and not root: the PostgreSQL tests will skip"; fi; }

tail: $(DEV)     ## follow the signals on Kafka live (the running instance's broker; ARGS="--json --kind sweep")
	$(VENV)/bin/obpipe tail $(ARGS)

kafka: $(DEV)    ## run the embedded Kafka-compatible broker (tansu) on 127.0.0.1:9092 until Ctrl-C
	$(VENV)/bin/obpipe kafka $(ARGS)

stats: $(DEV)    ## live counters and books of a running instance
	$(VENV)/bin/obpipe stats $(ARGS)

metrics: $(DEV)  ## /metrics for an instance started elsewhere (obpipe run serves its own on 127.0.0.1:9464)
	$(VENV)/bin/obpipe metrics $(ARGS)

clean-shm: $(DEV) ## remove shared-memory segments whose owner is gone
	$(VENV)/bin/obpipe clean $(ARGS)

lobster-check: $(DEV) ## replay the AMZN LOBSTER sample and compare with its order book
	$(VENV)/bin/obpipe lobster-check ../shared/data/lobster/AMZN_2012-06-21_34200000_57600000_message_1.csv ../shared/data/lobster/AMZN_2012-06-21_34200000_57600000_orderbook_1.csv

bench-core: $(BENCH) ## ring/book/snapshot benchmarks + peers -> bench/results/core.json
	$(VPY) bench/core.py $(ARGS)

bench-pipeline: $(DEV) ## ramp the UDP feed rate: max zero-loss rate, latency, CPU -> bench/results/pipeline.json
	$(VPY) bench/pipeline.py $(ARGS)

bench-kafka: $(DEV) ## analysis ns/event, publisher msgs/s, book rate with/without publishing -> bench/results/kafka.json
	$(VPY) bench/kafka.py $(ARGS)

bench-matching: $(DEV) ## matching kernel orders/s and per-order latency (3 workloads x 1M), TCP round trips -> bench/results/matching.json
	$(VPY) bench/matching.py $(ARGS)

bench-story: $(DEV) ## story service: ingest signals/s from the broker into SQLite, 10-minute query p99 over 1M signals -> bench/results/story.json
	$(VPY) bench/story.py $(ARGS)

bench-store: $(DEV) redis postgres ## store catch-up fills/s (SQLite, PostgreSQL), exchange round trips with/without the store writer, Redis writes/s, book rate with/without Redis -> bench/results/store.json
	$(VPY) bench/store.py $(ARGS)

bench-ticks: $(DEV) ## tick store: insert rows/s in the recorder's batches, book rate with/without the recorder, query p99 and bytes per quote over 50M quotes -> bench/results/ticks.json
	$(VPY) bench/ticks.py $(ARGS)

bench-table:     ## rewrite docs/BENCHMARKS.md's tables from bench/results/*.json (runs no benchmark)
	$(PYTHON) bench/table.py

bench-metrics: $(DEV) ## /metrics: scrape time with 4 and 64 symbols, the pipeline's rate with a scrape every second vs none (same run) -> bench/results/metrics.json
	$(VPY) bench/metrics.py $(ARGS)

bench-itch: $(DEV) ## ITCH 5.0: decode and per-order apply rates in memory, MoldUDP64 over UDP into the per-order book at rising rates, gap recovery at 1 packet in 1,000 dropped -> bench/results/itch.json
	$(VPY) bench/itch.py $(ARGS)

bench: bench-core bench-pipeline bench-kafka bench-matching bench-story bench-store bench-ticks bench-itch ## every benchmark
