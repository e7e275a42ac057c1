"""docs/BENCHMARKS.md's tables are generated from bench/results/*.json (bench/table.py,
``make bench-table``): the committed page is what the committed JSON gives, a hand edit
of a generated table does not survive, and the prose around the tables does."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("bench_table", REPO / "bench" / "table.py")
table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table)

PAGE = (REPO / "docs" / "BENCHMARKS.md").read_text()


def test_the_committed_page_is_what_the_committed_json_gives():
    assert table.render_page(PAGE) == PAGE  # else: `make bench-table`, and commit the page


def test_every_results_file_is_read_by_a_section_of_the_page():
    read = {file for file, _ in table.SECTIONS.values()}
    assert read == {p.name for p in (REPO / "bench" / "results").glob("*.json")}
    for name in table.SECTIONS:
        assert PAGE.count(f"<!-- generated: {name} -->\n") == 1, name


def test_a_hand_edit_of_a_generated_table_is_undone_and_the_prose_is_kept():
    assert "| **28.08M** |" in PAGE and "Against the targets:" in PAGE
    edited = PAGE.replace("| **28.08M** |", "| **30.00M** |").replace("Against the targets:", "Against our targets:")
    out = table.render_page(edited)
    assert out != edited
    assert "| **28.08M** |" in out and "30.00M" not in out
    assert "Against our targets:" in out and "Against the targets:" not in out


def test_a_new_figure_in_the_json_reaches_the_table(tmp_path):
    res = tmp_path / "results"
    shutil.copytree(REPO / "bench" / "results", res)
    m = json.loads((res / "matching.json").read_text())
    m["mixed_orders_per_s"] = 31_234_567
    m["tcp_rtt_us"]["fsync_none"]["1_compiled_client"]["p50"] = 59.5
    (res / "matching.json").write_text(json.dumps(m))
    out = table.render_page(PAGE, res)
    assert "| **31.23M** |" in out and "| **28.08M** |" not in out
    assert "| 1 compiled | 60 | 96 | 135 | 15,791 |" in out  # 59.5 rounds half up
    assert out.replace("| **31.23M** |", "| **28.08M** |").replace("| 60 | 96 |", "| 68 | 96 |") == PAGE


def test_an_unknown_or_missing_section_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'nosuch'"):
        table.render_page(PAGE + "\n<!-- generated: nosuch -->\n<!-- end -->\n")
    with pytest.raises(ValueError, match="'story'"):
        table.render_page(PAGE.replace("<!-- generated: story -->", "<!-- story -->"))


def test_check_exits_1_on_a_stale_page_and_0_on_the_committed_one(tmp_path, monkeypatch):
    p = subprocess.run([sys.executable, str(REPO / "bench" / "table.py"), "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    stale = tmp_path / "BENCHMARKS.md"
    stale.write_text(PAGE.replace("| 32.67M |", "| 99.99M |"))
    monkeypatch.setattr(table, "PAGE", stale)
    assert table.main("--check") == 1
    assert stale.read_text() == PAGE.replace("| 32.67M |", "| 99.99M |")  # --check writes nothing
    assert table.main() == 0 and stale.read_text() == PAGE
