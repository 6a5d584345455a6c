"""The exchange decision: which rule applies, what it grants, the floor, the lifetime. Pure.

- **First matching rule wins**: rules are tried in file order; the first whose issuer and
  every ``match`` entry fit the identity decides, later rules are never consulted (like a
  firewall: put narrow push rules before broad pull rules).
- A request may narrow the grant to one cache (``{"cache": "name"}``) and shorten the
  lifetime (``{"lifetime": seconds}``); it can never widen either.
- **The floor**: a pull/merge-request identity (``Identity.pull_request``) loses every push
  permission; if nothing is left, the exchange is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from nix_job.core.values import CACHE_NAME_RE
from nix_job.exchange.errors import Refusal, Refused
from nix_job.exchange.identity import Identity
from nix_job.exchange.policy import HARD_MAX_LIFETIME, MIN_LIFETIME, Policy, Rule

Letter = Literal["r", "w"]
_LETTER = {"pull": "r", "push": "w"}
_REQUEST_KEYS = ("cache", "lifetime")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeRequest:
    """What the job asks for, beyond its identity: both optional, both only narrow."""

    cache: str | None = None
    lifetime: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What a minted token carries."""

    rule: str
    caches: tuple[tuple[str, frozenset[Letter]], ...]
    """Attic claim entries in claim order: cache name or pattern → letters. An entry may be
    empty after the floor: it stays, so an exact key still shadows later patterns as it did."""
    lifetime: int
    floor: str | None = None
    """Why push was removed (a pull-request identity), or None when the rule's grant stands."""

    @property
    def summary(self) -> dict[str, str]:
        """``{"cache": "rw" | "r" | "w"}`` for the response and the log (empty entries left out)."""
        return {k: "".join(sorted(v)) for k, v in self.caches if v}


def parse_request(body: bytes) -> ExchangeRequest:
    """The optional JSON body: empty, ``{}``, or ``{"cache": NAME, "lifetime": SECONDS}``."""
    if not body.strip():
        return ExchangeRequest()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(
            "bad_request",
            'the request body is not JSON; send nothing, {} or {"cache": "name"}',
        ) from None
    if not isinstance(data, dict):
        raise Refused("bad_request", 'the request body must be a JSON object, e.g. {"cache": "x"}')
    unknown = sorted(k for k in data if k not in _REQUEST_KEYS)
    if unknown:
        raise Refused(
            "bad_request",
            f"unknown request field(s) {', '.join(map(repr, unknown))[:200]}; "
            f"accepted: {', '.join(_REQUEST_KEYS)}",
        )
    cache = data.get("cache")
    if cache is not None and (not isinstance(cache, str) or not CACHE_NAME_RE.match(cache)):
        raise Refused(
            "bad_request",
            "`cache` must be one Attic cache name (letters, digits, -_+; no patterns)",
        )
    lifetime = data.get("lifetime")
    if lifetime is not None and (
        type(lifetime) is not int or not MIN_LIFETIME <= lifetime <= HARD_MAX_LIFETIME
    ):
        raise Refused(
            "bad_request",
            f"`lifetime` must be an integer from {MIN_LIFETIME} to {HARD_MAX_LIFETIME} seconds",
        )
    return ExchangeRequest(cache=cache, lifetime=lifetime)


def pattern_matches(pattern: str, name: str) -> bool:
    """Attic's cache patterns: ``*`` matches any run of characters (wildmatch)."""
    regex = "".join(".*" if c == "*" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name) is not None


def lookup(entries: tuple[tuple[str, frozenset[Letter]], ...], cache: str) -> frozenset[Letter]:
    """atticd's lookup (token/src/lib.rs ``get_permission_for_cache``): the exact key wins,
    else the first matching pattern in claim order, else nothing."""
    for key, letters in entries:
        if key == cache:
            return letters
    for key, letters in entries:
        if pattern_matches(key, cache):
            return letters
    return frozenset()


def rule_matches(rule: Rule, identity: Identity) -> bool:
    if rule.issuer != identity.issuer:
        return False
    return all(identity.claims.get(key) in allowed for key, allowed in rule.match)


def decide(policy: Policy, identity: Identity, request: ExchangeRequest) -> Grant | Refusal:
    rule = next((r for r in policy.rules if rule_matches(r, identity)), None)
    if rule is None:
        return Refusal(
            code="no_matching_rule",
            message=f"no rule of this service's policy matches {describe(identity)}; nothing "
            "was granted (default deny). Ask the cache's operator to add a rule for this "
            "repository, ref and event, or check the workflow's trigger.",
        )
    entries: tuple[tuple[str, frozenset[Letter]], ...] = tuple(
        (pattern, frozenset(_letter(p) for p in perms)) for pattern, perms in rule.caches
    )
    if request.cache is not None:
        letters = lookup(entries, request.cache)
        if not letters:
            return Refusal(
                code="cache_not_granted",
                message=f"rule {rule.name!r} matches this job but grants nothing on cache "
                f"{request.cache!r} (it grants {_render(entries)}); ask for one of those, or "
                "ask the operator to extend the rule.",
            )
        entries = ((request.cache, letters),)
    floor = None
    if identity.pull_request is not None and any("w" in letters for _, letters in entries):
        entries = tuple((key, letters - {"w"}) for key, letters in entries)
        floor = f"push removed: {identity.pull_request}"
        if not any(letters for _, letters in entries):
            return Refusal(
                code="pull_request_cannot_push",
                message=f"rule {rule.name!r} grants only push here, and this job never gets "
                f"push: {identity.pull_request}. Pull requests may only pull; give them a rule "
                "with pull, or publish from the default branch.",
            )
    lifetime = rule.max_lifetime
    if request.lifetime is not None:
        lifetime = min(lifetime, request.lifetime)
    return Grant(rule=rule.name, caches=entries, lifetime=lifetime, floor=floor)


def describe(identity: Identity) -> str:
    """The identity's matchable facts, for messages and logs (values bounded)."""
    c: Mapping[str, str] = identity.claims
    if identity.kind == "github":
        keys = ("repository", "repository_id", "ref", "event_name", "environment")
    else:
        keys = ("project_path", "project_id", "ref", "ref_protected", "pipeline_source")
    facts = ", ".join(f"{k}={c[k][:120]!r}" for k in keys if k in c)
    return f"issuer {identity.issuer!r} with {facts}"


def _letter(permission: str) -> Letter:
    return "r" if _LETTER[permission] == "r" else "w"


def _render(entries: tuple[tuple[str, frozenset[Letter]], ...]) -> str:
    return ", ".join(f"{k}={''.join(sorted(v))}" for k, v in entries if v) or "nothing"
