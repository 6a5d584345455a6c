"""The GitLab CI front end: reads the job's ``CI_*`` variables once, decides the gate before the
command starts, prints collapsible sections and coloured problem lines, and writes the dotenv
report (``nix-job.env``) and the Markdown summary (``nix-job-summary.md``) in the project
directory. GitLab has no runtime masking: nothing here prints a secret, in any form.

The job's OIDC ID token, for the token exchange, is the one the job declares as
``id_tokens: NIX_JOB_ID_TOKEN: {aud: …}`` (GitLab's ``id_tokens`` keyword); the entrypoint takes
it out of the environment and hands it in."""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from nix_job.core.decision import GateInputs, PublishDecision
from nix_job.core.errors import IdTokenError
from nix_job.core.problem import Problem
from nix_job.core.report import RunReport
from nix_job.core.secret import Secret
from nix_job.core.secret_names import GITLAB_ID_TOKEN_ENV
from nix_job.core.summary import output_variables, render_summary
from nix_job.core.text import Redactor
from nix_job.frontends.base import RunContext
from nix_job.frontends.gitlab import output
from nix_job.frontends.gitlab.gate import decide_publish, read_context

#: Report files, in the project directory (artifact paths are relative to it).
DOTENV_FILE = "nix-job.env"
SUMMARY_FILE = "nix-job-summary.md"
# A cancelled job gets SIGTERM and, on the shell executor, SIGKILL minutes later; other
# executors give less (Kubernetes: the pod's grace period). Drain briefly either way.
CANCEL_GRACE_S = 5.0
#: The variable the job declares under ``id_tokens:`` (the nix-job component does).
ID_TOKEN_ENV = GITLAB_ID_TOKEN_ENV


def detects(env: Mapping[str, str]) -> bool:
    """This process runs in a GitLab CI job."""
    return env.get("GITLAB_CI") == "true"


class GitLabFrontend:
    name = "GitLab CI"

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        stream: TextIO | None = None,
        cwd: Path | None = None,
        id_token: Secret | None = None,
    ) -> None:
        self._env = dict(env)
        self._stream = stream or sys.stdout
        self._redactor = Redactor()
        self._id_token = id_token if id_token else None
        if self._id_token is not None:
            self.mask(self._id_token)
        self._gitlab = read_context(env)
        project = Path(env.get("CI_PROJECT_DIR") or cwd or Path.cwd())
        job = re.sub(r"[^A-Za-z0-9._:-]", "", env.get("CI_JOB_ID", "")) or "local"
        self.context = RunContext(
            workspace=project,
            temp_root=Path(tempfile.gettempdir()),
            run_id=f"gitlab-{job}"[:100],
            cancel_grace_s=CANCEL_GRACE_S,
        )
        self._sections: list[str] = []

    def _print(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    # output --------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        for line in self._redactor.redact(text).splitlines() or [""]:
            self._print(output.neutralise(line))

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        name = "nix_job_" + re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
        name = f"{name}_{len(self._sections)}"
        self._sections.append(name)
        clean = output.neutralise(self._redactor.redact(title))
        self._print(output.section_start(name, clean, timestamp=int(time.time()), collapsed=True))
        try:
            yield
        finally:
            self._print(output.section_end(name, timestamp=int(time.time())))

    def report(self, problem: Problem) -> None:
        text = self._redactor.redact(f"{problem.title}: {problem.text}")
        self._print(output.message(problem.kind, text))

    def mask(self, secret: Secret) -> None:
        # No runtime masking on GitLab: every line nix-job prints is redacted instead.
        for form in secret.derived_forms():
            self._redactor.add(form)

    def add_path(self, directory: Path) -> None:
        # The command's PATH has Nix already; GitLab has no later steps to hand PATH to (the
        # rest of the job's script runs in the shell that started nix-job).
        del directory

    # the gate ------------------------------------------------------------------------------

    def decide(self, gate: GateInputs) -> PublishDecision:
        return decide_publish(self._gitlab, gate)

    # the job's identity ------------------------------------------------------------------------

    def id_token(self, audience: str) -> Secret:
        """The job's ID token. Its audience is the ``aud:`` the job declared, whatever
        ``audience`` says (GitLab issues it before the job starts); it lives as long as the
        job's timeout, so renewals exchange it again."""
        if self._id_token is None:
            raise IdTokenError(
                f"{ID_TOKEN_ENV} is not set: declare it in the job, `id_tokens: {ID_TOKEN_ENV}: "
                f"{{aud: {audience}}}` (the nix-job component does), so nix-job can trade the "
                "job's OIDC identity for an Attic token."
            )
        return self._id_token

    # reports -------------------------------------------------------------------------------

    def finish(self, report: RunReport) -> None:
        project = self.context.workspace
        dotenv = output.build_dotenv(output_variables(report), secrets=self._redactor.secrets)
        try:
            (project / DOTENV_FILE).write_text(dotenv.text, encoding="utf-8")
            summary = self._redactor.redact(render_summary(report))
            (project / SUMMARY_FILE).write_text(summary, encoding="utf-8")
        except OSError as exc:
            self._print(
                output.warning(
                    f"nix-job: could not write {DOTENV_FILE} or {SUMMARY_FILE} in {project}: "
                    f"{exc.strerror or exc}"
                )
            )
            return
        self._print(f"nix-job: wrote {DOTENV_FILE} (dotenv report) and {SUMMARY_FILE}")
