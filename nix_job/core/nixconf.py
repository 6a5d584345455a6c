"""The grammar of one nix.conf line, and what nix-job refuses in it. Pure.

Shared by the input parser (``extra-conf`` is refused before anything runs) and by
``nix_job.nix.settings`` (every setting, from any source, is checked again before it is
written anywhere).
"""

from __future__ import annotations

import re

#: A setting name (NixOS/nix ``src/libutil/config.cc``: names are the first word of a line).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]*$")
LINE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9\-_.]*)\s*=\s*(.*)$")
#: Text that could end (or start) a marked block early when a run's block is stripped again.
MARKER_RE = re.compile(r"(BEGIN|END)\s+nix-job", re.IGNORECASE)
# Characters no nix.conf value needs: controls (a newline ends the setting and starts another,
# e.g. `post-build-hook = …`, which a root daemon would run), DEL, C1 controls, Unicode line
# breaks.
_FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def value_problem(value: str) -> str | None:
    """Why ``value`` cannot be a nix.conf value, or None (the phrase follows "the value …")."""
    if _FORBIDDEN_CHARS.search(value):
        return "contains a line break or another control character"
    if MARKER_RE.search(value):
        return "contains nix-job's block marker text"
    return None


def line_problem(line: str) -> str | None:
    """Why one stripped line of nix.conf text is refused, or None (a setting or a comment)."""
    if MARKER_RE.search(line):
        return "looks like nix-job's own block marker"
    if not line or line.startswith("#"):
        return None
    match = LINE_RE.match(line)
    if match is None:
        return "is not a nix.conf setting (`name = value`)"
    why = value_problem(match[2])
    return None if why is None else f"has a value that {why}"
