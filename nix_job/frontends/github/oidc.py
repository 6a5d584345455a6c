"""The job's OIDC ID token from GitHub Actions, for the token exchange.

``GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=<audience>`` with ``Authorization: Bearer
$ACTIONS_ID_TOKEN_REQUEST_TOKEN`` answers ``{"value": "<JWT>"}`` (actions/toolkit
``packages/core/src/oidc-utils.ts``). The runner sets both variables for a step only when the
job has ``permissions: id-token: write`` (actions/runner ``ScriptHandler.cs``: the request token
is the job's system access token), and GitHub never grants that to pull requests from forks.
The request token and the ID token go only into headers; neither is ever in a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import httpx

from nix_job.core.errors import IdTokenError
from nix_job.core.secret import Secret
from nix_job.core.secret_names import (
    GITHUB_ID_TOKEN_REQUEST_TOKEN_ENV,
    GITHUB_ID_TOKEN_REQUEST_URL_ENV,
)

REQUEST_URL_ENV = GITHUB_ID_TOKEN_REQUEST_URL_ENV
REQUEST_TOKEN_ENV = GITHUB_ID_TOKEN_REQUEST_TOKEN_ENV
TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=10.0, pool=10.0)
ATTEMPTS = 3
_SAMPLE = 300

MISSING = (
    "GitHub gave this step no ID-token request ({missing} not set): add `permissions: "
    "id-token: write` to the job (or the workflow), so nix-job can trade the job's OIDC "
    "identity for an Attic token. Pull requests from forks never get one (GitHub withholds it): "
    "they read the cache anonymously."
)


def missing_request(*, url: str | None, token: Secret | None, fork: bool) -> IdTokenError:
    """The error for a step without an ID-token request (naming what is missing). Pure."""
    absent = [n for n, v in ((REQUEST_URL_ENV, url), (REQUEST_TOKEN_ENV, token)) if not v]
    return IdTokenError(MISSING.format(missing=" and ".join(absent)), expected=fork)


def id_token_url(url: str, audience: str) -> str:
    """The request URL with ``audience`` appended as the toolkit does (it already carries
    ``?api-version=…``)."""
    return f"{url}{'&' if '?' in url else '?'}audience={quote(audience, safe='')}"


def request_id_token(
    *,
    url: str,
    request_token: Secret,
    audience: str,
    http: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    attempts: int = ATTEMPTS,
) -> Secret:
    """A fresh ID token for ``audience``. Transport errors and 5xx are retried (``attempts``
    in all); raises IdTokenError saying what failed and what to do."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise IdTokenError(
            f"{REQUEST_URL_ENV} is not an http(s) URL, so no ID token can be requested; it is "
            "the runner's to set, not the workflow's"
        )
    own = http is None
    client = http or httpx.Client(timeout=TIMEOUT, follow_redirects=False)
    try:
        for attempt in range(1, attempts + 1):
            error = _once(client, url, request_token, audience)
            if isinstance(error, Secret):
                return error
            retry, message = error
            if not retry or attempt == attempts:
                raise IdTokenError(message)
            sleep(float(attempt))
    finally:
        if own:
            client.close()
    raise IdTokenError("no attempt was made")  # attempts < 1


def _once(
    http: httpx.Client, url: str, request_token: Secret, audience: str
) -> Secret | tuple[bool, str]:
    where = "GitHub's ID-token request"
    try:
        response = http.get(
            id_token_url(url, audience),
            # SECURITY: the only place the request token is revealed.
            headers={
                "Authorization": f"Bearer {request_token.reveal()}",
                "Accept": "application/json",
                "User-Agent": "nix-job",
            },
        )
    except httpx.TimeoutException as exc:
        return True, f"{where} timed out ({type(exc).__name__}); re-run the job later"
    except httpx.HTTPError as exc:
        return True, f"{where} failed ({type(exc).__name__}); re-run the job later"
    status = response.status_code
    if status != 200:
        text = " ".join(response.text.split())[:_SAMPLE].replace(request_token.reveal(), "***")
        hint = (
            "the job lacks `permissions: id-token: write`, or the request token expired"
            if status in (401, 403)
            else "GitHub had a problem; re-run the job later"
        )
        return status >= 500, f"{where} answered HTTP {status} ({text}): {hint}"
    try:
        data = response.json()
    except ValueError:
        data = None
    value = data.get("value") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        return False, f"{where} answered without an ID token (no `value` in its JSON)"
    return Secret(value.strip())
