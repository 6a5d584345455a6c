"""A fake front end: records everything the lifecycle says, and decides with a given gate."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nix_job.core.decision import GateInputs, PublishDecision
from nix_job.core.errors import IdTokenError
from nix_job.core.problem import Problem
from nix_job.core.report import RunReport
from nix_job.core.secret import Secret
from nix_job.frontends.base import RunContext


def allow_all(gate: GateInputs) -> PublishDecision:
    """A gate that publishes whenever push-cache, a token and a cache are there."""
    if gate.push_cache and gate.token_present and gate.cache_attached:
        return PublishDecision(allowed=True, reason="the fake gate allows it.")
    return PublishDecision(allowed=False, reason="the fake gate lacks a condition.")


def deny_all(gate: GateInputs) -> PublishDecision:
    del gate
    return PublishDecision(
        allowed=False, reason="this is a pull request.", notice="pull requests never publish."
    )


@dataclass
class FakeFrontend:
    context: RunContext
    gate: Callable[[GateInputs], PublishDecision] = allow_all
    name: str = "fake CI"
    logs: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    masked: list[Secret] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    decisions: list[GateInputs] = field(default_factory=list)
    finished: list[RunReport] = field(default_factory=list)
    # The job's ID tokens, one per request (None: the CI gives none, IdTokenError).
    id_tokens: Callable[[str], Secret] | None = None
    audiences: list[str] = field(default_factory=list)

    def log(self, text: str) -> None:
        self.logs.append(text)

    @contextmanager
    def section(self, title: str) -> Iterator[None]:
        self.sections.append(title)
        yield

    def report(self, problem: Problem) -> None:
        self.problems.append(problem)

    def mask(self, secret: Secret) -> None:
        self.masked.append(secret)

    def add_path(self, directory: Path) -> None:
        self.paths.append(directory)

    def decide(self, gate: GateInputs) -> PublishDecision:
        self.decisions.append(gate)
        return self.gate(gate)

    def finish(self, report: RunReport) -> None:
        self.finished.append(report)

    def id_token(self, audience: str) -> Secret:
        self.audiences.append(audience)
        if self.id_tokens is None:
            raise IdTokenError("the fake CI gives no ID token", expected=False)
        token = self.id_tokens(audience)
        self.mask(token)
        return token

    @property
    def report_(self) -> RunReport:
        """The one report the run finished with."""
        (report,) = self.finished
        return report
