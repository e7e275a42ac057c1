"""Ctrl-C at any moment of `obpipe run --json`, start-up included, ends it with status 0,
the final report on stdout and no segment left (with --no-feed an outside feed may be
applied while the analysis is still starting: its counters must not be lost)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from obpipe.ring.shm import list_segments
from tests.conftest import REPO

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.mark.multiproc
@pytest.mark.timeout(300)
@pytest.mark.parametrize("delay_s", [0.0, 0.3])
def test_ctrl_c_during_start_up_still_reports_and_cleans_up(tmp_path, instance, delay_s):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[instance]\nname = "{instance}"\n[kafka]\nenabled = false\n[ticks]\nenabled = false\n')
    p = subprocess.Popen([sys.executable, "-m", "obpipe", "run", "--config", str(cfg), "--no-feed", "--json"],
                         cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "starting" not in line:  # the supervisor has started its parts and waits for them
            line = p.stderr.readline()
            assert line or p.poll() is None, "obpipe run ended before starting its parts"
            assert time.monotonic() < deadline
        time.sleep(delay_s)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 0, err[-3000:]
    final = json.loads(out)  # the report, as after any run
    assert final["exit_code"] == 0 and final["applied"] == 0 and final["book"]["state"] == "stopped"
    assert list_segments(instance) == []
