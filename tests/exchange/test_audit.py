"""The decision line, and the package's layering (pure modules stay pure, one env reader)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from nix_job.exchange.audit import decision_line

PACKAGE = Path(__file__).resolve().parents[2] / "nix_job" / "exchange"
PURE = ("errors", "policy", "policy_file", "identity", "decide", "audit", "ratelimit")
ADAPTERS = {"httpx", "socket", "subprocess", "starlette", "uvicorn", "jwt", "asyncio", "os"}


def test_decision_line_is_compact_json_without_nones() -> None:
    line = decision_line({"event": "exchange", "rule": None, "caches": {"main": "rw"}, "n": 3})
    assert line == '{"event":"exchange","caches":{"main":"rw"},"n":3}'


def test_decision_line_redacts_anything_shaped_like_a_jwt() -> None:
    header = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ"
    payload = "eyJzdWIiOiJ4In0"
    line = decision_line(
        {"reason": f"bad token {header}.{payload}.c2lnbmF0dXJl here", "list": [payload]}
    )
    assert header not in line
    assert payload not in line
    assert "c2lnbmF0dXJl" not in line
    assert json.loads(line) == {"reason": "bad token [redacted] here", "list": ["[redacted]"]}


def test_decision_line_bounds_long_text() -> None:
    record = json.loads(decision_line({"subject": "x" * 1000}))
    assert len(record["subject"]) == 301


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_adapter(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & ADAPTERS, f"{module}.py imports {sorted(imported & ADAPTERS)}"


def test_only_the_entry_point_reads_the_environment() -> None:
    readers = sorted(
        path.name
        for path in PACKAGE.glob("*.py")
        if "os.environ" in path.read_text() or "getenv" in path.read_text()
    )
    assert readers == ["__main__.py"]
