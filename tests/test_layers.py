"""The layering holds: pure modules stay pure, only entrypoints read the environment, and only
the GitHub front end names GitHub's variables (docs/design.md, "Layers")."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nix_job"

#: Decisions and values: no process, socket, HTTP, lock or environment. Everything in core/,
#: and these modules elsewhere.
PURE = sorted(
    {
        *(str(p.relative_to(ROOT)) for p in (PACKAGE / "core").glob("*.py")),
        "nix_job/nix/settings.py",
        "nix_job/nix/facts.py",
        "nix_job/nix/path_info.py",
        "nix_job/nix/store_uri.py",
        "nix_job/cache/target.py",
        "nix_job/cache/plan.py",
        "nix_job/cache/netrc.py",
        "nix_job/push/plan.py",
        "nix_job/push/report.py",
        "nix_job/push/ledger.py",
        "nix_job/push/throttle.py",
        "nix_job/frontends/github/event.py",
        "nix_job/frontends/github/gate.py",
        "nix_job/frontends/gitlab/gate.py",
        "nix_job/frontends/gitlab/output.py",
        "nix_job/exchange/policy.py",
        "nix_job/exchange/policy_file.py",
        "nix_job/exchange/identity.py",
        "nix_job/exchange/decide.py",
        "nix_job/exchange/errors.py",
        "nix_job/service/config.py",
        "nix_job/service/status.py",
        "nix_job/service/catchup.py",
    }
)
#: What a pure module must never import (I/O and concurrency primitives).
FORBIDDEN = frozenset(
    {
        "subprocess",
        "socket",
        "httpx",
        "fcntl",
        "selectors",
        "signal",
        "shutil",
        "tempfile",
        "threading",
        "inotify_simple",
        "http",
        "urllib.request",
    }
)
ENVIRONMENT_READS = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


PURE_NAMES = frozenset(_module_name(p) for p in PURE)


def imports(source: str) -> set[str]:
    """Every module a source imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def reads_environment(source: str) -> bool:
    for node in ast.walk(ast.parse(source)):
        attribute = (
            isinstance(node, ast.Attribute)
            and node.attr in ENVIRONMENT_READS
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        )
        imported = (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ENVIRONMENT_READS for alias in node.names)
        )
        if attribute or imported:
            return True
    return False


def purity_violations(source: str) -> list[str]:
    """Why a module's source is not pure (empty when it is)."""
    problems = []
    for name in sorted(imports(source)):
        top = name.split(".")[0]
        if top in FORBIDDEN or name in FORBIDDEN:
            problems.append(f"imports {name}")
        elif (
            top == "nix_job"
            and name not in PURE_NAMES
            and name.rpartition(".")[0] not in (PURE_NAMES | {"nix_job", "nix_job.core"})
        ):
            problems.append(f"imports the adapter {name}")
    if reads_environment(source):
        problems.append("reads the process environment")
    return problems


@pytest.mark.parametrize("path", PURE)
def test_a_pure_module_does_no_io(path: str) -> None:
    assert purity_violations((ROOT / path).read_text()) == []


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        pytest.param("import subprocess\n", "imports subprocess", id="subprocess"),
        pytest.param("from socket import socket\n", "imports socket", id="socket"),
        pytest.param("import httpx\n", "imports httpx", id="httpx"),
        pytest.param("import fcntl\n", "imports fcntl", id="fcntl"),
        pytest.param("import os\nx = os.environ['A']\n", "reads the process", id="environ"),
        pytest.param("from os import getenv\n", "reads the process", id="getenv"),
        pytest.param(
            "from nix_job.nix.store import NixStore\n", "imports the adapter", id="an-adapter"
        ),
    ],
)
def test_the_purity_check_catches_what_it_must(source: str, problem: str) -> None:
    assert any(problem in p for p in purity_violations(source))


def test_the_pure_list_names_real_modules() -> None:
    missing = [p for p in PURE if not (ROOT / p).is_file()]
    assert missing == []


def test_only_entrypoints_read_the_process_environment() -> None:
    readers = sorted(
        str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if reads_environment(p.read_text())
    )
    assert all(Path(r).name == "__main__.py" for r in readers), readers


def _github_variables(source: str) -> set[str]:
    """``GITHUB_*`` names in the string literals of a module (environment keys are strings)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            names |= set(re.findall(r"(?<![A-Z_])GITHUB_[A-Z_]+", node.value))
    return names


def test_only_the_github_front_end_names_github_variables() -> None:
    github = PACKAGE / "frontends" / "github"
    offenders = {
        str(p.relative_to(ROOT)): sorted(found)
        for p in PACKAGE.rglob("*.py")
        if not p.is_relative_to(github) and (found := _github_variables(p.read_text()))
    }
    assert offenders == {}


def test_no_module_in_nix_job_is_much_over_400_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 420
    }
    assert long == {}
