"""The token-exchange service's failures. Pure.

    NixJobError (nix_job.core.errors)
    ├── PolicyError          the policy file is unreadable or wrong; every problem names its key
    └── SigningKeyError      the Attic signing secret is missing or malformed (never shown)

    Refused (Exception)      one request is refused; carries a ``Refusal`` value (HTTP status,
                             a stable ``code`` and a message: what failed, why, what to do)

Startup errors end the process with exit code 2; a ``Refused`` becomes a JSON error response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nix_job.core.errors import NixJobError

RefusalCode = Literal[
    # 400: the request itself is malformed
    "bad_request",
    # 401: the CI ID token is missing or does not verify
    "missing_token",
    "malformed_token",
    "unsupported_algorithm",
    "unknown_key",
    "bad_signature",
    "untrusted_issuer",
    "wrong_audience",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "claim_missing",
    "claim_type",
    # 403: the token verifies but the policy does not allow what was asked
    "no_matching_rule",
    "cache_not_granted",
    "pull_request_cannot_push",
    # 413, 429, 503
    "token_too_large",
    "body_too_large",
    "rate_limited",
    "issuer_unavailable",
]

STATUS: dict[RefusalCode, int] = {
    "bad_request": 400,
    "missing_token": 401,
    "malformed_token": 401,
    "unsupported_algorithm": 401,
    "unknown_key": 401,
    "bad_signature": 401,
    "untrusted_issuer": 401,
    "wrong_audience": 401,
    "expired": 401,
    "not_yet_valid": 401,
    "issued_in_future": 401,
    "claim_missing": 401,
    "claim_type": 401,
    "no_matching_rule": 403,
    "cache_not_granted": 403,
    "pull_request_cannot_push": 403,
    "token_too_large": 413,
    "body_too_large": 413,
    "rate_limited": 429,
    "issuer_unavailable": 503,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why one exchange was refused. ``message`` is shown to the caller and logged, so it
    never contains a token or any part of one."""

    code: RefusalCode
    message: str
    retry_after: int | None = None
    """Seconds, for 429 and 503 (the ``Retry-After`` header)."""

    @property
    def status(self) -> int:
        return STATUS[self.code]


class Refused(Exception):
    """Raised by the I/O layers (verification, request parsing) to refuse one request."""

    def __init__(self, code: RefusalCode, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.refusal = Refusal(code=code, message=message, retry_after=retry_after)


class PolicyError(NixJobError):
    """The policy file cannot be used. ``problems`` lists every problem, each naming its key."""

    title = "nix-job token-exchange: invalid policy"
    hint = "token-exchange-policy"

    def __init__(self, problems: list[str], *, source: str) -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"- {p}" for p in self.problems)
        super().__init__(
            f"{source}: {len(self.problems)} policy problem(s); the service did not start:\n"
            f'{lines}\nFix the file (see docs/token-exchange.md, "Policy reference") and '
            "start again."
        )


class SigningKeyError(NixJobError):
    """The Attic signing secret cannot be loaded. The message names where it was looked for,
    never its value."""

    title = "nix-job token-exchange: no usable signing secret"
    hint = "token-exchange-secret"
