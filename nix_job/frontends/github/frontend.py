"""The GitHub Actions front end: reads the runner's ``GITHUB_*``/``RUNNER_*`` variables and the
event payload once, decides the gate (with one API call when the payload lacks the default
branch), and speaks workflow commands, outputs and the job summary."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from nix_job.core.decision import GateInputs, PublishDecision
from nix_job.core.problem import Problem
from nix_job.core.report import RunReport
from nix_job.core.secret import Secret
from nix_job.core.summary import action_outputs, render_summary
from nix_job.frontends.base import RunContext
from nix_job.frontends.github.api import (
    DefaultBranchLookup,
    fetch_default_branch,
    resolve_default_branch,
)
from nix_job.frontends.github.commands import Workflow
from nix_job.frontends.github.event import EventContext, read_event
from nix_job.frontends.github.gate import decide_publish

# The runner sends SIGTERM 7.5 s after SIGINT on a cancellation: drain for less than that.
CANCEL_GRACE_S = 5.0

Fetch = Callable[[Secret, str, str], DefaultBranchLookup]


def detects(env: Mapping[str, str]) -> bool:
    """This process runs in a GitHub Actions step."""
    return env.get("GITHUB_ACTIONS") == "true"


def _read_payload(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _default_fetch(token: Secret, api_url: str, repository: str) -> DefaultBranchLookup:
    return fetch_default_branch(token=token, api_url=api_url, repository=repository)


class GitHubFrontend:
    name = "GitHub Actions"

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        github_token: Secret | None = None,
        stream: TextIO | None = None,
        fetch: Fetch = _default_fetch,
        cwd: Path | None = None,
    ) -> None:
        self._env = dict(env)
        self._workflow = Workflow(env, stream)
        self._github_token = github_token if github_token else None
        self._fetch = fetch
        self._event = read_event(env, _read_payload(env.get("GITHUB_EVENT_PATH")))
        self._resolved: EventContext | None = None
        run_id = f"{env.get('GITHUB_RUN_ID') or 'local'}-{env.get('GITHUB_RUN_ATTEMPT') or '1'}"
        self.context = RunContext(
            workspace=Path(env.get("GITHUB_WORKSPACE") or cwd or Path.cwd()),
            temp_root=Path(env.get("RUNNER_TEMP") or tempfile.gettempdir()),
            run_id=run_id,
            cancel_grace_s=CANCEL_GRACE_S,
        )
        if self._github_token is not None:
            self.mask(self._github_token)

    # output --------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        self._workflow.log(text)

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        with self._workflow.group(title):
            yield

    def report(self, problem: Problem) -> None:
        self._workflow.annotate(problem.kind, problem.text, title=problem.title)

    def mask(self, secret: Secret) -> None:
        for form in secret.derived_forms():
            self._workflow.mask(form)

    def add_path(self, directory: Path) -> None:
        self._workflow.add_path(str(directory))

    def finish(self, report: RunReport) -> None:
        self._workflow.set_outputs(action_outputs(report))
        self._workflow.write_summary(render_summary(report))

    # the gate ------------------------------------------------------------------------------

    def _event_with_default_branch(self) -> EventContext:
        """The event, with the default branch from the API when the payload lacked it (once)."""
        if self._resolved is None:
            token = self._github_token
            repository = self._env.get("GITHUB_REPOSITORY", "")
            fetch: Callable[[], DefaultBranchLookup] | None = None
            if token is not None and repository:
                api_url = self._env.get("GITHUB_API_URL") or "https://api.github.com"

                def fetch() -> DefaultBranchLookup:
                    return self._fetch(token, api_url, repository)

            self._resolved = resolve_default_branch(self._event, fetch)
        return self._resolved

    def decide(self, gate: GateInputs) -> PublishDecision:
        return decide_publish(event=self._event_with_default_branch(), gate=gate)
