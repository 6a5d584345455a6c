"""Talking to the GitHub runner: log lines, groups, masks, annotations, outputs, job summary.

A thin adapter over github-action-utils. It adds what that library lacks: an annotation budget
(the runner shows at most 10 per kind per step), line-by-line masking of multi-line secrets,
and a local mode (no ``GITHUB_OUTPUT``) that prints outputs instead of failing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Literal, TextIO

import github_action_utils as gau

Kind = Literal["error", "warning", "notice"]

# The runner shows 10 annotations per kind per step; keep a margin for the runner's own.
ANNOTATION_BUDGET = 5


class Workflow:
    """Workflow commands for one step. ``env`` is the step's environment (for file paths)."""

    def __init__(self, env: Mapping[str, str], stream: TextIO | None = None) -> None:
        self._in_actions = bool(env.get("GITHUB_OUTPUT"))
        self._has_summary = bool(env.get("GITHUB_STEP_SUMMARY"))
        self._stream = stream or sys.stdout
        self._used: dict[Kind, int] = {"error": 0, "warning": 0, "notice": 0}
        self.masked: set[str] = set()

    def log(self, message: str) -> None:
        # Lines that look like workflow commands are neutralised: a message is never a command.
        for line in message.splitlines() or [""]:
            text = line if not line.lstrip().startswith("::") else " " + line
            print(text, file=self._stream, flush=True)

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        self._stream.flush()
        gau.start_group(title.replace("\n", " "))
        try:
            yield
        finally:
            sys.stdout.flush()
            gau.end_group()

    def mask(self, secret: str) -> None:
        """Mask a secret, each line on its own (the runner masks single lines)."""
        for line in secret.splitlines():
            if line.strip() and line not in self.masked:
                self.masked.add(line)
                gau.add_mask(line)

    def annotate(self, kind: Kind, message: str, *, title: str | None = None) -> bool:
        """Emit an annotation within the budget; past it, only log (the job summary lists every
        problem anyway). Returns whether emitted."""
        if self._used[kind] >= ANNOTATION_BUDGET:
            self.log(f"{kind}: {title + ': ' if title else ''}{message}")
            return False
        self._used[kind] += 1
        emit = {"error": gau.error, "warning": gau.warning, "notice": gau.notice}[kind]
        sys.stdout.flush()
        emit(message, title=title)
        return True

    def set_outputs(self, outputs: Mapping[str, str]) -> None:
        for name, value in outputs.items():
            if self._in_actions:
                gau.set_output(name, value)
            else:
                self.log(f"output {name}={value}")

    def add_path(self, directory: str) -> None:
        """Put ``directory`` on PATH for later steps (this process updates its own env itself)."""
        if self._in_actions:
            gau.add_system_path(directory)

    def write_summary(self, markdown: str) -> None:
        if self._has_summary:
            gau.append_job_summary(markdown)
