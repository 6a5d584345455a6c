"""The issuers' signing keys: OIDC discovery, the JWKS, and a bounded cache, over httpx.

``<issuer>/.well-known/openid-configuration`` → ``jwks_uri`` → keys usable for RS256 (RSA)
or ES256 (EC P-256) only, by ``kid``. Every fetch is bounded in time and size, and the cache
decides when a fetch may happen, so requests never turn into a stream of fetches.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
import jwt
from jwt.api_jwk import PyJWK

from nix_job.exchange.errors import Refused
from nix_job.exchange.policy import IssuerConfig, check_url

Clock = Callable[[], float]

MAX_DOCUMENT_BYTES = 512 * 1024
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
"""Discovery and JWKS fetches: small documents; a slow issuer must not hold requests long."""
_MAX_SHOWN = 64

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Keys:
    keys: Mapping[str, PyJWK]
    fetched_at: float | None
    """When these keys were fetched (the TTL counts from here); None: never."""
    attempted_at: float
    """When a fetch was last tried, successful or not (rate-limits refetches)."""
    error: str | None = None
    """Why the last attempt failed, or None."""


class IssuerUnavailable(Exception):
    """Discovery or the JWKS could not be fetched or read; the message says which and why."""


class JwksCache:
    """Each issuer's signing keys, from ``<issuer>/.well-known/openid-configuration`` →
    ``jwks_uri``, kept ``ttl`` seconds. Fetches are bounded: an unknown ``kid`` refetches at
    most every ``refetch_interval``, a failed fetch is retried at most every
    ``failure_retry``, and during an outage the old keys serve up to ``max_stale`` seconds
    (an issuer's hiccup does not stop exchanges; an attacker cannot turn requests into
    fetches)."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        clock: Clock,
        ttl: float,
        refetch_interval: float = 60.0,
        failure_retry: float = 10.0,
        max_stale: float = 24 * 3600.0,
    ) -> None:
        self._http = http
        self._clock = clock
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._failure_retry = failure_retry
        self._max_stale = max_stale
        self._entries: dict[str, _Keys] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, issuer: IssuerConfig, kid: str) -> PyJWK:
        now = self._clock()
        entry = self._entries.get(issuer.name)
        if entry is None or (
            (entry.fetched_at is None or now - entry.fetched_at >= self._ttl)
            and now - entry.attempted_at >= self._failure_retry
        ):
            entry = await self._refresh(issuer, seen=entry)
        if entry.fetched_at is None or now - entry.fetched_at >= self._max_stale:
            raise Refused(
                "issuer_unavailable",
                f"cannot fetch the signing keys of {issuer.url}: {entry.error}; try again shortly",
                retry_after=int(self._failure_retry),
            )
        found = entry.keys.get(kid)
        if found is None and now - entry.attempted_at >= self._refetch_interval:
            # The issuer may have rotated its keys since the last fetch: look once more.
            entry = await self._refresh(issuer, seen=entry)
            found = entry.keys.get(kid)
        if found is None:
            raise Refused(
                "unknown_key",
                f"no key with kid {_show(kid)} in {issuer.url}'s JWKS (refetched at most every "
                f"{int(self._refetch_interval)} s); the token was not signed by this issuer",
            )
        return found

    async def _refresh(self, issuer: IssuerConfig, *, seen: _Keys | None) -> _Keys:
        """Fetch once; on failure keep what was known and record why. Never raises."""
        lock = self._locks.setdefault(issuer.name, asyncio.Lock())
        async with lock:
            current = self._entries.get(issuer.name)
            if current is not seen and current is not None:
                return current  # another request refreshed while this one waited
            now = self._clock()
            try:
                keys = await fetch_keys(self._http, issuer)
            except IssuerUnavailable as error:
                entry = _Keys(
                    keys=current.keys if current else {},
                    fetched_at=current.fetched_at if current else None,
                    attempted_at=now,
                    error=str(error),
                )
                if entry.fetched_at is not None:
                    log.warning(
                        "JWKS refresh for issuer %s failed, keeping keys fetched %d s ago: %s",
                        issuer.name,
                        now - entry.fetched_at,
                        error,
                    )
                else:
                    log.warning("JWKS fetch for issuer %s failed: %s", issuer.name, error)
            else:
                entry = _Keys(keys=keys, fetched_at=now, attempted_at=now)
            self._entries[issuer.name] = entry
            return entry


async def fetch_keys(http: httpx.AsyncClient, issuer: IssuerConfig) -> dict[str, PyJWK]:
    """Discovery then JWKS; keys usable for RS256 (RSA) or ES256 (EC P-256) only, by ``kid``.

    OpenID Connect Discovery 1.0 §4.3: the document's ``issuer`` must equal the issuer URL."""
    discovery_url = f"{issuer.url}/.well-known/openid-configuration"
    document = await _get_json(http, discovery_url)
    if document.get("issuer") != issuer.url:
        raise IssuerUnavailable(
            f"{discovery_url} names issuer {_show(document.get('issuer'))}, not {issuer.url!r}"
        )
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise IssuerUnavailable(f"{discovery_url} has no jwks_uri")
    problem = check_url(jwks_uri)
    if problem:
        raise IssuerUnavailable(f"jwks_uri {problem}")
    jwks = await _get_json(http, jwks_uri)
    raw_keys = jwks.get("keys")
    if not isinstance(raw_keys, list):
        raise IssuerUnavailable(f"{jwks_uri} has no `keys` list")
    keys: dict[str, PyJWK] = {}
    for raw in raw_keys:
        parsed = usable_key(raw)
        if parsed is not None:
            kid, key = parsed
            keys.setdefault(kid, key)
    return keys


def usable_key(raw: object) -> tuple[str, PyJWK] | None:
    """A JWKS entry as (kid, key) when it can verify RS256 or ES256 signatures, else None.
    Symmetric (``oct``) keys and keys for other uses or algorithms are skipped."""
    if not isinstance(raw, dict):
        return None
    kid, kty, use, alg = raw.get("kid"), raw.get("kty"), raw.get("use"), raw.get("alg")
    if not isinstance(kid, str) or use not in (None, "sig"):
        return None
    if kty == "RSA":
        algorithm = "RS256"
    elif kty == "EC" and raw.get("crv") == "P-256":
        algorithm = "ES256"
    else:
        return None
    if alg not in (None, algorithm):
        return None
    try:
        return kid, PyJWK(raw, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


async def _get_json(http: httpx.AsyncClient, url: str) -> dict[str, object]:
    try:
        async with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise IssuerUnavailable(f"GET {url} answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise IssuerUnavailable(f"GET {url}: document larger than {MAX_DOCUMENT_BYTES}")
    except httpx.HTTPError as error:
        raise IssuerUnavailable(f"GET {url} failed: {type(error).__name__}: {error}") from None
    try:
        data = json.loads(bytes(body))
    except ValueError:
        raise IssuerUnavailable(f"GET {url}: not JSON") from None
    if not isinstance(data, dict):
        raise IssuerUnavailable(f"GET {url}: not a JSON object")
    return data


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "…")
