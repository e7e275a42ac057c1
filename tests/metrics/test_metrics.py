"""/metrics of a running pipeline, scraped by a real Prometheus (Debian's, started here on
a loopback port and stopped by pid) and checked through its HTTP API: a counter equals
``obpipe stats --json`` within one scrape interval, never decreases across a restart of
rx, the latency histogram answers ``histogram_quantile``; ``promtool check metrics`` is
clean; every metric the Grafana dashboard queries is exported; the standalone
``obpipe metrics`` says when its instance is not running."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from obpipe.metrics.exporter import _Monotonic
from tests.conftest import REPO
from tests.helpers import obpipe, poll, popen_obpipe, run_config, running_pipeline, started, wait_running

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
DASHBOARD = REPO / "metrics" / "dashboard.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _query(prom: str, expr: str) -> list:
    d = json.loads(_get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert d["status"] == "success", d
    return d["data"]["result"]


def _value(prom: str, expr: str) -> float | None:
    r = _query(prom, expr)
    return float(r[0]["value"][1]) if r else None


def _stats(cfg) -> dict:
    s = obpipe("stats", "--config", cfg, "--json", timeout=60)
    assert s.returncode == 0, s.stderr
    return json.loads(s.stdout)


def _exported_names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, re.M)}


def test_a_counter_never_decreases_when_its_part_starts_counting_again():
    mono = _Monotonic()
    assert [mono(("c",), v) for v in (5, 10, 3, 4, 0, 2)] == [5, 10, 13, 14, 14, 16]
    assert mono(("other",), 1) == 1  # (per key)


@pytest.mark.multiproc
@pytest.mark.timeout(240)
@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus (make installs Debian's when root)")
def test_prometheus_scrapes_the_pipeline(tmp_path, instance):
    mport, pport = _free_port(), _free_port()
    cfg = run_config(tmp_path, instance, md_capacity=1 << 16, extra=f"[metrics]\nport = {mport}\n")
    (tmp_path / "prom.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        f"scrape_configs:\n  - job_name: obpipe\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n")
    prom = f"http://127.0.0.1:{pport}"
    with running_pipeline(cfg, "--rate", "50000"):
        wait_running(cfg, min_msgs=1)
        scrape = _get(f"http://127.0.0.1:{mport}/metrics")
        # promtool's linter: names, types, help and units by the conventions
        if PROMTOOL:
            lint = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, text=True,
                                  timeout=30)
            assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
                lint.stdout + lint.stderr
        # every metric the dashboard queries is exported
        names = _exported_names(scrape)
        wanted = set()
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            for t in panel["targets"]:
                wanted |= set(re.findall(r"\bobpipe_[a-z0-9_]+", t["expr"]))
        assert wanted and wanted <= names, sorted(wanted - names)

        with started(subprocess.Popen(
                [PROMETHEUS, f"--config.file={tmp_path / 'prom.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{pport}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)):
            poll(lambda: _safe(lambda: _value(prom, 'up{job="obpipe"}')), lambda v: v == 1.0, timeout_s=60)
            poll(lambda: _safe(lambda: _value(prom, "obpipe_rx_messages_total")), lambda v: v and v > 0,
                 timeout_s=30)
            # the scraped counter equals `obpipe stats` within one scrape interval: the latest
            # sample, scraped after `before` was read, lies between it and `after`, read after it
            before, t_before = _stats(cfg)["rx"]["messages"], time.time()
            poll(lambda: _safe(lambda: _value(prom, "timestamp(obpipe_rx_messages_total)")),
                 lambda t: t and t > t_before, timeout_s=10, every=0.1)
            scraped = _value(prom, "obpipe_rx_messages_total")
            after = _stats(cfg)["rx"]["messages"]
            assert before <= scraped <= after, (before, scraped, after)
            assert after > before  # (the feed runs: the comparison is not between equal numbers)
            p99 = _value(prom, "histogram_quantile(0.99, sum by (le) "
                               "(rate(obpipe_receive_apply_latency_seconds_bucket[10s])))")
            assert p99 is not None and 0 < p99 < 10, p99
            spread = _query(prom, "obpipe_book_spread")
            assert {r["metric"]["symbol"] for r in spread} == set(_stats(cfg)["symbols"])

            # a restart of rx: the counter goes on from where it was
            st = _stats(cfg)
            restarts0, rx_pid = st["supervisor"]["restarts"], st["rx"]["pid"]
            os.kill(rx_pid, signal.SIGKILL)
            poll(lambda: _stats(cfg), lambda s: s["supervisor"]["restarts"] > restarts0
                 and s["rx"]["pid"] != rx_pid and s["rx"]["state"] == "running", timeout_s=60)
            t_restart = time.time()
            poll(lambda: _safe(lambda: _value(prom, "obpipe_rx_messages_total")), lambda v: v and v > after,
                 timeout_s=30)
            time.sleep(1.5)  # (a sample or two more after the restart)
            rng = json.loads(_get(f"{prom}/api/v1/query_range?" + urllib.parse.urlencode(
                {"query": "obpipe_rx_messages_total", "start": t_restart - 60, "end": time.time(), "step": "1"})))
            series = [float(v) for _, v in rng["data"]["result"][0]["values"]]
            assert len(series) > 5 and all(b >= a for a, b in zip(series, series[1:])), series
            assert _value(prom, "resets(obpipe_rx_messages_total[5m])") == 0.0
            assert _value(prom, "obpipe_supervisor_restarts_total") >= 1


def _safe(fn):
    try:
        return fn()
    except (OSError, ValueError, IndexError, KeyError):
        return None


@pytest.mark.timeout(60)
def test_standalone_exporter_says_when_its_instance_is_not_running(tmp_path, instance):
    port = _free_port()
    cfg = run_config(tmp_path, instance)
    p = popen_obpipe("metrics", "--config", cfg, "--port", str(port))
    with started(p):
        text = poll(lambda: _safe(lambda: _get(f"http://127.0.0.1:{port}/metrics")), lambda t: t, timeout_s=30)
        assert re.search(r"^obpipe_up 0\.0$", text, re.M), text[:500]
        assert "obpipe_rx_messages_total" not in text  # nothing made up for an instance that is not there
        p.send_signal(signal.SIGINT)
        p.wait(timeout=10)
    assert p.returncode == 0


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable():
    d = json.loads(DASHBOARD.read_text())
    assert d["panels"] and all(p["targets"] for p in d["panels"])
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in d["templating"]["list"])
    ids = [p["id"] for p in d["panels"]]
    assert len(set(ids)) == len(ids)
    assert Path(DASHBOARD).stat().st_size < 100_000


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_a_metrics_port_in_use_is_said_and_the_run_goes_on(tmp_path, instance):
    from tests.helpers import finish

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = run_config(tmp_path, instance, extra=f"[metrics]\nport = {port}\n")
        final, err = finish(popen_obpipe("run", "--config", cfg, "--json", "--quiet", "--messages", "20000"),
                            timeout=110)
    assert f"no /metrics on 127.0.0.1:{port}" in err, err[-2000:]
    assert final["applied"] == 20000 and final["supervisor"]["metrics_port"] == 0
