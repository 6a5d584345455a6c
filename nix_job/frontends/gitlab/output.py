"""Text for a GitLab job: collapsible log sections, coloured message lines, the dotenv report.

Pure: every function returns text; the caller prints it or writes the file. Text from outside
(server messages, exceptions, variable values) goes through ``neutralise`` so it cannot forge
a section marker or an escape sequence in the job log.

Facts from gitlabhq: ``doc/ci/jobs/job_logs.md`` (section markers) and ``lib/gitlab/regex.rb``
(``logs_section_prefix_regex``: a section name is ``[a-zA-Z0-9_.-]+``, options are
``[key=value, ...]``, and the marker ends with CR ESC ``[0K``); the dotenv report rules are in
``doc/ci/yaml/artifacts_reports.md`` and ``app/services/ci/parse_dotenv_artifact_service.rb``
(see ``build_dotenv``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DOTENV_BUDGET",
    "DOTENV_SIZE_LIMIT",
    "DOTENV_VARIABLE_LIMIT",
    "MAX_LINE_CHARS",
    "MAX_MESSAGE_LINES",
    "WITHHELD",
    "DotenvReport",
    "Level",
    "build_dotenv",
    "error",
    "message",
    "neutralise",
    "notice",
    "render_dotenv",
    "section_end",
    "section_start",
    "warning",
]

# --- Log text --------------------------------------------------------------------------------

#: A line of outside text longer than this is cut (GitLab shows one log line as one row).
MAX_LINE_CHARS = 2000
#: A message with more lines than this keeps the first ones and says how many were left out.
MAX_MESSAGE_LINES = 40

_SECTION_NAME = re.compile(r"[a-zA-Z0-9_.-]+")  # lib/gitlab/regex.rb, logs_section_prefix_regex
_CLEAR = "\x1b[0K"  # "erase to end of line"; GitLab needs the 0 (doc/ci/jobs/job_logs.md)
_RESET = "\x1b[0m"

Level = Literal["error", "warning", "notice"]

_STYLE: Mapping[Level, tuple[str, str]] = {
    "error": ("\x1b[31;1m", "error"),  # bold red
    "warning": ("\x1b[33;1m", "warning"),  # bold yellow
    "notice": ("\x1b[36;1m", "notice"),  # bold cyan
}

# Characters that reorder or break lines in a browser without being control characters.
_INVISIBLE_LAYOUT = frozenset(
    "\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\t":
        return char
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _unsafe(char: str) -> bool:
    """Control characters (ESC, CR, LF, C1 such as CSI), layout controls, lone surrogates."""
    if char in _INVISIBLE_LAYOUT:
        return True
    category = unicodedata.category(char)
    return category in ("Cc", "Cs") and char != "\t"


def neutralise(text: str, *, max_chars: int = MAX_LINE_CHARS) -> str:
    """``text`` as one safe log line: control characters shown as escapes, cut when long.

    Without ESC and CR nothing can form a section marker (whose end GitLab matches as
    ``\\r\\e[0K``) or any other terminal sequence; without LF the text stays on one line.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    safe = "".join(_escape_char(char) if _unsafe(char) else char for char in text)
    if len(safe) <= max_chars:
        return safe
    return f"{safe[:max_chars]}… ({len(safe) - max_chars} more characters)"


def _lines(text: str) -> list[str]:
    lines = [neutralise(line) for line in re.split(r"\r\n|\n|\r", text)]
    if len(lines) > MAX_MESSAGE_LINES:
        left_out = len(lines) - MAX_MESSAGE_LINES
        lines = [*lines[:MAX_MESSAGE_LINES], f"… ({left_out} more lines)"]
    return lines


def message(level: Level, text: str) -> str:
    """A coloured ``nix-job <level>: …`` message; each line coloured on its own, no final LF.

    GitLab has no annotation API, so warnings and errors are lines that stand out.
    """
    colour, label = _STYLE[level]
    first, *rest = _lines(text)
    lines = [f"{colour}nix-job {label}: {first}{_RESET}"]
    lines += [f"{colour}  {line}{_RESET}" for line in rest]
    return "\n".join(lines)


def error(text: str) -> str:
    return message("error", text)


def warning(text: str) -> str:
    return message("warning", text)


def notice(text: str) -> str:
    return message("notice", text)


def _section_name(name: str) -> str:
    if not _SECTION_NAME.fullmatch(name):
        raise ValueError(
            f"section name {name!r} is not accepted by GitLab: use only letters, digits, "
            "'_', '.' and '-'"
        )
    return name


def _timestamp(timestamp: int) -> int:
    if timestamp < 0:
        raise ValueError(f"a section timestamp is Unix seconds (>= 0), got {timestamp}")
    return timestamp


def section_start(name: str, title: str, *, timestamp: int, collapsed: bool = False) -> str:
    """The line that opens a collapsible section; ``title`` is neutralised. No final LF."""
    options = "[collapsed=true]" if collapsed else ""
    return (
        f"{_CLEAR}section_start:{_timestamp(timestamp)}:{_section_name(name)}{options}"
        f"\r{_CLEAR}{neutralise(title)}"
    )


def section_end(name: str, *, timestamp: int) -> str:
    """The line that closes the section ``name``. No final LF."""
    return f"{_CLEAR}section_end:{_timestamp(timestamp)}:{_section_name(name)}\r{_CLEAR}"


# --- The dotenv report -----------------------------------------------------------------------

#: GitLab's default ``dotenv_size`` plan limit (db/structure.sql, plan_limits); the parser
#: rejects a stored report whose size is not below it.
DOTENV_SIZE_LIMIT = 5 * 1024
#: What nix-job lets its report grow to. The limit applies to the stored file, a gzip stream
#: whose header carries the file's name and path (gitlab-runner helpers/archives/
#: gzip_create.go); 1 KiB of headroom covers that header and text that does not compress.
DOTENV_BUDGET = 4 * 1024
#: GitLab's default ``dotenv_variables`` limit for self-managed instances (GitLab.com: 50+).
DOTENV_VARIABLE_LIMIT = 20
#: What a value holding a secret becomes.
WITHHELD = "(withheld: the value contained a secret)"

_DOTENV_KEY = re.compile(r"[a-zA-Z0-9_]+")  # app/models/concerns/ci/has_variable.rb
_DOTENV_KEY_MAX = 255
_CUT_MARK = "…"
_LINE_BREAKS = re.compile(r"(?:\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029])+")


@dataclass(frozen=True, slots=True, kw_only=True)
class DotenvReport:
    """A rendered report and what had to change for GitLab to read it as meant."""

    text: str
    withheld: tuple[str, ...] = ()  # keys whose value contained a secret
    truncated: tuple[str, ...] = ()  # keys whose value was cut to fit the budget


def _dotenv_value(value: str) -> str:
    """The value as GitLab will read it back: one line, no control characters or tabs, no
    outer spaces.

    GitLab's parser takes each line as ``^(.*?)=(.*)$`` and strips both sides, with no
    quoting, escaping or comments: quotes, ``#`` and ``=`` in a value are kept literally, a
    line break would end the value (and the rest would be read as another line), and leading
    or trailing whitespace would be lost.
    """
    one_line = _LINE_BREAKS.sub(" ", value)
    cleaned = "".join(" " if char == "\t" or _unsafe(char) else char for char in one_line)
    return cleaned.strip(" ")


def _check_key(key: str) -> None:
    if not _DOTENV_KEY.fullmatch(key) or len(key) > _DOTENV_KEY_MAX:
        raise ValueError(
            f"dotenv key {key!r} is not accepted by GitLab: use 1 to 255 letters, digits and '_'"
        )


def _size(values: Mapping[str, str]) -> int:
    return sum(len(f"{key}={value}\n".encode()) for key, value in values.items())


def _cut(value: str, max_bytes: int) -> str:
    """``value`` cut to at most ``max_bytes`` UTF-8 bytes, the cut marked, on a character edge."""
    mark = len(_CUT_MARK.encode())
    if max_bytes < mark:
        return ""
    kept = value.encode()[: max_bytes - mark].decode(errors="ignore").rstrip(" ")
    return kept + _CUT_MARK


def build_dotenv(
    values: Mapping[str, str],
    *,
    secrets: Collection[str] = (),
    max_bytes: int = DOTENV_BUDGET,
) -> DotenvReport:
    """A dotenv report GitLab accepts and reads back as meant: one ``KEY=value`` a line.

    Values are made single-line (line breaks and control characters become spaces) and
    stripped of outer spaces, as GitLab would strip them. A value containing any of
    ``secrets`` is replaced by ``WITHHELD`` before anything else (so no part of it survives a
    cut). If the report would exceed ``max_bytes``, the longest values are cut first, so short
    values such as counts and exit codes stay whole. Raises ``ValueError`` for a key GitLab
    rejects, for more than ``DOTENV_VARIABLE_LIMIT`` keys, or when even cutting cannot fit.
    """
    if len(values) > DOTENV_VARIABLE_LIMIT:
        raise ValueError(
            f"{len(values)} dotenv variables are more than GitLab's default limit of "
            f"{DOTENV_VARIABLE_LIMIT}"
        )
    needles = [secret for secret in secrets if secret]
    withheld: list[str] = []
    cleaned: dict[str, str] = {}
    for key, value in values.items():
        _check_key(key)
        clean = _dotenv_value(value)
        if any(secret in value or secret in clean for secret in needles):
            withheld.append(key)
            clean = WITHHELD
        cleaned[key] = clean

    truncated: list[str] = []
    while (excess := _size(cleaned) - max_bytes) > 0:
        longest = max(cleaned, key=lambda key: len(cleaned[key].encode()))
        length = len(cleaned[longest].encode())
        if length <= len(_CUT_MARK.encode()):
            raise ValueError(
                f"the dotenv report needs {_size(cleaned)} bytes for its keys alone, more than "
                f"the {max_bytes} allowed"
            )
        cleaned[longest] = _cut(cleaned[longest], length - excess)
        if longest not in truncated:
            truncated.append(longest)

    text = "".join(f"{key}={value}\n" for key, value in cleaned.items())
    return DotenvReport(text=text, withheld=tuple(withheld), truncated=tuple(truncated))


def render_dotenv(
    values: Mapping[str, str],
    *,
    secrets: Collection[str] = (),
    max_bytes: int = DOTENV_BUDGET,
) -> str:
    """The text of ``build_dotenv``; use that when the caller wants to report what changed."""
    return build_dotenv(values, secrets=secrets, max_bytes=max_bytes).text
