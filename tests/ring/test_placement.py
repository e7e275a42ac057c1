"""Auto placement of the process roles over the usable cores."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from obpipe.ring.placement import cores_for


def test_two_cores_book_alone_analysis_and_publisher_share_its_core():
    c = [0, 1]
    assert cores_for("book", "auto", c) == [1]
    assert cores_for("analysis", "auto", c) == cores_for("publisher", "auto", c) == [1]
    assert cores_for("rx", "auto", c) == cores_for("feed", "auto", c) == cores_for("supervisor", "auto", c) == [0]


def test_four_cores_analysis_and_publisher_get_their_own_core():
    c = [0, 1, 2, 3]
    assert cores_for("book", "auto", c) == [3]
    assert cores_for("analysis", "auto", c) == cores_for("publisher", "auto", c) == [2]
    assert cores_for("rx", "auto", c) == [0, 1]


def test_one_core_everyone_shares_and_explicit_lists_are_checked():
    assert cores_for("analysis", "auto", [0]) == [0]
    assert cores_for("analysis", [0, 5], [0, 1]) == [0]
    with pytest.raises(ValueError, match="pinning.publisher"):
        cores_for("publisher", [7], [0, 1])


def test_two_cores_real_time_rx_and_book_share_the_last_core_the_feed_gets_the_other():
    c = [0, 1]
    assert cores_for("book", "auto", c, realtime=True) == cores_for("rx", "auto", c, realtime=True) == [1]
    assert cores_for("analysis", "auto", c, realtime=True) == cores_for("publisher", "auto", c, realtime=True) == [1]
    assert cores_for("feed", "auto", c, realtime=True) == cores_for("supervisor", "auto", c, realtime=True) == [0]
    # 3+ cores: the book writer keeps a core to itself, as without real time
    assert cores_for("book", "auto", [0, 1, 2, 3], realtime=True) == [3]
    assert cores_for("rx", "auto", [0, 1, 2, 3], realtime=True) == [0, 1]


def test_realtime_settings_are_checked_and_true_where_not_permitted_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    from obpipe import config as cfgmod
    from obpipe.config import ConfigError
    from obpipe.supervisor import _realtime

    for bad_line, key in (('[pinning]\nrealtime = "yes"\n', "pinning.realtime"),
                          ("[pinning]\nrealtime_priority = 0\n", "pinning.realtime_priority"),
                          ('[backoff]\nwake = "spin"\n', "backoff.wake")):
        p = tmp_path / "c.toml"
        p.write_text(bad_line)
        with pytest.raises(ConfigError, match=key):
            cfgmod.load(p)
    cfg = cfgmod.load(None)
    assert _realtime(cfgmod.replace(cfg, pinning={"realtime": False}), 2) == 0
    assert _realtime(cfg, 1) == 0  # "auto" on one core: everything shares it, nothing real-time
    # an unprivileged user (no CAP_SYS_NICE, RLIMIT_RTPRIO 0): "auto" quietly takes normal
    # scheduling, true refuses with the reason
    code = ("import resource, os, sys\n"
            "from obpipe import config as c\nfrom obpipe.supervisor import _realtime\n"
            "cfg = c.load(None)\n"
            "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
            "os.setgid(65534); os.setuid(65534)\n"  # (imports first: nobody may not read them)
            "print(_realtime(cfg, 2))\n"
            "try:\n    _realtime(c.replace(cfg, pinning={'realtime': True}), 2)\n"
            "except ValueError as e:\n    print(e)\n")
    if os.geteuid() != 0:
        pytest.skip("needs root to become an unprivileged user")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()[:2]
    assert first == "0"
    assert "pinning.realtime = true" in second and "CAP_SYS_NICE" in second
