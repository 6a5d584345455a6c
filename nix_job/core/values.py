"""The grammars of single input values: signing keys, cache names, push-exclude patterns, sizes,
closure modes. Each ``*_problem`` says why a value is unusable (or None). Pure.

Used by the input parser (``nix_job.core.inputs``) and by everything else that receives such a
value from outside (the push command, the token exchange).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
from typing import Any

CACHE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_+]{0,49}$")
# Key names seen in practice: cache.nixos.org-1, <name>.cachix.org-1, an Attic cache's name.
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@\-]{0,127}$")


def public_key_problem(value: str) -> str | None:
    """Why ``value`` is not a Nix public key ``name:base64(32 bytes)``, or None."""
    name, sep, data = value.partition(":")
    if not sep or not name or ":" in data:
        return "must look like `name:base64`"
    if not KEY_NAME_RE.match(name):
        # SECURITY: the key goes into nix.conf; a name with a newline would add settings.
        return "has a key name other than 1–128 of A–Z a–z 0–9 . _ + @ -"
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        return "has invalid base64 after the colon"
    if len(raw) != 32:
        return f"must hold a 32-byte ed25519 key, not {len(raw)} bytes"
    return None


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


def cache_name_problem(value: str) -> str | None:
    if CACHE_NAME_RE.match(value):
        return None
    return "must be 1–50 characters of A–Z a–z 0–9 - _ +, starting with a letter or digit"


# --- sizes ----------------------------------------------------------------------------------

_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: str) -> int | None:
    """A size in bytes from ``500M``, ``2G``, ``1.5GiB``, ``750MB``, ``4096`` (units are binary:
    K = 1024; ``B`` and ``iB`` suffixes are optional); None when ``value`` is not a size or is
    zero (a limit of nothing would push nothing: that is ``push-cache: false``)."""
    found = _SIZE_RE.fullmatch(value.strip())
    if found is None:
        return None
    number, unit, suffix = found.groups()
    if suffix and suffix.lower() == "b" and not unit and "." in number:
        return None  # "1.5B": a fraction of a byte
    size = int(float(number) * _UNITS[unit.lower()])
    return size if size > 0 else None


def show_size(size: int) -> str:
    """``size`` bytes for people: ``500 MiB``, ``2 GiB``, ``1.5 KiB``, ``12 bytes``."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


# --- closure modes --------------------------------------------------------------------------

#: What the final push takes for each output (``push-closure``); see docs/push-policy.md.
CLOSURE_MODES = ("runtime", "build", "outputs")
