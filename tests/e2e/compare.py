"""Comparing what act and the in-repo harness report for the same case: outputs and summary,
with the parts that legitimately differ between two runs (timings) normalised. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping

TIMING_OUTPUTS = frozenset({"command-seconds", "bootstrap-seconds"})
TIMED_ROWS = ("| Command time |", "| Bootstrap time |")
_DURATION = re.compile(r"\d+(?:\.\d+)?(?: ?(?:ms|s|min|h)\b)")
_UPLOADS_HEADER = "| Pushed during build | Pushed at the end |"


def comparable_outputs(outputs: Mapping[str, str]) -> dict[str, str]:
    """Outputs with timing values replaced by ``<seconds>`` (only when they are numbers, so an
    empty or broken timing still shows as a difference)."""
    result = dict(outputs)
    for name in TIMING_OUTPUTS & result.keys():
        try:
            seconds = float(result[name])
        except ValueError:
            continue
        if seconds >= 0:
            result[name] = "<seconds>"
    return result


def summary_rows(markdown: str) -> list[str]:
    """The summary's non-blank lines, with durations in the time rows and in the uploads table
    replaced by ``<t>``, and the uploads split "during build / at the end" (which depends on
    timing) folded into their total."""
    rows: list[str] = []
    lines = [line.strip() for line in markdown.splitlines() if line.strip()]
    after_uploads_header = -1
    for index, line in enumerate(lines):
        if line.startswith(_UPLOADS_HEADER):
            after_uploads_header = index + 2  # header, separator, then the counts row
        if line.startswith(TIMED_ROWS):
            rows.append(_DURATION.sub("<t>", line))
        elif index == after_uploads_header:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            total = int(cells[0]) + int(cells[1])
            kept = [f"pushed {total}", *cells[2:-1], _DURATION.sub("<t>", cells[-1])]
            rows.append("| " + " | ".join(kept) + " |")
        else:
            rows.append(line)
    return rows
