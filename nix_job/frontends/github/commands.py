"""Workflow commands for one step: log lines, groups, masks, annotations, outputs, PATH, summary.

The protocol is small, so it is written here rather than taken from a library:
- stdout commands in their canonical form ``::name key=value::data``, and ``::name::data``
  when there are no properties (actions/toolkit ``command.ts``). github-action-utils writes
  ``::add-mask ::VALUE``, which GitHub's runner accepts but nektos/act's parser
  (``pkg/runner/command.go``, also used by Gitea and Forgejo runners) does not: it printed the
  masked values instead of masking them;
- file commands appended to the files named by the step's environment (``GITHUB_OUTPUT``,
  ``GITHUB_PATH``, ``GITHUB_STEP_SUMMARY``), multi-line values with a random heredoc delimiter.
Also: an annotation budget (the runner shows 10 per kind per step), line-by-line masks, every
printed line redacted of masked values, and lines from outside (server, Nix, exceptions) that
can never be read as a workflow command.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from nix_job.core.problem import Kind
from nix_job.core.text import Redactor

# The runner shows 10 annotations per kind per step; keep a margin for the runner's own.
ANNOTATION_BUDGET = 5
# Longest line nix-job prints from outside text; the rest is cut (a server could send megabytes).
MAX_LINE_CHARS = 4000


def escape_data(text: str) -> str:
    """Command data: ``%``, CR and LF escaped (actions/toolkit ``escapeData``), and the legacy
    ``##[`` marker made inert, so no text inside a command can start another."""
    escaped = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return escaped.replace("##[", "##\u200d[")


def escape_property(text: str) -> str:
    """Command property values: also ``:`` and ``,`` (actions/toolkit ``escapeProperty``)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(name: str, data: str = "", **properties: str | None) -> str:
    """One workflow command line. Properties with no value are left out, as the runner does."""
    props = ",".join(
        f"{key}={escape_property(value)}" for key, value in properties.items() if value
    )
    return f"::{name}{' ' + props if props else ''}::{escape_data(data)}"


def neutralise(line: str) -> str:
    """A log line that no runner reads as a command.

    GitHub's runner parses a line as ``::command`` after trimming leading whitespace, and the
    legacy ``##[command]`` form anywhere in a line (actions/runner ``ActionCommand.cs``
    ``TryParseV2`` / ``TryParse``). A zero-width joiner inside the marker keeps the text
    readable and makes it inert.
    """
    if len(line) > MAX_LINE_CHARS:
        line = line[:MAX_LINE_CHARS] + f" … ({len(line) - MAX_LINE_CHARS} more characters)"
    if line.lstrip().startswith("::"):
        stripped = line.lstrip()
        line = line[: len(line) - len(stripped)] + ":\u200d" + stripped[1:]
    return line.replace("##[", "##\u200d[")


class Workflow:
    """Workflow commands for one step. ``env`` is the step's environment (for the file paths)."""

    def __init__(self, env: Mapping[str, str], stream: TextIO | None = None) -> None:
        self._output = env.get("GITHUB_OUTPUT") or None
        self._path = env.get("GITHUB_PATH") or None
        self._summary = env.get("GITHUB_STEP_SUMMARY") or None
        self._stream = stream or sys.stdout
        self._used: dict[Kind, int] = {"error": 0, "warning": 0, "notice": 0}
        self.redactor = Redactor()

    # stdout --------------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        print(line, file=self._stream, flush=True)

    def log(self, message: str) -> None:
        """Plain log lines: redacted, each made inert, long ones cut."""
        for line in self.redactor.redact(message).splitlines() or [""]:
            self._emit(neutralise(line))

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        self._emit(command("group", self.redactor.redact(title).replace("\n", " ")))
        try:
            yield
        finally:
            self._emit(command("endgroup"))

    def mask(self, secret: str, *, fresh_line: bool = False) -> None:
        """Mask a secret, each line on its own (the runner masks single lines). ``fresh_line``:
        start with a line break, in one write, in case another process sharing stdout (the
        command) is in the middle of a line."""
        for line in secret.splitlines():
            if line.strip() and self.redactor.add(line):
                self._emit(("\n" if fresh_line else "") + command("add-mask", line))

    def annotate(self, kind: Kind, message: str, *, title: str | None = None) -> bool:
        """Emit an annotation within the budget; past it, only log (the job summary lists every
        problem anyway). Returns whether emitted."""
        message, title = self.redactor.redact(message), self.redactor.redact(title or "")
        if self._used[kind] >= ANNOTATION_BUDGET:
            self.log(f"{kind}: {title + ': ' if title else ''}{message}")
            return False
        self._used[kind] += 1
        self._emit(command(kind, message, title=title or None))
        return True

    # files ---------------------------------------------------------------------------------

    def set_outputs(self, outputs: Mapping[str, str]) -> None:
        """Step outputs; outside Actions (no GITHUB_OUTPUT) they are logged instead."""
        if self._output is None:
            for name, value in outputs.items():
                self.log(f"output {name}={value}")
            return
        records = []
        for name, value in outputs.items():
            text = self.redactor.redact(value)
            delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
            while delimiter in text:  # pragma: no cover - a 128-bit random collision
                delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
            records.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
        _append(self._output, "".join(records))

    def add_path(self, directory: str) -> None:
        """Put ``directory`` on PATH for later steps (this process updates its own env itself)."""
        if self._path is not None:
            _append(self._path, directory + "\n")

    def write_summary(self, markdown: str) -> None:
        if self._summary is not None:
            _append(self._summary, self.redactor.redact(markdown))


def _append(path: str, text: str) -> None:
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(text)
