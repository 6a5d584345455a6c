"""The front-end seam: what the run lifecycle needs from the CI system it runs under.

A front end owns everything CI-specific: what triggered the run and whether it may publish
(the gate), where the workspace and scratch space are, how log lines, sections, problems and
masks look, and where outputs and the summary go. The lifecycle (``nix_job.run``) talks to it
only through ``Frontend`` and never names a CI variable. New front ends (``github``, ``gitlab``,
``generic``) implement this protocol; ``nix_job.frontends.select`` picks one.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nix_job.core.decision import GateInputs, PublishDecision
from nix_job.core.problem import Problem
from nix_job.core.report import RunReport
from nix_job.core.secret import Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """Where and as what this run happens, as its CI describes it."""

    workspace: Path  # a relative working-directory starts here
    temp_root: Path  # private scratch space: the netrc, the command script
    run_id: str  # names this run's nix.conf block; [A-Za-z0-9._:-], at most 100 characters
    cancel_grace_s: float  # how long uploads may go on after a cancellation


class Frontend(Protocol):
    @property
    def name(self) -> str:
        """The CI system, for messages: "GitHub Actions", "GitLab CI", …"""
        ...

    @property
    def context(self) -> RunContext: ...

    def log(self, text: str) -> None:
        """Plain log lines (text from outside included: the front end makes them inert)."""
        ...

    def section(self, title: str) -> AbstractContextManager[None]:
        """A collapsible part of the log (a group on GitHub, a section on GitLab)."""
        ...

    def report(self, problem: Problem) -> None:
        """Show a problem now (annotation, coloured line); the summary lists it again."""
        ...

    def mask(self, secret: Secret) -> None:
        """Never print ``secret`` (nor any of its derived forms) from now on."""
        ...

    def add_path(self, directory: Path) -> None:
        """Put ``directory`` on PATH for later steps of the job, where the CI has such steps."""
        ...

    def decide(self, gate: GateInputs) -> PublishDecision:
        """The publish gate of this CI: fail closed, one sentence naming the deciding fact."""
        ...

    def id_token(self, audience: str) -> Secret:
        """This job's OIDC ID token for ``audience``, for the token exchange, masked. Raises
        ``core.errors.IdTokenError`` (what is missing, what to do). Called again, possibly from
        another thread, to renew the exchanged token."""
        ...

    def finish(self, report: RunReport) -> None:
        """Outputs and the summary of the run."""
        ...


class FrontendLogHandler(logging.Handler):
    """The one log seam: records of nix-job's loggers become the front end's log lines."""

    def __init__(self, frontend: Frontend, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._frontend = frontend

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string must never end the run
            text = str(record.msg)
        if getattr(record, "raw", False):  # another program's output, passed through as is
            self._frontend.log(text)
            return
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        self._frontend.log(f"nix-job: {level}{text}")


def attach_log(frontend: Frontend, *, verbose: bool = False) -> FrontendLogHandler:
    """Route the ``nix_job`` loggers to ``frontend``; returns the handler (remove it after)."""
    handler = FrontendLogHandler(frontend, logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger("nix_job")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    # SECURITY: request-level debug logs of httpx/httpcore would show headers.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


def detach_log(handler: FrontendLogHandler) -> None:
    logger = logging.getLogger("nix_job")
    logger.removeHandler(handler)
    logger.propagate = True
