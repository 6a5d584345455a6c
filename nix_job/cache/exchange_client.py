"""The client of the token exchange (``nix-job token-exchange``, docs/token-exchange.md): one
``POST <url>/v1/exchange`` with the job's OIDC ID token, asking for one cache.

Explicit timeouts, no redirects, a bounded retry of what is worth retrying (transport errors,
5xx, the refusals in ``core.token_grant.RETRIABLE``), and every failure an ``ExchangeError``
that says what failed, why and what to do. The ID token is revealed only in the Authorization
header, and neither it nor the minted token ever appears in a message or a log line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import httpx

from nix_job.core.errors import NixJobError
from nix_job.core.secret import Secret
from nix_job.core.token_grant import RETRIABLE, Grant, parse_grant, refusal_text
from nix_job.core.token_scope import read_claims
from nix_job.core.urls import show_url, with_slash

log = logging.getLogger(__name__)

EXCHANGE_PATH = "v1/exchange"
USER_AGENT = "nix-job (token exchange client)"
#: Connecting is quick or broken; the service may have to fetch the issuer's keys first.
TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=10.0, pool=10.0)
ATTEMPTS = 3
#: Longest ``Retry-After`` honoured within one attempt series; longer means "not this run".
MAX_RETRY_AFTER_S = 10.0
_SAMPLE = 300


class ExchangeError(NixJobError):
    """The exchange did not grant a token. ``code`` is the service's refusal code, if any."""

    title = "nix-job: token exchange failed"
    hint = "token-exchange-fails"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


def _redact(text: str, *secrets: Secret) -> str:
    for secret in secrets:
        for form in secret.derived_forms():
            if form:
                text = text.replace(form, "***")
    return text


def _sample(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SAMPLE else text[:_SAMPLE] + "…"


def _server_time(response: httpx.Response) -> float | None:
    """The service's clock from its ``Date`` header (RFC 9110), to measure the lifetime."""
    try:
        return parsedate_to_datetime(response.headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        return None


class ExchangeClient:
    """Thread-safe (one ``httpx.Client``); close it when done."""

    def __init__(
        self,
        *,
        url: str,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.url = with_slash(url)
        self.endpoint = self.url + EXCHANGE_PATH
        self._shown = show_url(self.url)
        self._sleep = sleep
        self._clock = clock
        self._attempts = max(1, attempts)
        # SECURITY: request-level debug logs of httpx/httpcore would show headers.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._owns_http = http is None
        self._http = http or httpx.Client(
            timeout=TIMEOUT, follow_redirects=False, headers={"User-Agent": USER_AGENT}
        )

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def exchange(self, id_token: Secret, *, cache: str) -> Grant:
        """A token for ``cache`` (only that cache, with what the policy's rule allows on it).
        Raises ExchangeError after at most ``attempts`` tries of what is worth retrying."""
        attempt = 1
        while True:
            try:
                return self._once(id_token, cache)
            except _Retriable as retry:
                wait = float(attempt) if retry.after is None else retry.after
                if attempt >= self._attempts or wait > MAX_RETRY_AFTER_S:
                    raise retry.error from None
                log.info("token exchange: %s; trying again in %.0f s", retry.error.message, wait)
            self._sleep(wait)
            attempt += 1

    def _once(self, id_token: Secret, cache: str) -> Grant:
        action = f"the token exchange at {self._shown}"
        try:
            response = self._http.post(
                self.endpoint,
                content=json.dumps({"cache": cache}).encode(),
                headers={
                    # SECURITY: the only place the ID token is revealed.
                    "Authorization": f"Bearer {id_token.reveal()}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
            )
        except httpx.TimeoutException as exc:
            raise _Retriable(
                ExchangeError(
                    f"{action} did not answer in time ({type(exc).__name__}); it or a proxy in "
                    "front of it may be overloaded"
                )
            ) from exc
        except httpx.HTTPError as exc:
            raise _Retriable(
                ExchangeError(
                    f"could not reach {action} ({type(exc).__name__}: "
                    f"{_sample(_redact(str(exc), id_token))}); check the URL and that the "
                    "service is reachable from this runner"
                )
            ) from exc
        if response.status_code == 200:
            return self._grant(response, action)
        if 300 <= response.status_code < 400:
            target = show_url(response.headers.get("location", "?"))
            raise ExchangeError(
                f"{action} redirected (HTTP {response.status_code}) to {target}; nix-job does "
                "not follow redirects with an ID token: set attic-token-exchange to the final URL",
                status=response.status_code,
            )
        code, message = _refusal(response)
        text = refusal_text(
            status=response.status_code,
            code=code,
            message=_redact(message, id_token),
            claims=read_claims(id_token.reveal()),
        )
        error = ExchangeError(f"{action}: {text}", code=code, status=response.status_code)
        if code in RETRIABLE or (code is None and response.status_code >= 500):
            raise _Retriable(error, after=_retry_after(response))
        raise error

    def _grant(self, response: httpx.Response, action: str) -> Grant:
        try:
            data = response.json()
        except ValueError:
            data = None
        now = _server_time(response)
        grant = parse_grant(data, now=self._clock() if now is None else now)
        if isinstance(grant, str):
            raise ExchangeError(
                f"{action} answered 200, but {grant}; is attic-token-exchange the URL of a "
                "nix-job token exchange (and not a login page or another service)?",
                status=200,
            )
        return grant


class _Retriable(Exception):
    def __init__(self, error: ExchangeError, *, after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.after = after


def _refusal(response: httpx.Response) -> tuple[str | None, str]:
    """The service's ``{"error", "message"}``, or (None, a sample of whatever came back)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        message = data.get("message")
        return _sample(data["error"])[:60], _sample(message if isinstance(message, str) else "")
    return None, _sample(response.text) or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None
