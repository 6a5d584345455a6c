"""One structured log line per exchange decision. Pure rendering; the app logs it.

A line is compact JSON: ``{"event": "exchange", "outcome": "granted" | "refused", ...}`` with
the issuer, subject, repository/project, ref, trigger, rule, granted caches, lifetime, or the
refusal code and reason. It never holds a token: the values come from verified claims and
policy names, and as a second guard anything shaped like a JWT segment is replaced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_MAX_TEXT = 300
# Base64url of a JSON object starts with "eyJ" ('{"'): every JWT header and payload segment.
_JWT_SEGMENT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)*")


def decision_line(fields: Mapping[str, object]) -> str:
    """Render a decision record: None values dropped, long text cut, JWT-shaped text redacted."""
    record = {key: _clean(value) for key, value in fields.items() if value is not None}
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True)


def _clean(value: object) -> object:
    if isinstance(value, str):
        text = _JWT_SEGMENT.sub("[redacted]", value)
        return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
    if isinstance(value, Mapping):
        return {str(_clean(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
