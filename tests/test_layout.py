"""The layout: one import package (``obpipe``) whose subpackages are the repository's
top-level folders, and the layering contracts of pyproject.toml's
``[tool.importlinter]`` (lint-imports) holding over it (docs/DESIGN.md "Layout")."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_distribution_installs_one_top_level_package_obpipe():
    top = importlib.metadata.distribution("obpipe").read_text("top_level.txt").split()
    assert top == ["obpipe"]
    st = PYPROJECT["tool"]["setuptools"]
    assert all(p == "obpipe" or p.startswith("obpipe.") for p in st["packages"])
    # every folder of the mapping is a package of the repository's top level, and every
    # top-level folder holding Python sources (but tests and bench) is mapped
    mapped = set(st["package-dir"].values())
    assert mapped == {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    # and linked from obpipe/, so tools reading the package's directory see the wheel's tree
    for pkg, folder in st["package-dir"].items():
        if pkg != "obpipe":
            link = REPO.joinpath(*pkg.split("."))
            assert link.is_symlink() and link.resolve() == (REPO / folder).resolve(), pkg


def _installed_tree(dst):
    """The package as a wheel lays it out (obpipe/ring/..., from the package-dir mapping):
    lint-imports reads a package's modules from its directory."""
    for pkg, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        out = dst.joinpath(*pkg.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for f in (REPO / folder).glob("*.py"):
            shutil.copy2(f, out / f.name)
    return dst


def _lint(tmp_path, root):
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), str(REPO / "pyproject.toml"),
                           "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["checkout", "wheel"])
def test_import_contracts_hold(tmp_path, where):
    """A plain `lint-imports` in the checkout, and on the tree a wheel installs."""
    if where == "checkout":
        p = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=REPO,
                           capture_output=True, text=True, timeout=110)
    else:
        p = _lint(tmp_path, _installed_tree(tmp_path / "site"))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert p.stdout.count(" KEPT") == len(PYPROJECT["tool"]["importlinter"]["contracts"])


@pytest.mark.timeout(120)
def test_each_contract_breaks_on_the_import_it_forbids(tmp_path):
    """The contracts are not vacuous: one forbidden import each, and each contract fails."""
    root = _installed_tree(tmp_path / "site")
    for rel, line in [("engine/book.py", "from ring import schema as _old_name"),  # an old top-level name
                      ("ring/errors.py", "from obpipe.engine import book as _upward"),  # up a layer, and a cycle
                      ("engine/rx.py", "from obpipe.exchange import _match_kernels as _private"),  # private, sibling
                      ("story/api.py", "from obpipe.engine import rx as _process")]:  # story -> an engine process
        with open(root / "obpipe" / rel, "a") as f:
            f.write(f"\n{line}\n")
    p = _lint(tmp_path, root)
    assert p.returncode != 0
    assert " KEPT" not in p.stdout, p.stdout[-4000:]
    assert p.stdout.count(" BROKEN") == len(PYPROJECT["tool"]["importlinter"]["contracts"])
