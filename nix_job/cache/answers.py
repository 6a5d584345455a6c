"""What Attic's error answers mean: every unsuccessful HTTP answer becomes an ``AtticError``
that says what failed and what to check, and the answers worth retrying carry how long to wait.

Facts: attic's server answers errors as JSON ``{"code", "error", "message"}``
(zhaofengli/attic ``server/src/error.rs``); ``Retry-After`` is delay-seconds or an HTTP-date
(RFC 9110, section 10.2.3), sent with 429 (RFC 6585, section 4) and 503.
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime

import httpx

from nix_job.core.errors import AtticApiError, AtticAuthError

_BODY_SAMPLE = 300
_BAD_NAR = re.compile(r"bad (nar|chunk) hash or size", re.IGNORECASE)
#: The longest Retry-After honoured as given; the drain deadline bounds every wait anyway.
MAX_RETRY_AFTER_S = 600.0


class AtticUnavailableError(AtticApiError):
    """The server could not be reached, timed out, answered 5xx or throttled (429): worth
    retrying. ``retry_after_s``: how long the server asked the client to wait, if it said."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status=status, error=error)
        self.retry_after_s = retry_after_s

    @property
    def throttled(self) -> bool:
        """The server asked for less load (429, 503), as opposed to a failure or no answer."""
        return self.status in (429, 503)


def retry_after_s(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, capped at ``MAX_RETRY_AFTER_S``; None
    when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), MAX_RETRY_AFTER_S)


def error_for(
    response: httpx.Response, action: str, *, endpoint: str, cache: str, has_token: bool
) -> AtticApiError | AtticAuthError:
    """The error an unsuccessful answer to ``action`` means, saying what to check."""
    status = response.status_code
    kind, message = _error_body(response)
    said = f"{kind}: {message}" if kind else message
    where = f"cache '{cache}' on {endpoint}"
    if status == 401:
        token_hint = (
            "no token was given: set ATTIC_TOKEN to a token with push permission ('w')"
            if not has_token
            else "check that the token is not expired, was issued by this server (its JWT "
            "secret, not another server's) and names this cache"
        )
        return AtticAuthError(
            f"{action}: Attic answered 401 ({said}). The server did not accept the token, "
            f"or {where} does not exist (Attic hides caches from callers without access); "
            f"{token_hint}.",
            status=status,
            error=kind,
        )
    if status == 403:
        return AtticAuthError(
            f"{action}: Attic answered 403 ({said}). The token is valid but lacks a "
            f"permission on {where}: pushing needs 'w', and reading the cache config of a "
            "private cache needs 'r' as well. Issue a token with `atticadm make-token "
            f"--pull {cache} --push {cache}`.",
            status=status,
            error=kind,
        )
    if status == 404 and kind == "NoSuchCache":
        return AtticApiError(
            f"{action}: {where} does not exist ({said}). Fix the cache name, or create it "
            f"with `attic cache create {cache}`.",
            status=status,
            error=kind,
        )
    if status == 404:
        return AtticApiError(
            f"{action}: {endpoint} answered 404 ({said}). Is it the Attic server's root "
            "URL? Give the API endpoint, not the substituter URL that ends in the cache name.",
            status=status,
            error=kind,
        )
    if status == 413:
        return AtticApiError(
            f"{action}: request too large (HTTP 413: {said}). A proxy in front of Attic caps "
            "request size (Cloudflare 100 MB, Cloud Run 32 MB, nginx client_max_body_size); "
            "raise that limit for /_api/v1/upload-path or bypass the proxy.",
            status=status,
            error=kind,
        )
    if status == 400 and _BAD_NAR.search(message):
        return AtticApiError(
            f"{action}: Attic rejected the NAR ({said}): what arrived did not match the "
            "declared hash and size. The store path may be damaged (`nix-store "
            "--verify-path`), a proxy may have cut or altered the body, or the server's "
            "database chokes on large NARs (zhaofengli/attic#290).",
            status=status,
            error=kind,
        )
    if 300 <= status < 400:
        target = response.headers.get("Location", "?")
        return AtticApiError(
            f"{action}: {endpoint} redirected (HTTP {status}) to {target}. Uploads "
            "cannot follow redirects; configure the final URL (often https://) directly.",
            status=status,
            error=kind,
        )
    if status in (429, 503):
        after = retry_after_s(response.headers.get("Retry-After"))
        wait = f"after the {after:g} s it asked for" if after is not None else "with a backoff"
        return AtticUnavailableError(
            f"{action}: Attic answered HTTP {status} ({said}): the server or a proxy in front "
            f"of it is throttling or overloaded. It is retried {wait}, and fewer uploads run "
            "at once until it recovers.",
            status=status,
            error=kind,
            retry_after_s=after,
        )
    if status >= 500:
        return AtticUnavailableError(
            f"{action}: Attic answered HTTP {status} ({said}). The server or its storage "
            "had a problem; it is retried. If it persists, check the server's logs.",
            status=status,
            error=kind,
        )
    return AtticApiError(
        f"{action}: Attic answered HTTP {status} ({said}). This looks like a request "
        "nix-job should not have sent; please report it with the server's Attic version.",
        status=status,
        error=kind,
    )


def _error_body(response: httpx.Response) -> tuple[str | None, str]:
    """attic's ``{"code","error","message"}`` → (error, message); else (None, text sample)."""
    try:
        response.read()
        data = response.json()
    except (ValueError, httpx.HTTPError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        error = data.get("error")
        kind = error[:_BODY_SAMPLE] if isinstance(error, str) else None
        return kind, _sample(data["message"])
    try:
        text = " ".join(response.text.split())
    except (ValueError, httpx.HTTPError):
        text = ""
    if len(text) > _BODY_SAMPLE:
        text = text[:_BODY_SAMPLE] + "…"
    return None, text or response.reason_phrase or f"HTTP {response.status_code}"


def _sample(text: str) -> str:
    """Server text for a message: at most ``_BODY_SAMPLE`` characters (a server, or a proxy
    answering for it, can send anything; the front end makes every line inert)."""
    return text if len(text) <= _BODY_SAMPLE else text[:_BODY_SAMPLE] + "…"
