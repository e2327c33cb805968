"""docs/reliability.md and the tests agree: every test its table names exists.

The table is the promise made to users about hostile input; a renamed or deleted test, or a
row without a test, fails here. Test names are collected by parsing the test files (``ast``),
so nothing is imported or run.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]]*\])?`")

#: The cases of the reliability issue that the table must keep (matched in the Case column).
REQUIRED_CASES = (
    "0-byte",
    "Truncated",
    "Fake image",
    "30000²",
    "12000²",
    "Sliver",
    "11 photos, 50 photos",
    "Server paths in messages",
    "Server-side paths",
    "Out-of-range numbers",
    "Wrong types",
    "Trigger inside a word",
    "negative prompt",
    "Huge prompt",
    "Cancel mid-run",
    "Stop button",
    "Concurrent clients",
    "Queue overflow",
    "Out of GPU memory",
    "Any other failure",
)


def table_rows() -> list[tuple[str, str, str]]:
    """(case, behaviour, tests) of each row of the first Markdown table in the document."""
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "Case":
            continue
        assert len(cells) == 3, f"a row of docs/reliability.md needs 3 cells: {line}"
        rows.append((cells[0], cells[1], cells[2]))
    return rows


@cache
def defined_tests(path: str) -> frozenset[str]:
    """The test functions of a file (module level and in classes), without importing it."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test_")
    )


ROWS = table_rows()


def test_the_table_has_every_case_and_a_test_on_every_row():
    cases = [case for case, _, _ in ROWS]
    missing = [c for c in REQUIRED_CASES if not any(c.lower() in case.lower() for case in cases)]
    assert not missing, f"docs/reliability.md lost the rows for: {missing}"
    for case, behaviour, tests in ROWS:
        assert behaviour, f"row {case!r} says nothing about the behaviour"
        assert REFERENCE.findall(tests), f"row {case!r} names no test as `tests/x.py::test_y`"


def _slug(case: str) -> str:
    return re.sub(r"[^0-9a-z²]+", "-", case.lower()).strip("-")[:40]


@pytest.mark.parametrize(
    "case, tests", [(c, t) for c, _, t in ROWS], ids=[_slug(c) for c, _, _ in ROWS]
)
def test_every_named_test_exists(case, tests):
    for path, name in REFERENCE.findall(tests):
        assert (ROOT / path).is_file(), f"{case!r} names {path}, which does not exist"
        assert name in defined_tests(path), f"{case!r} names {path}::{name}, which does not exist"


def test_the_checker_sees_a_missing_test():
    assert "test_every_named_test_exists" in defined_tests("tests/test_reliability_doc.py")
    assert "test_no_such_test" not in defined_tests("tests/test_reliability_doc.py")
