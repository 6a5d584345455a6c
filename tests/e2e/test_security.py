"""Security hardening (issue 16): what the user's command can reach, which runs are warned about
the token they hold, and the README's token recipes. Real action.yml through the harness, real
Nix, the Attic double; the expression tests need neither."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.actionrun import ROOT, dump, nix_process_env, run_nix_job
from tests.attic_double import AtticDouble
from tests.harness.expressions import EvalContext, interpolate_string
from tests.nixenv import NixEnv, require_nix

CACHE = "team"
GITHUB_TOKEN = "ghs_sixteen_one_fake_github_token_0123"

#: Reads the environment and command line of every ancestor of the command, up to PID 1: what
#: a hostile command could read of the processes that started it (nix-job among them).
ANCESTRY = r"""
out="$PWD/ancestry"
: > "$out"
pid=$PPID
while [ -n "$pid" ] && [ "$pid" -gt 1 ]; do
  echo "== pid $pid" >> "$out"
  if tr '\0' '\n' < "/proc/$pid/environ" >> "$out" 2>/dev/null; then
    echo "== readable $pid" >> "$out"
  fi
  tr '\0' ' ' < "/proc/$pid/cmdline" >> "$out" 2>/dev/null || true
  echo >> "$out"
  pid=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$pid/status")
done
"""


@pytest.fixture(scope="module")
def tool_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toolcache")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as server:
        server.create_cache(CACHE)
        yield server


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


def forms(token: str) -> list[str]:
    """The token and the Basic credentials curl builds from nix-job's netrc entry."""
    import base64  # noqa: PLC0415 - only here

    return [token, *(base64.b64encode(f"{u}:{token}".encode()).decode() for u in ("", "nix-job"))]


@pytest.mark.nix
@pytest.mark.slow
def test_no_ancestor_of_the_command_holds_a_token_in_its_environment(
    nix: NixEnv, double: AtticDouble, tool_cache: Path, tmp_path: Path
) -> None:
    """As root: root reads every ancestor's /proc/<pid>/environ, nix-job's included."""
    token = double.make_token({CACHE: "rw"})
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={
            "command": ANCESTRY,
            "attic-server": double.url,
            "attic-cache": CACHE,
            "github-token": GITHUB_TOKEN,
        },
        event="pull_request",
        env={"ATTIC_TOKEN": token},
        process_env=nix_process_env(nix),
        secrets=(token, GITHUB_TOKEN),
    )
    assert result.exit_code == 0, dump(result)
    seen = (workspace / "ancestry").read_text()
    assert seen.count("== pid") >= 2, seen  # nix-job and whatever started it
    parent = re.search(r"== pid (\d+)", seen)
    assert parent is not None
    assert f"== readable {parent.group(1)}" in seen, "root must be able to read nix-job's env"
    assert "runtime/start.py" in seen  # nix-job itself is among the ancestors read
    for secret in (*forms(token), GITHUB_TOKEN):
        assert secret not in seen, f"an ancestor's environment holds a secret:\n{seen}"
    assert "NIX_JOB_INTERNAL_SECRETS_FD" in seen  # the handoff happened: only its fd number


def run_with_push_token(
    *, nix: NixEnv, double: AtticDouble, tool_cache: Path, workspace: Path, event: str
) -> tuple[str, list[str]]:
    token = double.make_token({CACHE: "rw"})
    workspace.mkdir()
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={
            "command": "true",
            "attic-server": double.url,
            "attic-cache": CACHE,
            "push-cache": "true",
        },
        event=event,
        env={"ATTIC_TOKEN": token},
        process_env=nix_process_env(nix),
        secrets=(token,),
    )
    assert result.exit_code == 0, dump(result)
    warnings = [
        a.message for a in result.annotations_of("warning") if "push token" in (a.title or "")
    ]
    return result.outputs["cache-push"], warnings


@pytest.mark.nix
@pytest.mark.slow
@pytest.mark.parametrize(
    "event",
    [
        pytest.param("pull_request", id="pull-request"),
        pytest.param("push_feature_branch", id="push-to-a-feature-branch"),
        pytest.param("push_tag", id="push-of-a-tag"),
        pytest.param("workflow_dispatch_branch", id="dispatch-on-a-branch"),
    ],
)
def test_every_run_that_does_not_publish_warns_about_a_push_capable_token(
    nix: NixEnv, double: AtticDouble, tool_cache: Path, tmp_path: Path, event: str
) -> None:
    published, warnings = run_with_push_token(
        nix=nix, double=double, tool_cache=tool_cache, workspace=tmp_path / "w", event=event
    )
    assert published == "false"
    assert len(warnings) == 1, warnings
    assert "could read the token from the temporary netrc" in warnings[0]


@pytest.mark.nix
@pytest.mark.slow
def test_a_publishing_run_with_a_push_token_is_not_warned(
    nix: NixEnv, double: AtticDouble, tool_cache: Path, tmp_path: Path
) -> None:
    published, warnings = run_with_push_token(
        nix=nix, double=double, tool_cache=tool_cache, workspace=tmp_path / "w", event="push"
    )
    assert published == "true"
    assert warnings == []


# --- the README's token recipes ------------------------------------------------------------

README = (ROOT / "README.md").read_text()
PUSH, PULL = "the-push-token", "the-pull-token"


def readme_token_expressions() -> list[str]:
    """Every expression in the README that chooses the push token or its environment."""
    found = re.findall(r"\$\{\{(?:(?!\}\}).)*\}\}", README)
    return [e for e in found if "attic-publish" in e or "ATTIC_PUSH_TOKEN" in e]


def chosen(expression: str, *, event: str, ref: str) -> str:
    ctx = EvalContext(
        contexts={
            "github": {"event_name": event, "ref": ref},
            "secrets": {"ATTIC_PUSH_TOKEN": PUSH, "ATTIC_PULL_TOKEN": PULL},
        }
    )
    value = interpolate_string(expression, ctx)
    return {"attic-publish": PUSH, "attic-read": PULL}.get(value, value)


MAIN = "refs/heads/main"
CASES = [
    ("push", MAIN, PUSH),
    ("schedule", MAIN, PUSH),
    ("workflow_dispatch", MAIN, PUSH),
    ("push", "refs/heads/feature", PULL),
    ("push", "refs/tags/v1.0.0", PULL),
    ("workflow_dispatch", "refs/heads/feature", PULL),
    ("pull_request", "refs/pull/7/merge", PULL),
    ("pull_request_target", MAIN, PULL),
    ("merge_group", "refs/heads/gh-readonly-queue/main/pr-7-abc", PULL),
    ("workflow_run", MAIN, PULL),
    ("issue_comment", MAIN, PULL),
    ("repository_dispatch", MAIN, PULL),
]


def test_the_readme_shows_both_token_recipes() -> None:
    expressions = readme_token_expressions()
    assert any("attic-publish" in e for e in expressions), "the environment recipe is missing"
    assert any("ATTIC_PUSH_TOKEN" in e for e in expressions), "the expression recipe is missing"


@pytest.mark.parametrize("expression", readme_token_expressions())
@pytest.mark.parametrize(("event", "ref", "expected"), CASES)
def test_the_readme_gives_the_push_token_only_to_default_branch_push_schedule_and_dispatch(
    expression: str, event: str, ref: str, expected: str
) -> None:
    assert chosen(expression, event=event, ref=ref) == expected


HOSTILE = (
    "denied\n::error title=Injected::owned\n::add-mask::nix\n"
    "  ::warning title=Injected::indented\n##[warning]legacy injected"
)


@pytest.mark.nix
@pytest.mark.slow
def test_text_from_the_server_never_becomes_a_workflow_command(
    nix: NixEnv, double: AtticDouble, tool_cache: Path, tmp_path: Path
) -> None:
    """The server's error message reaches the log and an annotation; none of its lines may
    be read as a command by the runner (which trims leading whitespace before ``::`` and finds
    the legacy ``##[`` form anywhere in a line)."""
    from tests.attic_double.state import Faults  # noqa: PLC0415

    token = double.make_token({CACHE: "rw"})
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    double.faults = Faults(hostile_message=(403, HOSTILE))
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={
            "command": 'date +%s%N > f && ln -s "$(nix-store --add f)" result',
            "attic-server": double.url,
            "attic-cache": CACHE,
            "push-cache": "true",
        },
        event="push",
        env={"ATTIC_TOKEN": token},
        process_env=nix_process_env(nix),
        secrets=(token,),
    )
    assert result.exit_code == 0, dump(result)
    assert "owned" in result.output or "Injected" in result.output, "the message was shown"
    assert not [a for a in result.annotations if a.title == "Injected"], dump(result)
    assert "nix" not in result.masks
    run_log = result.step("run").raw_output
    for line in run_log.splitlines():
        assert "##[" not in line, line
        if line.lstrip().startswith("::"):
            name = line.lstrip()[2:].split("::", 1)[0].split(" ", 1)[0]
            assert name in {"group", "endgroup", "add-mask", "warning", "error", "notice"}, line
            assert "Injected" not in line.split("::", 2)[1], line  # never in a title
