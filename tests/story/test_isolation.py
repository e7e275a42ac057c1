"""The engine never imports or waits on the story service: no engine package names it."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

ENGINE_PACKAGES = ("ring", "engine", "feed_sim", "analysis", "publisher", "obpipe")


def test_no_engine_module_imports_the_story_service():
    offenders = []
    files = [f for pkg in ENGINE_PACKAGES for f in sorted((Path(REPO) / pkg).rglob("*.py"))]
    assert len(files) > 30
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{f.relative_to(REPO)}: {n}" for n in names if n == "story" or n.startswith("story.")]
    assert offenders == []
