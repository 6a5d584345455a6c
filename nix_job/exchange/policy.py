"""The exchange policy's values: issuers, rules, limits, and the closed sets they use. Pure.

Default deny: only rules grant anything, and each pins whose jobs it trusts. Parsed from TOML
by ``policy_file.py``; applied by ``decide.py``. The signing secret never lives here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

HARD_MAX_LIFETIME = 3600
"""No minted token lives longer than an hour, whatever the policy says."""
MIN_LIFETIME = 60
DEFAULT_LEEWAY = 30
MAX_LEEWAY = 300
DEFAULT_JWKS_TTL = 3600

CiKind = Literal["github", "gitlab"]
Algorithm = Literal["HS256", "RS256"]
Permission = Literal["pull", "push"]

# Claims a rule may match, per CI. Every one is a JSON string in the ID token.
# GitHub: docs.github.com "OpenID Connect reference" (github/docs
# content/actions/reference/security/oidc.md). GitLab: doc/ci/secrets/id_token_authentication.md.
MATCH_KEYS: dict[CiKind, tuple[str, ...]] = {
    "github": (
        "repository",
        "repository_id",
        "repository_owner",
        "repository_owner_id",
        "ref",
        "ref_type",
        "event_name",
        "job_workflow_ref",
        "environment",
        "runner_environment",
    ),
    "gitlab": (
        "project_path",
        "project_id",
        "namespace_path",
        "namespace_id",
        "ref",
        "ref_type",
        "ref_protected",
        "pipeline_source",
        "environment",
        "runner_environment",
    ),
}
# SECURITY: token.actions.githubusercontent.com and gitlab.com sign tokens for anyone's
# repositories, with any audience the job asks for: a rule must say whose jobs it trusts.
OWNER_KEYS: dict[CiKind, tuple[str, ...]] = {
    "github": ("repository", "repository_id", "repository_owner", "repository_owner_id"),
    "gitlab": ("project_path", "project_id", "namespace_path", "namespace_id"),
}
BOOLEAN_KEYS = frozenset({"ref_protected"})
"""GitLab sends ``ref_protected`` as the *string* "true"/"false"; the policy writes a TOML
boolean, compared with the claim's exact text (a boolean claim is refused, never coerced)."""

# attic/src/cache.rs: CACHE_NAME_PATTERN_REGEX (cache-name alphabet plus `*`).
CACHE_PATTERN_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9\-_+*]{0,49}$")
_LOOPBACK_HOSTS = frozenset({"localhost"})


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerConfig:
    """A trusted OIDC issuer: ``url`` equals the tokens' ``iss`` exactly."""

    name: str
    kind: CiKind
    url: str
    audience: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Grants ``caches`` to identities of ``issuer`` whose claims fit every ``match`` entry."""

    name: str
    issuer: str
    match: tuple[tuple[str, frozenset[str]], ...]
    """Claim name → allowed values (exact strings), in file order."""
    caches: tuple[tuple[str, frozenset[Permission]], ...]
    """Cache name or Attic pattern → permissions, in file order (Attic's claim order)."""
    max_lifetime: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    max_lifetime: int = HARD_MAX_LIFETIME
    leeway: int = DEFAULT_LEEWAY
    """Seconds of clock skew accepted on ``exp``/``nbf``/``iat``; minted tokens are backdated
    by as much, because atticd checks ``nbf``/``iat`` with no tolerance."""
    algorithm: Algorithm | None = None
    secret_file: str | None = None
    token_issuer: str | None = None
    """``iss`` of minted tokens, for atticd's ``token-bound-issuer``."""
    token_audiences: tuple[str, ...] = ()
    """``aud`` of minted tokens, for atticd's ``token-bound-audiences``."""
    jwks_ttl: int = DEFAULT_JWKS_TTL


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSettings:
    burst: int = 20
    per_minute: int = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    service: ServiceSettings
    rate_limit: RateLimitSettings
    issuers: tuple[IssuerConfig, ...]
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...] = ()
    """Legal but risky choices, logged at startup."""

    def issuer_by_url(self, url: str) -> IssuerConfig | None:
        return next((i for i in self.issuers if i.url == url), None)

    def issuer_by_name(self, name: str) -> IssuerConfig | None:
        return next((i for i in self.issuers if i.name == name), None)


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be an issuer or JWKS URL, or None: https, or http on loopback only
    (for tests); no credentials, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as error:
        return f"{url!r} is not a valid URL ({error})"
    if not host:
        return f"{url!r} has no host"
    if parts.username is not None or parts.password is not None:
        return f"{url!r} must not carry credentials"
    if parts.query or parts.fragment:
        return f"{url!r} must not have a query or fragment"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and _is_loopback(host):
        return None
    return f"{url!r} must use https (http is accepted for loopback addresses only, for tests)"


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
