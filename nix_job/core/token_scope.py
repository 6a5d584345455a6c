"""What an Attic token claims it may do, read without verifying it. Pure; advisory only.

Used for one warning: a run that may not publish (a pull request) but holds a token that can
push, which the command could read from the temporary netrc. The server is the only authority
on a token; nothing here grants or refuses anything, and an unreadable token means "unknown".
"""

from __future__ import annotations

import base64
import binascii
import json
import re

CLAIM = "https://jwt.attic.rs/v1"


def read_claims(token: str) -> dict[str, object] | None:
    """A JWT's claims, unverified (for messages and advice only); None when unreadable."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(body))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def pattern_matches(pattern: str, cache: str) -> bool:
    """Attic's cache patterns: the cache-name alphabet plus ``*`` (wildmatch)."""
    regex = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, cache) is not None


def can_push(token: str, cache: str) -> bool | None:
    """Whether the token's claims grant push (``w``) on ``cache``; None when unknown.

    Mirrors atticd's lookup: an exact key wins, else the first matching pattern in claim order.
    """
    payload = read_claims(token)
    if payload is None:
        return None
    claim = payload.get(CLAIM)
    caches = claim.get("caches") if isinstance(claim, dict) else None
    if not isinstance(caches, dict):
        return None
    perms = caches.get(cache)
    if perms is None:
        perms = next((p for k, p in caches.items() if pattern_matches(k, cache)), None)
    if perms is None:
        return False
    if not isinstance(perms, dict):
        return None
    push = perms.get("w")
    # atticd reads 0/1 integers only: a JSON true invalidates the whole token.
    return type(push) is int and push == 1
