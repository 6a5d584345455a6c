"""The default branch when the event payload lacks it: one GitHub API call, never raising.

``fetch_default_branch`` is the I/O (PyGithub, imported only when called);
``resolve_default_branch`` is the pure rule for when to call it and what to record.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from nix_job.core.secret import Secret
from nix_job.frontends.github.event import TRUSTED_EVENTS, EventContext

REPOSITORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*/[A-Za-z0-9._\-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultBranchLookup:
    """Either ``branch`` (the lookup worked) or ``error`` (why not, safe to log)."""

    branch: str | None
    error: str | None


def _failed(error: str) -> DefaultBranchLookup:
    return DefaultBranchLookup(branch=None, error=error)


def _usable_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0


def _describe(exc: BaseException, *, repository: str, api_url: str) -> str:
    """A loggable reason for a failed lookup (the caller scrubs the token from it)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        hints = {
            401: "the github-token was refused; keep the input at its default "
            "(`${{ github.token }}`) or pass a valid token",
            403: "the token may not read the repository, or the API rate limit was hit",
            404: "the repository was not found or the token cannot see it",
        }
        hint = hints.get(status, "the GitHub API had a problem; re-run the job later")
        return f"GET {api_url}/repos/{repository} returned HTTP {status}: {hint}"
    name = type(exc).__name__
    if name == "BadAttributeException" or isinstance(exc, json.JSONDecodeError):
        return f"GET {api_url}/repos/{repository} gave a reply that is not a repository ({name})"
    if "Timeout" in name or "timed out" in str(exc).lower():
        return f"GET {api_url}/repos/{repository} timed out ({name}); re-run the job later"
    text = str(exc)
    if errno := re.search(r"\[Errno -?\d+\] ([^\"')]+)", text):
        text = errno.group(1)  # "Connection refused" rather than urllib3's nested wrappers
    text = text.splitlines()[0][:300] if text else "no details"
    return (
        f"GET {api_url}/repos/{repository} failed ({name}: {text}); check GITHUB_API_URL "
        "and the runner's network"
    )


def fetch_default_branch(
    *, token: Secret, api_url: str, repository: str, timeout_s: float = 10
) -> DefaultBranchLookup:
    """Ask ``GET {api_url}/repos/{repository}`` for ``default_branch``. Never raises.

    One request, no retries (a failure only means this run does not publish). The token
    goes only into the Authorization header; it is scrubbed from any error text.
    """
    api_url = api_url.strip().rstrip("/")
    if not _usable_url(api_url):
        return _failed(
            f"GITHUB_API_URL {api_url!r} is not an http(s) URL, so the default branch "
            "cannot be looked up"
        )
    if not REPOSITORY_RE.match(repository):
        return _failed(
            f"GITHUB_REPOSITORY {repository!r} is not `owner/name`, so the default branch "
            "cannot be looked up"
        )
    secret = token.reveal()
    if not secret:
        return _failed("no github-token was given, so the default branch cannot be looked up")

    try:
        from github import Auth, Github  # noqa: PLC0415 (heavy; only this rare path needs it)

        client = Github(
            auth=Auth.Token(secret),
            base_url=api_url,
            lazy=True,
            timeout=max(1, math.ceil(timeout_s)),  # PyGithub insists on whole seconds
            retry=0,
            seconds_between_requests=None,
        )
        try:
            branch = client.get_repo(repository).default_branch
        finally:
            client.close()
    except Exception as exc:  # any failure means "unknown", never a crash
        error = _describe(exc, repository=repository, api_url=api_url)
        return _failed(error.replace(secret, "***"))

    if not isinstance(branch, str) or not branch:
        return _failed(
            f"GET {api_url}/repos/{repository} gave no usable default_branch ({branch!r})"
        )
    return DefaultBranchLookup(branch=branch, error=None)


def resolve_default_branch(
    event: EventContext, fetch: Callable[[], DefaultBranchLookup] | None
) -> EventContext:
    """Fill in the default branch from ``fetch`` when the payload lacked it. Pure.

    ``fetch`` is called only when it can matter: the branch is unknown, a fetch is available,
    and the event is one that may publish (pull requests never do, so they cost no API call).
    The result records where the branch came from, or why the lookup failed.
    """
    if event.default_branch is not None or fetch is None:
        return event
    if event.event_name not in TRUSTED_EVENTS:
        return event
    try:
        result = fetch()
    except Exception as exc:  # a misbehaving fetch must not crash the gate
        return replace(event, lookup_error=f"the lookup raised {type(exc).__name__}")
    if result.branch:
        return replace(event, default_branch=result.branch, default_branch_source="api")
    return replace(event, lookup_error=result.error or "the lookup returned no branch")
