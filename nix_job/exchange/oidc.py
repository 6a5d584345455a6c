"""Verifying a CI job's OIDC ID token with PyJWT and the issuer's keys (``jwks.py``).

Order of checks, cheapest and most telling first: size; shape; ``alg`` in {RS256, ES256}
(``none``, HS256 and everything else are refused before any key is looked up, so a token
"signed" with the issuer's public key as an HMAC secret never reaches a verifier); ``kid``;
``iss`` among the configured issuers; the key from that issuer's JWKS (an unknown ``kid``
refetches the JWKS once, at most every ``refetch_interval``); the signature (PyJWT, with the
key's own algorithm); then the registered claims against an injected clock
(``check_registered_claims``, pure).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import jwt

from nix_job.core.secret import Secret
from nix_job.exchange.errors import Refused
from nix_job.exchange.jwks import JwksCache
from nix_job.exchange.policy import IssuerConfig, Policy

Clock = Callable[[], float]

ALGORITHMS: Final = ("RS256", "ES256")
MAX_TOKEN_BYTES = 16 * 1024
_MAX_SHOWN = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedToken:
    issuer: IssuerConfig
    claims: Mapping[str, object]


def check_registered_claims(
    claims: Mapping[str, object], *, issuer: IssuerConfig, now: float, leeway: int
) -> None:
    """``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` of a signature-checked token. Pure.

    ``aud`` must be the configured audience (a string, or a one-element list); ``exp`` and
    ``iat`` are required. Times are JSON numbers (never booleans or strings)."""
    if claims.get("iss") != issuer.url:
        raise Refused("untrusted_issuer", f"the token's iss is not {issuer.url!r}")
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud != issuer.audience:
        shown = _show(aud) if isinstance(aud, str) else "missing or not one string"
        raise Refused(
            "wrong_audience",
            f"the token's audience is {shown}, but this service accepts tokens from "
            f"{issuer.url} only with audience {issuer.audience!r}; request the ID token with "
            "that audience (GitHub: core.getIDToken(audience); GitLab: id_tokens: aud:)",
        )
    times: dict[str, float] = {}
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is None and name == "nbf":
            continue
        if value is None:
            raise Refused("claim_missing", f"the token has no `{name}` claim")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused("claim_type", f"the token's `{name}` claim is not a number")
        times[name] = float(value)
    if now > times["exp"] + leeway:
        raise Refused(
            "expired",
            f"the ID token expired {int(now - times['exp'])} s ago; request a fresh one right "
            "before the exchange",
        )
    if "nbf" in times and now + leeway < times["nbf"]:
        raise Refused(
            "not_yet_valid",
            f"the ID token is not valid for another {int(times['nbf'] - now)} s; check the "
            "clocks of this service's host (NTP)",
        )
    if now + leeway < times["iat"]:
        raise Refused(
            "issued_in_future",
            f"the ID token claims to be issued {int(times['iat'] - now)} s in the future; "
            "check the clocks of this service's host (NTP)",
        )


def unverified_parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    """Header and payload, *not* verified: only to pick the algorithm, key and issuer."""
    if token.count(".") != 2:
        raise Refused(
            "malformed_token", "the bearer token is not a JWT (three dot-separated parts)"
        )
    try:
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Refused(
            "malformed_token", "the bearer token is not a readable JWT (bad base64 or JSON)"
        ) from None
    return header, payload


class OidcVerifier:
    """``verify(id_token)`` → ``VerifiedToken`` or ``Refused``. The token stays a ``Secret``
    until the one place that needs its text."""

    def __init__(
        self,
        *,
        policy: Policy,
        jwks: JwksCache,
        clock: Clock,
        max_token_bytes: int = MAX_TOKEN_BYTES,
    ) -> None:
        self._policy = policy
        self._jwks = jwks
        self._clock = clock
        self._max_token_bytes = max_token_bytes

    async def verify(self, id_token: Secret) -> VerifiedToken:
        token = id_token.reveal()
        if len(token) > self._max_token_bytes:
            raise Refused(
                "token_too_large",
                f"the bearer token is longer than {self._max_token_bytes} bytes; CI ID tokens "
                "are a few KiB",
            )
        header, payload = unverified_parts(token)
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Refused(
                "unsupported_algorithm",
                f"the token's alg is {_show(alg)}; only RS256 and ES256 tokens from a "
                "configured issuer are accepted",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Refused("malformed_token", "the token's header has no kid (key id)")
        iss = payload.get("iss")
        issuer = self._policy.issuer_by_url(iss) if isinstance(iss, str) else None
        if issuer is None:
            known = ", ".join(i.url for i in self._policy.issuers)
            raise Refused(
                "untrusted_issuer",
                f"the token's issuer {_show(iss)} is not trusted here (trusted: {known})",
            )
        key = await self._jwks.key(issuer, kid)
        try:
            verified = jwt.PyJWS().decode_complete(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                options={"enforce_minimum_key_length": True},
            )
        except jwt.InvalidAlgorithmError:
            raise Refused(
                "unsupported_algorithm",
                f"the token says alg {alg}, but key {_show(kid)} of {issuer.url} is for "
                f"{key.algorithm_name}",
            ) from None
        except jwt.PyJWTError:
            raise Refused(
                "bad_signature",
                f"the token's signature does not verify with key {_show(kid)} of {issuer.url}",
            ) from None
        claims = _strict_json_object(verified["payload"])
        check_registered_claims(
            claims, issuer=issuer, now=self._clock(), leeway=self._policy.service.leeway
        )
        return VerifiedToken(issuer=issuer, claims=claims)


def _strict_json_object(payload: bytes) -> dict[str, object]:
    """The signed payload as a JSON object; duplicate keys (two ``iss``, two ``aud``) and
    non-standard constants (NaN) are refused rather than resolved one way or another."""

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name: str) -> object:
        raise ValueError(name)

    try:
        data = json.loads(payload, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError):
        raise Refused(
            "malformed_token", "the token's payload is not plain JSON (duplicate keys or NaN)"
        ) from None
    if not isinstance(data, dict):
        raise Refused("malformed_token", "the token's payload is not a JSON object")
    return data


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "…")
