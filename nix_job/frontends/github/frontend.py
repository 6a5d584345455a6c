"""The GitHub Actions front end: reads the runner's ``GITHUB_*``/``RUNNER_*`` variables and the
event payload once, decides the gate (with one API call when the payload lacks the default
branch), requests the job's OIDC ID token for the token exchange, and speaks workflow commands,
outputs and the job summary."""

from __future__ import annotations

import tempfile
import threading
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
from nix_job.frontends.github.oidc import REQUEST_URL_ENV, missing_request, request_id_token

# The runner sends SIGTERM 7.5 s after SIGINT on a cancellation: drain for less than that.
CANCEL_GRACE_S = 5.0

Fetch = Callable[[Secret, str, str], DefaultBranchLookup]
#: (request URL, request token, audience) → an ID token; raises IdTokenError.
RequestIdToken = Callable[[str, Secret, str], Secret]


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


def _default_id_token(url: str, request_token: Secret, audience: str) -> Secret:
    return request_id_token(url=url, request_token=request_token, audience=audience)


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
        id_token_request: Secret | None = None,
        request_id_token: RequestIdToken = _default_id_token,
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
        # ACTIONS_ID_TOKEN_REQUEST_TOKEN, taken out of the environment by the entrypoint.
        self._id_token_request = id_token_request if id_token_request else None
        self._request_id_token = request_id_token
        if self._id_token_request is not None:
            self.mask(self._id_token_request)

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
        # SECURITY: a mask from another thread (a renewed token) can come while the command
        # writes to the same stdout, maybe mid-line; the runner reads `::add-mask::` only at
        # the start of a line and prints any other line as is, token included.
        fresh_line = threading.current_thread() is not threading.main_thread()
        for form in secret.derived_forms():
            self._workflow.mask(form, fresh_line=fresh_line)

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

    # the job's identity ------------------------------------------------------------------------

    def id_token(self, audience: str) -> Secret:
        """A fresh ID token for ``audience``, masked before it is returned."""
        url = self._env.get(REQUEST_URL_ENV, "").strip()
        request = self._id_token_request
        if not url or request is None:
            raise missing_request(url=url, token=request, fork=self._event.is_fork is True)
        token = self._request_id_token(url, request, audience)
        self.mask(token)
        return token
