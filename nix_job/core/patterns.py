"""``push-exclude`` patterns: compiled, and refused when they have the classic catastrophic
backtracking shape. Pure (CPython's own regex parser, read-only)."""

from __future__ import annotations

import importlib
import re
from typing import Any


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be a ``push-exclude`` regular expression, or None."""
    try:
        parsed = re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regex: {exc}"
    if _nests_unbounded_repeats(parsed.pattern):
        return (
            "repeats a group that itself repeats without bound (like `(\\w+)+`), which can take "
            "minutes on one store path; write it without the nesting (e.g. `\\w+`)"
        )
    return None


def _nests_unbounded_repeats(pattern: str) -> bool:
    """``(x+)+`` and its kin: an unbounded repeat whose whole body is an unbounded repeat (the
    classic exponential backtracking shape). Other slow patterns are stopped by the matcher's
    time limit (``nix_job.push.exclude``); this only catches the common one early."""
    try:
        parser: Any = importlib.import_module("re._parser")  # CPython's own regex parser
        constants: Any = importlib.import_module("re._constants")
        parsed = parser.parse(pattern)
    except Exception:  # another Python: the time limit still applies
        return False
    repeats = (constants.MAX_REPEAT, constants.MIN_REPEAT)

    def body(items: Any) -> Any:
        """The single item a subpattern consists of, groups unwrapped; None when several."""
        items = list(items)
        while len(items) == 1 and items[0][0] is constants.SUBPATTERN:
            items = list(items[0][1][3])
        return items[0] if len(items) == 1 else None

    def walk(items: Any) -> bool:
        for op, av in items:
            if op in repeats:
                inner = body(av[2])
                if (
                    av[1] == constants.MAXREPEAT
                    and inner is not None
                    and inner[0] in repeats
                    and inner[1][1] == constants.MAXREPEAT
                ):
                    return True
                if walk(av[2]):
                    return True
            elif (op is constants.SUBPATTERN and walk(av[3])) or (
                op is constants.BRANCH and any(walk(branch) for branch in av[1])
            ):
                return True
        return False

    return walk(parsed)
