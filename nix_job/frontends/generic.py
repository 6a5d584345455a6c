"""The front end outside GitHub Actions and GitLab CI (a workstation, a builder, another CI).

It knows nothing about what triggered the run, so it applies no gate of its own: it publishes
only when the caller says so with ``--publish`` (and push-cache, a token and a cache are
there), and it says plainly that the decision was the caller's. Plain log lines, sections as
headings, problems as ``warning:`` lines; the summary goes to ``--summary-file`` when given.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from nix_job.core.decision import GateInputs, PublishDecision, deny, token_missing_decision
from nix_job.core.errors import IdTokenError
from nix_job.core.problem import Problem
from nix_job.core.report import RunReport
from nix_job.core.secret import Secret
from nix_job.core.summary import output_variables, render_summary
from nix_job.core.text import Redactor
from nix_job.frontends.base import RunContext

CANCEL_GRACE_S = 5.0


def decide_generic(*, publish: bool, gate: GateInputs) -> PublishDecision:
    """Publish only when the caller asked for it (``--publish``). Pure."""
    if not publish:
        return deny(
            "no CI was recognised (neither GitHub Actions nor GitLab CI), so nix-job "
            "applies no gate of its own and publishes only with --publish.",
            notice="push-cache is true, but outside GitHub Actions and GitLab CI nix-job "
            "publishes only when the caller passes --publish after deciding the run is trusted."
            if gate.push_cache
            else None,
        )
    if not gate.push_cache:
        return deny("push-cache is false, so this run reads the cache and publishes nothing.")
    if not gate.cache_attached:
        return deny("--publish was given, but no Attic cache is attached to this run.")
    if not gate.token_present:
        if exchanged := token_missing_decision(gate, where="with --publish"):
            return exchanged
        return deny("--publish was given, but ATTIC_TOKEN is not set, so this run cannot publish.")
    return PublishDecision(
        allowed=True,
        reason="--publish was given: no CI gate was applied, the caller decided this run may "
        "publish.",
    )


class GenericFrontend:
    name = "no CI"

    def __init__(
        self,
        *,
        publish: bool,
        cwd: Path,
        run_id: str,
        summary_file: Path | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self._publish = publish
        self._summary_file = summary_file
        self._stream = stream or sys.stdout
        self._redactor = Redactor()
        self.context = RunContext(
            workspace=cwd,
            temp_root=Path(tempfile.gettempdir()),
            run_id=run_id,
            cancel_grace_s=CANCEL_GRACE_S,
        )

    def _print(self, text: str) -> None:
        print(self._redactor.redact(text), file=self._stream, flush=True)

    def log(self, text: str) -> None:
        self._print(text)

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        self._print(f"== {title}")
        yield

    def report(self, problem: Problem) -> None:
        self._print(f"{problem.kind}: {problem.title}: {problem.text}")

    def mask(self, secret: Secret) -> None:
        for form in secret.derived_forms():
            self._redactor.add(form)

    def add_path(self, directory: Path) -> None:
        del directory  # no later steps to hand PATH to

    def decide(self, gate: GateInputs) -> PublishDecision:
        return decide_generic(publish=self._publish, gate=gate)

    def id_token(self, audience: str) -> Secret:
        raise IdTokenError(
            "outside GitHub Actions and GitLab CI nix-job knows of no OIDC identity to trade for "
            f"an Attic token (audience {audience}): remove attic-token-exchange and give "
            "ATTIC_TOKEN instead."
        )

    def finish(self, report: RunReport) -> None:
        for name, value in output_variables(report).items():
            self._print(f"{name}={value}")
        if self._summary_file is not None:
            try:
                self._summary_file.write_text(self._redactor.redact(render_summary(report)))
            except OSError as exc:
                self._print(f"warning: could not write {self._summary_file}: {exc.strerror}")
