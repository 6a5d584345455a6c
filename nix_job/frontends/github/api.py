"""The default branch when the event payload lacks it: one GitHub API call, never raising.

``fetch_default_branch`` is the I/O (one httpx request);
``resolve_default_branch`` is the pure rule for when to call it and what to record.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx

from nix_job.core.secret import Secret
from nix_job.core.urls import show_url, url_problem
from nix_job.frontends.github.event import TRUSTED_EVENTS, EventContext

#: docs.github.com, "API Versions" of the REST API.
API_VERSION = "2022-11-28"
REPOSITORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-]*/[A-Za-z0-9._\-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultBranchLookup:
    """Either ``branch`` (the lookup worked) or ``error`` (why not, safe to log)."""

    branch: str | None
    error: str | None


def _failed(error: str) -> DefaultBranchLookup:
    return DefaultBranchLookup(branch=None, error=error)


_STATUS_HINTS = {
    401: "the github-token was refused; pass `${{ github.token }}` or another valid token",
    403: "the token may not read the repository, or the API rate limit was hit",
    404: "the repository was not found or the token cannot see it",
}


def _transport_error(exc: httpx.HTTPError, where: str) -> str:
    name = type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} timed out ({name}); re-run the job later"
    text = str(exc)
    if errno := re.search(r"\[Errno -?\d+\] ([^\"')]+)", text):
        text = errno.group(1)  # "Connection refused" rather than the nested wrappers
    text = text.splitlines()[0][:300] if text else "no details"
    return f"{where} failed ({name}: {text}); check GITHUB_API_URL and the runner's network"


def _get(http: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response | str:
    """GET ``url``, following one redirect on the same host; a reason string when refused."""
    response = http.get(url, headers=headers)
    if not response.is_redirect or response.next_request is None:
        return response
    target = response.next_request.url
    origin = httpx.URL(url)
    if (target.scheme, target.host, target.port) != (origin.scheme, origin.host, origin.port):
        # SECURITY: the token goes to the configured API host only.
        return (
            f"GET {url} was redirected from host {origin.host} to {target.host}; nix-job does "
            "not send the token to another host. Set GITHUB_API_URL to the final address"
        )
    return http.get(target, headers=headers)


def fetch_default_branch(
    *,
    token: Secret,
    api_url: str,
    repository: str,
    timeout_s: float = 10,
    transport: httpx.BaseTransport | None = None,
) -> DefaultBranchLookup:
    """Ask ``GET {api_url}/repos/{repository}`` for ``default_branch``. Never raises.

    One request (and one same-host redirect), no retries: a failure only means this run does
    not publish. The token goes only into the Authorization header and is scrubbed from any
    error text. The REST API's "Get a repository" needs only read access to metadata, which
    the job's ``GITHUB_TOKEN`` has.
    """
    api_url = api_url.strip().rstrip("/")
    if url_problem(api_url) is not None:
        return _failed(
            f"GITHUB_API_URL {show_url(api_url)} is not an http(s) URL, so the default branch "
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
    where = f"GET {api_url}/repos/{repository}"
    headers = {
        "Authorization": f"Bearer {secret}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
        "User-Agent": "nix-job",
    }
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False, transport=transport) as http:
            response = _get(http, f"{api_url}/repos/{repository}", headers)
            if isinstance(response, str):
                return _failed(response.replace(secret, "***"))
            status = response.status_code
            if status != 200:
                hint = _STATUS_HINTS.get(status, "the GitHub API had a problem; re-run later")
                return _failed(f"{where} returned HTTP {status}: {hint}")
            data = response.json()
    except httpx.HTTPError as exc:
        return _failed(_transport_error(exc, where).replace(secret, "***"))
    except ValueError as exc:  # not JSON (JSONDecodeError, UnicodeDecodeError)
        return _failed(f"{where} gave a reply that is not a repository ({type(exc).__name__})")
    branch = data.get("default_branch") if isinstance(data, dict) else None
    if branch is not None and not isinstance(branch, str):
        return _failed(
            f"{where} gave a reply that is not a repository (default_branch is "
            f"{type(branch).__name__})"
        )
    if not branch:
        return _failed(f"{where} gave no usable default_branch ({branch!r})")
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
