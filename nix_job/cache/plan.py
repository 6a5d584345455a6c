"""The read plan: what the cache-config answer means for reads (substituter, trusted key,
authenticated or anonymous), and what every failure to discover it means for the user. Pure."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from nix_job.cache.target import CacheTarget
from nix_job.core.errors import DOCS_URL, AtticError, CacheConfigError
from nix_job.core.problem import Problem
from nix_job.core.urls import url_problem
from nix_job.core.values import public_key_problem

KeySource = Literal["pinned", "discovered"]

_TITLE_DISCOVERY = "nix-job: Attic cache discovery failed"
_TITLE_READS = "nix-job: cache reads limited"
_HINT_CONFIGURE = DOCS_URL + "reading-from-the-cache"
_HINT_AUTH = DOCS_URL + "401-or-403-from-attic"


class CacheConfigView(Protocol):
    """The fields of ``nix_job.attic_client.CacheConfig`` that the read path uses."""

    @property
    def substituter_endpoint(self) -> str | None: ...
    @property
    def public_key(self) -> str | None: ...
    @property
    def is_public(self) -> bool | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovery:
    """The cache config, or why it could not be had (``problem`` says what to check)."""

    config: CacheConfigView | None
    problem: str | None


def discovery_problem(error: AtticError, *, target: CacheTarget, token_present: bool) -> str:
    """What failed, why, and what to check, for a failed cache-config request."""
    where = f"Attic server {target.server} (cache `{target.cache}`)"
    status = error.status
    if status is None:  # attic_client's AtticUnavailableError for transport failures
        return (
            f"Could not reach {where}: {error.message} Also check DNS and network access from "
            "this runner (firewalls and proxies on self-hosted runners), and that the server "
            "is up."
        )
    if status == 401 and token_present:
        return (
            f"{where} answered 401 Unauthorized to the cache-config request: it ignored "
            "ATTIC_TOKEN or the token grants nothing on this cache. Check that the token was "
            "issued by this server (not another one, and not before the server's token secret "
            "was changed), that it has not expired, that it grants pull (`r`) on "
            f"`{target.cache}`, and that the cache name is right (Attic answers 401, not 404, "
            "to callers without any permission on a cache)."
        )
    if status == 401:
        return (
            f"{where} answered 401 Unauthorized to an anonymous cache-config request: the "
            "cache is private, or does not exist. Set the ATTIC_TOKEN secret to a token with "
            f"pull (`r`) permission on `{target.cache}`, or make the cache public; without "
            "it reads fail and everything is built from source."
        )
    if status == 403:
        return (
            f"{where} answered 403 Forbidden: the token is valid but lacks pull (`r`) on "
            f"`{target.cache}`. Issue a token that grants `r` on this cache "
            f"(e.g. `atticadm make-token --pull {target.cache} ...`)."
        )
    if status == 404:
        return (
            f"{where} answered 404 Not Found ({error.error or 'no error name'}). Check the "
            "cache name, and that the server URL includes any path prefix Attic is served "
            f"under: the API must answer at {target.server}_api/v1/."
        )
    return (
        f"{where} gave HTTP {status} to the cache-config request "
        f"({error.error or error.message}). "
        "Check that the URL points at an Attic server and look at the server's logs."
    )


# ---------------------------------------------------------------------------------------------
# Planning the read side. Pure.


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadPlan:
    """What to attach. ``substituter`` is None when nothing can be trusted."""

    target: CacheTarget
    substituter: str | None
    public_key: str | None
    key_source: KeySource | None
    is_public: bool | None
    authenticate: bool  # write a netrc entry for the substituter's host
    problems: tuple[Problem, ...]

    @property
    def netrc_host(self) -> str | None:
        if self.substituter is None or not self.authenticate:
            return None
        return urlsplit(self.substituter).hostname


def _key_parts(key: str) -> tuple[str, bytes] | None:
    name, _, data = key.partition(":")
    try:
        return name, base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII text
        return None


def _key_problem(key: str) -> str | None:
    """``public_key_problem`` for text from the server, which may be anything (non-ASCII too)."""
    if not key.isascii():
        return "contains non-ASCII characters"
    return public_key_problem(key)


def same_key(a: str, b: str) -> bool:
    """Whether two ``name:base64`` keys are the same key (name and bytes, not spelling)."""
    pa, pb = _key_parts(a.strip()), _key_parts(b.strip())
    return pa is not None and pa == pb


def _substituter(target: CacheTarget, discovered: str | None, problems: list[Problem]) -> str:
    fallback = f"{target.server}{target.cache}"
    if not discovered:
        return fallback
    endpoint = discovered.strip().rstrip("/")
    why = url_problem(endpoint)
    if why is not None:
        problems.append(
            Problem.warning(
                _TITLE_READS,
                f"The server reports a substituter endpoint that {why}; using {fallback} "
                "instead. Fix the server's `substituter-endpoint`/`api-endpoint` setting.",
                _HINT_CONFIGURE,
            )
        )
        return fallback
    server_parts, endpoint_parts = urlsplit(target.server), urlsplit(endpoint)
    if server_parts.scheme == "https" and endpoint_parts.scheme != "https":
        # SECURITY: never let the server downgrade reads (and the netrc token) to plain HTTP.
        problems.append(
            Problem.warning(
                _TITLE_READS,
                f"The server reports the plain-HTTP substituter endpoint {endpoint} for an "
                f"HTTPS server; using {fallback} instead so the token never travels "
                "unencrypted. Fix the server's `substituter-endpoint`/`api-endpoint` (behind "
                "a reverse proxy, also send `X-Forwarded-Proto: https`).",
                _HINT_CONFIGURE,
            )
        )
        return fallback
    if endpoint_parts.hostname != server_parts.hostname:
        problems.append(
            Problem.notice(
                _TITLE_READS,
                f"The server's substituter endpoint {endpoint} is on another host than "
                f"{target.server}; Nix reads from it. If it is an internal address that this "
                "runner cannot reach, set `api-endpoint` on the server (zhaofengli/attic#325).",
                _HINT_CONFIGURE,
            )
        )
    return endpoint


def plan_read(
    *,
    target: CacheTarget,
    pinned_key: str | None,
    discovery: Discovery,
    token_present: bool,
) -> ReadPlan:
    """Decide substituter, key and authentication. Raises CacheConfigError when the pinned key
    differs from the key the server reports: a cache that changed keys is never trusted."""
    problems: list[Problem] = []
    config = discovery.config
    pinned = (pinned_key or "").strip() or None
    discovered_key = ((config.public_key or "").strip() or None) if config else None
    if discovered_key is not None and (why := _key_problem(discovered_key)):
        problems.append(
            Problem.warning(
                _TITLE_READS,
                f"The server reports a public key for `{target.cache}` that {why}; it is "
                "ignored. Pin the cache's key with `attic-public-key`.",
                _HINT_CONFIGURE,
            )
        )
        discovered_key = None

    if pinned is not None and discovered_key is not None and not same_key(pinned, discovered_key):
        raise CacheConfigError(
            f"The pinned `attic-public-key` {pinned} differs from the key {discovered_key} "
            f"that Attic server {target.server} reports for cache `{target.cache}`. A cache "
            "whose signing key changed is not trusted, so nothing was attached. If the key was "
            "rotated on purpose (e.g. `attic cache configure --regenerate-keypair`), pin the "
            "new key; otherwise check that attic-server and attic-cache name the intended "
            "cache, and who can reconfigure it."
        )

    if discovery.problem is not None:
        if pinned is None:
            problems.append(
                Problem.warning(
                    _TITLE_DISCOVERY,
                    f"{discovery.problem} Without the cache's public key nothing from it can "
                    "be trusted, so no cache is attached: the command still runs and builds "
                    "what it cannot get elsewhere. Pin the key with `attic-public-key` to keep "
                    "reading when discovery fails.",
                    _HINT_AUTH,
                )
            )
        else:
            problems.append(
                Problem.warning(
                    _TITLE_DISCOVERY,
                    f"{discovery.problem} The cache is still attached for reads with the "
                    "pinned `attic-public-key`; if the server refuses reads too, Nix skips it "
                    "and builds more.",
                    _HINT_AUTH,
                )
            )
    elif pinned is None and discovered_key is None:
        problems.append(
            Problem.warning(
                _TITLE_READS,
                f"Attic server {target.server} reports no public key for `{target.cache}`, "
                "and none is pinned, so no cache is attached (Nix refuses unsigned "
                "substitutes). Pin the key with `attic-public-key`.",
                _HINT_CONFIGURE,
            )
        )

    key = pinned or discovered_key
    key_source: KeySource | None = "pinned" if pinned else "discovered" if key else None
    is_public = config.is_public if config is not None else None
    substituter = None
    if key is not None:
        endpoint = config.substituter_endpoint if config else None
        substituter = _substituter(target, endpoint, problems)
    if key is not None and is_public is False and not token_present:
        problems.append(
            Problem.warning(
                _TITLE_READS,
                f"The cache `{target.cache}` is private and ATTIC_TOKEN is not set: Nix's "
                "reads will get 401 and everything is built from source. Set the ATTIC_TOKEN "
                "secret to a token with pull (`r`) permission on the cache.",
                _HINT_AUTH,
            )
        )
    return ReadPlan(
        target=target,
        substituter=substituter,
        public_key=key,
        key_source=key_source,
        is_public=is_public,
        authenticate=token_present and key is not None,
        problems=tuple(problems),
    )


def read_settings(
    *, substituter: str, public_key: str, netrc_path: Path | None
) -> tuple[tuple[str, str], ...]:
    """nix.conf settings for the read side. Always the ``extra-`` forms, so cache.nixos.org and
    the user's own substituters stay configured; ``netrc-file`` only with a token."""
    settings = [("extra-substituters", substituter), ("extra-trusted-public-keys", public_key)]
    if netrc_path is not None:
        settings.append(("netrc-file", str(netrc_path)))
    return tuple(settings)
