"""What a token exchange granted (its ``200`` answer), when to renew it, and what each of its
refusals means for the job. Pure.

The exchange is ``nix-job token-exchange`` (docs/token-exchange.md, "API" and "Refusals"): it
answers ``{"token", "expires_at", "caches", "rule"}``, or ``{"error": code, "message": …}``.
Nothing here ever puts a token in a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nix_job.core.secret import Secret
from nix_job.core.token_scope import pattern_matches

#: Renew when this much of the token's lifetime has passed (a minted token lives 1 to 60 min).
RENEW_AT = 2 / 3
#: Retries of a failed renewal: first after this many seconds, doubling up to RETRY_MAX_S.
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 60.0
MIN_DELAY_S = 1.0
#: An Attic JWT is about a kilobyte; the exchange refuses ID tokens over 16 KiB.
MAX_TOKEN_CHARS = 16 * 1024

PERMISSION_TEXT: Mapping[str, str] = {"rw": "pull and push", "r": "pull", "w": "push"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """One minted Attic token and what it allows. Prints without the token."""

    token: Secret
    expires_at: int  # seconds since the epoch, the service's clock
    lifetime_s: float  # from the answer to expiry, measured on the service's clock
    caches: tuple[tuple[str, str], ...]  # (name or pattern, "rw" | "r" | "w"), in claim order
    rule: str

    def permissions(self, cache: str) -> str:
        """``"rw"``, ``"r"``, ``"w"`` or ``""`` for ``cache``, as atticd reads the claims: an
        exact name wins, else the first matching pattern."""
        for key, letters in self.caches:
            if key == cache:
                return letters
        return next((p for k, p in self.caches if pattern_matches(k, cache)), "")

    def can_push(self, cache: str) -> bool:
        return "w" in self.permissions(cache)

    def describe(self, cache: str) -> str:
        """``cache `main`: pull and push for 30 min (rule `gh-publish`)``: no token in it."""
        letters = self.permissions(cache)
        what = PERMISSION_TEXT.get(letters, "nothing")
        return f"cache `{cache}`: {what} for {minutes(self.lifetime_s)} (rule `{self.rule}`)"


def minutes(seconds: float) -> str:
    if seconds < 120:
        return f"{max(0, round(seconds))} s"
    return f"{round(seconds / 60)} min"


def parse_grant(data: object, *, now: float) -> Grant | str:
    """The exchange's ``200`` JSON → a ``Grant``; else why it is not one (never the token).

    ``now`` is the service's time of the answer (its ``Date`` header) when known, so the
    lifetime does not depend on this runner's clock."""
    if not isinstance(data, dict):
        return "the answer is not a JSON object"
    token, expires_at, caches, rule = (
        data.get(k) for k in ("token", "expires_at", "caches", "rule")
    )
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        return "`token` is missing, empty or not a string"
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        return "`token` has characters a JWT cannot have"
    if type(expires_at) is not int:
        return "`expires_at` is not an integer"
    if not isinstance(rule, str) or not rule:
        return "`rule` is missing"
    if not isinstance(caches, dict) or not all(
        isinstance(k, str) and v in PERMISSION_TEXT for k, v in caches.items()
    ):
        return '`caches` is not an object of "rw", "r" or "w"'
    return Grant(
        token=Secret(token),
        expires_at=expires_at,
        lifetime_s=max(0.0, expires_at - now),
        caches=tuple(caches.items()),
        rule=rule[:100],
    )


def renewal_delay(*, lifetime_s: float, failures: int, left_s: float, floor_s: float) -> float:
    """Seconds until the next renewal attempt. Pure, tested as a table.

    After a grant: at ``RENEW_AT`` of its lifetime. After ``failures`` failed attempts: again
    after 5, 10, 20… s (at most 60), and never later than half the time the token has left,
    so several attempts fit before it expires. Never sooner than ``floor_s``, or a third of
    the lifetime when that is shorter, and never sooner than ``MIN_DELAY_S``: no busy loop."""
    floor = max(MIN_DELAY_S, min(floor_s, lifetime_s / 3))
    if failures <= 0:
        return max(floor, lifetime_s * RENEW_AT)
    backoff = min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** (failures - 1))
    return max(floor, min(backoff, left_s / 2))


# --- refusals ---------------------------------------------------------------------------------

_ADVICE: Mapping[str, str] = {
    "bad_request": "nix-job's request was refused as malformed: use a nix-job release no newer "
    "than the service, and report it if they match",
    "missing_token": "the ID token did not arrive: a proxy in front of the service may drop the "
    "Authorization header",
    "malformed_token": "the ID token is not a usable JWT (on GitLab, NIX_JOB_ID_TOKEN must be "
    "the variable declared under `id_tokens:`, unchanged)",
    "token_too_large": "the ID token is far larger than GitHub's or GitLab's (on GitLab, check "
    "what NIX_JOB_ID_TOKEN holds)",
    "unsupported_algorithm": "the ID token is not signed with RS256 or ES256 as GitHub's and "
    "GitLab's are: check that it comes from the CI",
    "unknown_key": "the key that signed the ID token is not among the issuer's published keys "
    "(the issuer may have just rotated them: the next run retries)",
    "bad_signature": "the ID token's signature does not verify with the issuer's keys",
    "untrusted_issuer": "the exchange's policy has no issuer for this CI: add an "
    "`[issuers.NAME]` whose `url` is the ID token's issuer",
    "wrong_audience": "the ID token's audience is not the one the policy's issuer expects: set "
    "`oidc-audience` (GitHub) or the `aud:` of `id_tokens: NIX_JOB_ID_TOKEN` (GitLab) to the "
    "issuer's `audience`, or change the policy",
    "expired": "the ID token had expired when it arrived: check the clocks of the runner and of "
    "the service (NTP)",
    "not_yet_valid": "the ID token was not yet valid when it arrived: check the clocks (NTP)",
    "issued_in_future": "the ID token was issued in the service's future: check the clocks (NTP)",
    "claim_missing": "the ID token lacks a claim the policy reads (named above): check the "
    "CI's ID token claims (GitHub Enterprise and older GitLab releases send fewer)",
    "claim_type": "a claim of the ID token has an unexpected type (named above)",
    "no_matching_rule": "no rule of the exchange's policy matches this job (repository or "
    "project, ref, event): add one, or keep this job's reads anonymous",
    "cache_not_granted": "the policy's matching rule does not name this cache: add it to the "
    "rule's `caches`",
    "pull_request_cannot_push": "this job runs pull- or merge-request code, which never gets "
    "push, and the matching rule grants nothing else: give such jobs a rule with pull",
    "body_too_large": "nix-job's request body was refused as too large: report it",
    "rate_limited": "this repository's exchanges are over the policy's rate limit: later jobs "
    "get tokens again once the budget refills",
    "issuer_unavailable": "the service cannot fetch the CI's published keys right now: it "
    "retries by itself; check its outbound access to the issuer",
    "internal_error": "the service failed: see its log",
}

#: Refusals worth another attempt within the same run (the service or the issuer may recover).
RETRIABLE = frozenset({"rate_limited", "issuer_unavailable", "internal_error", "unknown_key"})


def refusal_text(
    *, status: int, code: str | None, message: str, claims: Mapping[str, object] | None
) -> str:
    """What the exchange said and what to do, as one message (``message`` is the service's,
    already cut to a sample). ``claims``: the ID token's own claims, read without verifying
    them, to name its issuer and audience where they are the problem."""
    said = f"HTTP {status}" + (f", {code}" if code else "") + (f": {message}" if message else "")
    advice = _ADVICE.get(code or "", "")
    facts = ""
    if claims is not None and code in ("untrusted_issuer", "wrong_audience"):
        key = "iss" if code == "untrusted_issuer" else "aud"
        facts = f" (the ID token's `{key}` is {str(claims.get(key))[:200]!r})"
    if not advice:
        advice = (
            "is attic-token-exchange the service's root URL (nix-job posts to <url>/v1/exchange)?"
            if status in (404, 405)
            else "check the service's log"
        )
    return f"the exchange refused ({said}){facts}; {advice}"
