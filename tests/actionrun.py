"""Running the real action.yml through the harness, with the settings every action test shares."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness import ActionResult, Cancel, run_action
from tests.harness.oidc import IdTokenEndpoint
from tests.nixenv import NixEnv

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BRANCH = "main"


def push_payload(repository: str = "acme/app", branch: str = DEFAULT_BRANCH) -> dict[str, Any]:
    return {
        "ref": f"refs/heads/{branch}",
        "repository": {"full_name": repository, "default_branch": DEFAULT_BRANCH},
    }


def pull_request_payload(*, fork: bool, repository: str = "acme/app") -> dict[str, Any]:
    head = "someone/app" if fork else repository
    return {
        "repository": {"full_name": repository, "default_branch": DEFAULT_BRANCH},
        "pull_request": {
            "number": 7,
            "head": {"ref": "feature", "repo": {"full_name": head, "fork": fork}},
            "base": {
                "ref": DEFAULT_BRANCH,
                "repo": {"full_name": repository, "default_branch": DEFAULT_BRANCH},
            },
        },
    }


EVENTS: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "push": ("push", f"refs/heads/{DEFAULT_BRANCH}", push_payload()),
    "pull_request": ("pull_request", "refs/pull/7/merge", pull_request_payload(fork=False)),
    "fork_pull_request": ("pull_request", "refs/pull/7/merge", pull_request_payload(fork=True)),
    "pull_request_target": (
        "pull_request_target",
        f"refs/heads/{DEFAULT_BRANCH}",
        pull_request_payload(fork=True),
    ),
    "push_feature_branch": ("push", "refs/heads/feature", push_payload(branch="feature")),
    "push_tag": ("push", "refs/tags/v1.0.0", push_payload()),
    "workflow_dispatch_branch": ("workflow_dispatch", "refs/heads/feature", push_payload()),
    "schedule": ("schedule", f"refs/heads/{DEFAULT_BRANCH}", {"schedule": "0 3 * * *"}),
}


def host_env(nix_config: str | None = None, **extra: str) -> dict[str, str]:
    """A minimal runner-like process environment: PATH with python3 and Nix, HOME."""
    python_dir = str(Path(shutil.which("python3") or "/usr/bin/python3").parent)
    env = {
        "PATH": os.pathsep.join(dict.fromkeys([python_dir, "/usr/local/bin", "/usr/bin", "/bin"])),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    if nix_config is not None:
        env["NIX_CONFIG"] = nix_config
    env.update(extra)
    return env


# What a runner-like step process keeps of an isolated Nix environment.
NIX_PROCESS_KEYS = (
    "PATH",
    "HOME",
    "LANG",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "TMPDIR",
    "NIX_CONFIG",
    "NIX_REMOTE",
)


def nix_process_env(nix: NixEnv, **extra: str) -> dict[str, str]:
    """``host_env()`` with ``nix``'s isolated, offline Nix settings, plus ``extra``."""
    isolated = nix.env(host_env())
    env = {k: isolated[k] for k in isolated if k in NIX_PROCESS_KEYS}
    env.update(extra)
    return env


def run_nix_job(
    *,
    workspace: Path,
    tool_cache: Path,
    inputs: Mapping[str, str],
    event: str = "push",
    env: Mapping[str, str] | None = None,
    process_env: Mapping[str, str] | None = None,
    payload: Mapping[str, Any] | bytes | str | None = "default",
    secrets: tuple[str, ...] = (),
    cancel: Cancel | None = None,
    timeout: float = 240.0,
    id_token: IdTokenEndpoint | None = None,
) -> ActionResult:
    event_name, ref, default_payload = EVENTS[event]
    return run_action(
        ROOT,
        inputs=dict(inputs),
        env=dict(env or {}),
        event_name=event_name,
        event_payload=default_payload if payload == "default" else payload,  # type: ignore[arg-type]
        ref=ref,
        workspace=workspace,
        tool_cache=tool_cache,
        github={"repository": "acme/app"},
        host_env=dict(process_env or host_env()),
        secrets=secrets,
        cancel=cancel,
        timeout=timeout,
        id_token=id_token,
    )


def dump(result: ActionResult) -> str:
    """Everything useful when an action test fails."""
    return json.dumps({"outputs": result.outputs, "exit": result.exit_code}) + "\n" + result.output
