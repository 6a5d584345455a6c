"""nektos/act's grammar for stdout workflow commands, re-implemented from its documented facts.

Source: nektos/act ``pkg/runner/command.go`` (``commandPatternGA``, ``commandPatternADO``,
``tryParseRawActionCommand``, ``parseKeyValuePairs``, ``unescapeCommandData``,
``unescapeCommandProperty``). The Gitea and Forgejo runners use act's runner package, so they
parse the same way. Differences from GitHub's runner (``tests.harness.commands``):

- the whole line must match ``^::([^ ]+)( (.+))?::([^\\r\\n]*)[\\r\\n]+$``: a space is only
  allowed when properties follow it, so ``::add-mask ::value`` (a space and no properties) is
  not a command at all and is printed as plain text, value included;
- the command name is the longest run of non-spaces that still lets the line match (Go's
  leftmost-first submatches, as in Python's ``re``), so data holding ``::`` can move into it;
- properties are split at ``,`` and then at every ``=``; a pair with more than one ``=`` is
  dropped; values are unescaped (``%25 %0D %0A %3A %2C``), data too (``%25 %0D %0A``).

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Both patterns as act compiles them (Go RE2, leftmost-first submatches like Python's re).
_GA = re.compile(r"::([^ ]+)( (.+))?::([^\r\n]*)[\r\n]+")
_ADO = re.compile(r"##\[([^ ]+)( (.+))?]([^\r\n]*)[\r\n]+")

_DATA_ESCAPES = (("%0D", "\r"), ("%0A", "\n"), ("%25", "%"))
_PROPERTY_ESCAPES = (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ActCommand:
    """One line as act's command handler sees it: name, properties and unescaped data."""

    name: str
    properties: dict[str, str] = field(default_factory=dict)
    data: str = ""


def _unescape(text: str, escapes: tuple[tuple[str, str], ...]) -> str:
    # act iterates a Go map (random order); "%25" last is the order that never double-decodes.
    for escaped, plain in escapes:
        text = text.replace(escaped, plain)
    return text


def _pairs(text: str, separator: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in text.split(separator):
        parts = item.split("=")
        if len(parts) == 2:
            pairs[parts[0]] = _unescape(parts[1], _PROPERTY_ESCAPES)
    return pairs


def parse_act_command(line: str) -> ActCommand | None:
    """Parse one output line (with or without its line break) as act does, else None.

    act's line writer hands the handler each line with its ``\\n``; one is added when missing.
    """
    if not line.endswith(("\n", "\r")):
        line += "\n"
    for pattern, separator in ((_GA, ","), (_ADO, ";")):
        match = pattern.fullmatch(line)
        if match is not None:
            name, _, properties, data = match.groups()
            return ActCommand(
                name=name,
                properties=_pairs(properties or "", separator),
                data=_unescape(data, _DATA_ESCAPES),
            )
    return None
