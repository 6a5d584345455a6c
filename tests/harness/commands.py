"""The runner's two step protocols: file commands (GITHUB_ENV, GITHUB_OUTPUT, ...) and stdout
workflow commands (``::add-mask::``, annotations, groups), plus secret masking of log lines.

Pure parsing; the grammar and the error texts follow actions/runner (FileCommandManager,
ActionCommandManager). No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")

# Commands the runner recognises on stdout and stderr (anything else is plain log text).
KNOWN_COMMANDS = frozenset(
    {
        "add-mask",
        "error",
        "warning",
        "notice",
        "debug",
        "group",
        "endgroup",
        "stop-commands",
        "echo",
        "add-matcher",
        "remove-matcher",
        "set-output",
        "set-env",
        "add-path",
        "save-state",
    }
)
# Replaced by file commands; the runner disables or deprecates them, the harness flags them.
DEPRECATED_COMMANDS = frozenset({"set-output", "set-env", "add-path", "save-state"})


class FileCommandError(ValueError):
    """A GITHUB_ENV / GITHUB_OUTPUT / GITHUB_STATE file breaks the runner's grammar."""


def _lines(text: str) -> list[str]:
    lines = _LINE_BREAK_RE.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def parse_key_value_file(text: str, *, command: str) -> dict[str, str]:
    """Parse ``NAME=value`` and ``NAME<<DELIM`` … ``DELIM`` records, as the runner does.

    ``command`` (``env``, ``output``, ``state``) only names the file in error messages. Later
    records win. Empty lines are skipped; a heredoc value's lines are joined with ``\\n``.
    """
    result: dict[str, str] = {}
    lines = _lines(text)
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line == "":
            continue
        equals = line.find("=")
        heredoc = line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, value = line[:equals], line[equals + 1 :]
            _check_name(name, line, command)
            result[name] = value
        elif heredoc >= 0 and (equals < 0 or heredoc < equals):
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            _check_name(name, line, command)
            if delimiter == "":
                raise FileCommandError(
                    f"Unable to process file command '{command}' successfully: invalid format "
                    f"{line!r}, the heredoc delimiter after '<<' is empty. Write NAME<<DELIM, "
                    "the value lines, then DELIM alone on a line (use a random delimiter)."
                )
            value_lines: list[str] = []
            while True:
                if i >= len(lines):
                    raise FileCommandError(
                        f"Unable to process file command '{command}' successfully: invalid "
                        f"value, matching delimiter not found {delimiter!r}. End the value with "
                        "a newline, then the delimiter alone on its own line."
                    )
                current = lines[i]
                i += 1
                if current == delimiter:
                    break
                value_lines.append(current)
            result[name] = "\n".join(value_lines)
        else:
            raise FileCommandError(
                f"Unable to process file command '{command}' successfully: invalid format "
                f"{line!r}; every record is NAME=value or NAME<<DELIMITER."
            )
    return result


def _check_name(name: str, line: str, command: str) -> None:
    if name == "":
        raise FileCommandError(
            f"Unable to process file command '{command}' successfully: invalid format {line!r}, "
            "the name must not be empty."
        )
    if "\0" in name:
        raise FileCommandError(
            f"Unable to process file command '{command}' successfully: the name {name!r} "
            "contains a NUL byte."
        )


def parse_path_file(text: str) -> list[str]:
    """GITHUB_PATH: one directory per non-blank line, in file order."""
    return [line for line in _lines(text) if line.strip() != ""]


# ---------------------------------------------------------------- stdout commands


def unescape_data(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def unescape_property(text: str) -> str:
    return (
        text.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowCommand:
    name: str
    properties: dict[str, str] = field(default_factory=dict)
    data: str = ""


def parse_workflow_command(line: str) -> WorkflowCommand | None:
    """Parse one log line as ``::name key=v,key=v::data`` (the runner's TryParseV2), else None.

    The name ends at the first space, so ``::add-mask ::x`` (github-action-utils) is add-mask.
    Properties without a value are dropped; values and data are unescaped.
    """
    text = line.lstrip()
    if not text.startswith("::"):
        return None
    end = text.find("::", 2)
    if end < 0:
        return None
    info = text[2:end]
    space = info.find(" ")
    name = info if space < 0 else info[:space]
    if name not in KNOWN_COMMANDS:
        return None
    properties: dict[str, str] = {}
    if space > 0:
        for item in info[space + 1 :].strip().split(","):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if key and sep and value:
                properties[key] = unescape_property(value)
    return WorkflowCommand(name=name, properties=properties, data=unescape_data(text[end + 2 :]))


class Masker:
    """Secret values registered with add-mask, replaced by ``***`` in each log line."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        for value in values:
            self.add(value)

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self._values)

    def add(self, value: str) -> bool:
        """Register a value; blank values are refused (the runner warns and ignores them)."""
        if value.strip() == "":
            return False
        if value not in self._values:
            self._values.append(value)
            self._values.sort(key=len, reverse=True)
        return True

    def mask(self, line: str) -> str:
        """Mask one line. A multi-line secret never matches a single line, as on the runner."""
        for value in self._values:
            if value in line:
                line = line.replace(value, "***")
        return line
