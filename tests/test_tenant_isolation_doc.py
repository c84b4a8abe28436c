"""docs/RELIABILITY.md, "One tenant cannot stop the others": the principle and its table of
hostile inputs. Every test the table names exists, and each row names at least one, so the
document cannot claim a case that nothing runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import REPO

SECTION = "## One tenant cannot stop the others"
_REF = re.compile(r"`((?:[\w./]+\.py)?)::(\w+)`")


def _section() -> str:
    doc = (REPO / "docs" / "RELIABILITY.md").read_text()
    start = doc.index(SECTION)
    end = doc.index("\n## ", start + len(SECTION))
    return doc[start:end]


def _resolve(name: str) -> Path:
    for base in (REPO, REPO / "tests", REPO / "tests" / "integration"):
        if (base / name).is_file():
            return base / name
    raise AssertionError(f"no test file {name}")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        n.name
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
    }


def test_every_case_of_the_principle_names_a_test_that_exists() -> None:
    section = _section()
    assert "no input of one tenant" in section.lower()
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    assert len(rows) >= 8
    for row in rows:
        refs = _REF.findall(row.split(" | ")[-1])
        assert refs, f"no test named for: {row[:80]}"
        current: Path | None = None
        for name, test in refs:
            current = _resolve(name) if name else current
            assert current is not None, row[:80]
            assert test in _tests_in(current), f"{current.name}::{test}"
