"""The runner's view of one run: the ``github`` and ``runner`` contexts, the event file, and
the GITHUB_*/RUNNER_* variables every step gets (github/docs, "Variables reference"). Small I/O: it
writes the event payload under RUNNER_TEMP.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.action_file import HarnessError

FAKE_GITHUB_TOKEN = "ghs_HarnessFakeGithubToken0123456789abcd"
# github-context keys a test may override; each also becomes GITHUB_<KEY> unless noted below.
GITHUB_KEYS = frozenset(
    {
        "repository",
        "repository_owner",
        "repository_id",
        "sha",
        "token",
        "run_id",
        "run_number",
        "run_attempt",
        "job",
        "actor",
        "triggering_actor",
        "workflow",
        "workflow_ref",
        "api_url",
        "server_url",
        "graphql_url",
        "ref_name",
        "ref_type",
        "ref_protected",
        "base_ref",
        "head_ref",
        "action",
        "action_ref",
        "action_repository",
        "secret_source",
        "retention_days",
    }
)
NOT_EXPORTED = frozenset({"token", "secret_source", "event", "action_ref", "action_repository"})
RUNNER_KEYS = frozenset({"os", "arch", "name", "environment", "debug"})
PR_EVENTS = frozenset({"pull_request", "pull_request_target"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerContext:
    github: dict[str, Any]
    runner: dict[str, str]
    variables: dict[str, str]  # GITHUB_*, RUNNER_*, CI: the runner's, never overridable
    event_path: Path | None


def ref_details(ref: str) -> dict[str, str]:
    """GITHUB_REF_NAME and GITHUB_REF_TYPE derived from a full ref."""
    for prefix, ref_type in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix):
            return {"ref_name": ref[len(prefix) :], "ref_type": ref_type}
    if ref.startswith("refs/pull/"):
        return {"ref_name": ref[len("refs/pull/") :], "ref_type": "branch"}
    return {"ref_name": ref, "ref_type": "branch"}


def runner_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "X64", "amd64": "X64", "aarch64": "ARM64", "arm64": "ARM64"}.get(
        machine, machine.upper()
    )


def build_runner_context(
    *,
    action_dir: Path,
    workspace: Path,
    runner_temp: Path,
    tool_cache: Path,
    event_name: str,
    event_payload: Mapping[str, Any] | bytes | None,
    ref: str | None,
    github: Mapping[str, str] | None,
    runner: Mapping[str, str] | None,
) -> RunnerContext:
    """Contexts and variables for a run; see ``run_action`` for the meaning of each argument."""
    overrides = dict(github or {})
    unknown = sorted(set(overrides) - GITHUB_KEYS)
    if unknown:
        raise HarnessError(f"unknown github override(s) {unknown}; known: {sorted(GITHUB_KEYS)}")
    runner_overrides = dict(runner or {})
    unknown = sorted(set(runner_overrides) - RUNNER_KEYS)
    if unknown:
        raise HarnessError(f"unknown runner override(s) {unknown}; known: {sorted(RUNNER_KEYS)}")

    event_path: Path | None = None
    payload: Any = {}
    if event_payload is not None:
        event_path = runner_temp / "_github_workflow" / "event.json"
        event_path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(event_payload, bytes):
            event_path.write_bytes(event_payload)
            try:
                payload = json.loads(event_payload)
            except (ValueError, UnicodeDecodeError):
                payload = {}
        else:
            payload = json.loads(json.dumps(event_payload))
            event_path.write_text(json.dumps(payload, indent=2))

    repository = overrides.get("repository", "octo-org/octo-repo")
    gh: dict[str, Any] = {
        "action": "__self",
        "action_path": str(action_dir),
        "action_ref": "",
        "action_repository": "",
        "actor": "octocat",
        "api_url": "https://api.github.com",
        "event": payload,
        "event_name": event_name,
        "graphql_url": "https://api.github.com/graphql",
        "job": "test",
        "repository": repository,
        "repository_id": "1",
        "repository_owner": repository.split("/")[0],
        "retention_days": "90",
        "run_attempt": "1",
        "run_id": "1",
        "run_number": "1",
        "secret_source": "Actions",
        "server_url": "https://github.com",
        "sha": "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c",
        "token": FAKE_GITHUB_TOKEN,
        "triggering_actor": "octocat",
        "workflow": "CI",
        "workflow_ref": f"{repository}/.github/workflows/ci.yml@{ref or 'refs/heads/main'}",
        "workspace": str(workspace),
        "ref_protected": "false",
    }
    if event_path is not None:
        gh["event_path"] = str(event_path)
    if ref is not None:
        gh["ref"] = ref
        gh.update(ref_details(ref))
    if event_name in PR_EVENTS and isinstance(payload, dict):
        pull = payload.get("pull_request")
        if isinstance(pull, dict):
            base, head = pull.get("base"), pull.get("head")
            gh["base_ref"] = base.get("ref", "") if isinstance(base, dict) else ""
            gh["head_ref"] = head.get("ref", "") if isinstance(head, dict) else ""
        else:
            gh["base_ref"] = gh["head_ref"] = ""
    gh.update(overrides)

    runner_ctx = {
        "os": "Linux",
        "arch": runner_arch(),
        "name": "harness",
        "environment": "github-hosted",
        "temp": str(runner_temp),
        "tool_cache": str(tool_cache),
        "debug": "",
        **runner_overrides,
    }
    runner_vars = {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_ACTION_PATH": str(action_dir),
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_EVENT_NAME": event_name,
        "RUNNER_OS": runner_ctx["os"],
        "RUNNER_ARCH": runner_ctx["arch"],
        "RUNNER_NAME": runner_ctx["name"],
        "RUNNER_ENVIRONMENT": runner_ctx["environment"],
        "RUNNER_TEMP": str(runner_temp),
        "RUNNER_TOOL_CACHE": str(tool_cache),
    }
    if runner_ctx["debug"]:
        runner_vars["RUNNER_DEBUG"] = runner_ctx["debug"]
    if event_path is not None:
        runner_vars["GITHUB_EVENT_PATH"] = str(event_path)
    for key, value in gh.items():
        if key not in NOT_EXPORTED and isinstance(value, str) and key != "action_path":
            runner_vars["GITHUB_" + key.upper()] = value
    return RunnerContext(github=gh, runner=runner_ctx, variables=runner_vars, event_path=event_path)
