"""The HTTP surface (Starlette): ``POST /v1/exchange`` and ``GET /healthz``.

One exchange: bounded ``Authorization: Bearer <ID token>`` and body → verify (``oidc``) →
identity (``identity``) → rate limit per repository/project → decision (``decide``) → mint
(``mint``) → ``200 {"token", "expires_at", "caches", "rule"}``, or a refusal
``{"error": code, "message": …}`` with its status. Every request to ``/v1/exchange`` logs
exactly one decision line (``audit``) on the ``nix_job.exchange.decision`` logger.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nix_job.core.secret import Secret
from nix_job.exchange.audit import decision_line
from nix_job.exchange.decide import Grant, decide, parse_request
from nix_job.exchange.errors import Refusal, Refused
from nix_job.exchange.identity import Identity, read_identity
from nix_job.exchange.jwks import HTTP_TIMEOUT, JwksCache
from nix_job.exchange.mint import Signer, attic_claims
from nix_job.exchange.oidc import MAX_TOKEN_BYTES, Clock, OidcVerifier
from nix_job.exchange.policy import Policy
from nix_job.exchange.ratelimit import RateLimiter

MAX_BODY_BYTES = 4 * 1024
DECISION_LOGGER = "nix_job.exchange.decision"
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *$")

log = logging.getLogger(__name__)


def default_http_client() -> httpx.AsyncClient:
    """For discovery and JWKS: explicit timeouts, no redirects, the system's CA bundle."""
    return httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Deps:
    """What the app is built from; tests pass a fixed clock or another HTTP client."""

    policy: Policy
    signer: Signer
    clock: Clock = time.time
    http_factory: Callable[[], httpx.AsyncClient] = field(default=default_http_client)
    jwks_refetch_interval: float = 60.0
    max_token_bytes: int = MAX_TOKEN_BYTES
    max_body_bytes: int = MAX_BODY_BYTES


def create_app(deps: Deps) -> Starlette:
    exchange = _Exchange(deps)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with deps.http_factory() as http:
            exchange.start(http)
            yield

    return Starlette(
        routes=[
            Route("/v1/exchange", exchange.handle, methods=["POST"]),
            Route("/healthz", _health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


class _Exchange:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._limiter = RateLimiter(
            burst=deps.policy.rate_limit.burst, per_minute=deps.policy.rate_limit.per_minute
        )
        self._verifier: OidcVerifier | None = None
        self._decisions = logging.getLogger(DECISION_LOGGER)

    def start(self, http: httpx.AsyncClient) -> None:
        """Bind the verifier to the HTTP client of the serving event loop (lifespan)."""
        jwks = JwksCache(
            http=http,
            clock=self._deps.clock,
            ttl=self._deps.policy.service.jwks_ttl,
            refetch_interval=self._deps.jwks_refetch_interval,
        )
        self._verifier = OidcVerifier(
            policy=self._deps.policy,
            jwks=jwks,
            clock=self._deps.clock,
            max_token_bytes=self._deps.max_token_bytes,
        )

    async def handle(self, request: Request) -> Response:
        record: dict[str, object] = {
            "event": "exchange",
            "client": request.client.host if request.client else None,
        }
        try:
            response = await self._exchange(request, record)
        except Refused as refused:
            response = self._refuse(refused.refusal, record)
        except Exception as error:  # answer and log, never a traceback with request data
            log.exception("internal error in /v1/exchange (%s)", type(error).__name__)
            record.update(outcome="error", status=500, reason=type(error).__name__)
            response = JSONResponse(
                {"error": "internal_error", "message": "the exchange failed; see the log"},
                status_code=500,
            )
        # One line per decision; WARNING when the pull-request floor removed push (a rule
        # would have granted it) or the service failed, INFO otherwise.
        status = record.get("status")
        notable = bool(record.get("floor")) or (isinstance(status, int) and status >= 500)
        self._decisions.log(
            logging.WARNING if notable else logging.INFO, "%s", decision_line(record)
        )
        return response

    async def _exchange(self, request: Request, record: dict[str, object]) -> Response:
        if self._verifier is None:
            raise RuntimeError("the app was not started (lifespan did not run)")
        token = self._bearer(request)
        body = await self._body(request)
        ask = parse_request(body)
        record.update(requested_cache=ask.cache, requested_lifetime=ask.lifetime)
        verified = await self._verifier.verify(token)
        record["issuer"] = verified.issuer.name
        identity = read_identity(verified.issuer, verified.claims)
        record.update(_identity_fields(identity))
        now = self._deps.clock()
        wait = self._limiter.take(identity.rate_limit_key, now)
        if wait:
            raise Refused(
                "rate_limited",
                f"too many exchanges for {identity.project}: at most "
                f"{self._deps.policy.rate_limit.burst} at once and "
                f"{self._deps.policy.rate_limit.per_minute} a minute per repository; "
                f"retry in {wait} s (reuse a token until it expires)",
                retry_after=wait,
            )
        decision = decide(self._deps.policy, identity, ask)
        if isinstance(decision, Refusal):
            return self._refuse(decision, record)
        return self._grant(decision, identity, int(now), record)

    def _grant(
        self, grant: Grant, identity: Identity, now: int, record: dict[str, object]
    ) -> Response:
        service = self._deps.policy.service
        claims = attic_claims(
            grant=grant,
            subject=identity.attic_subject,
            now=now,
            skew=service.leeway,
            issuer=service.token_issuer,
            audiences=service.token_audiences,
        )
        token = self._deps.signer.sign(claims)
        expires_at = now + grant.lifetime
        record.update(
            outcome="granted",
            status=200,
            rule=grant.rule,
            caches=grant.summary,
            lifetime=grant.lifetime,
            expires_at=expires_at,
            attic_sub=identity.attic_subject,
            floor=grant.floor,
        )
        return JSONResponse(
            {
                "token": token.reveal(),
                "expires_at": expires_at,
                "caches": grant.summary,
                "rule": grant.rule,
            },
            headers={"Cache-Control": "no-store"},
        )

    def _refuse(self, refusal: Refusal, record: dict[str, object]) -> Response:
        record.update(
            outcome="refused", status=refusal.status, code=refusal.code, reason=refusal.message
        )
        headers = {"Cache-Control": "no-store"}
        if refusal.retry_after is not None:
            headers["Retry-After"] = str(refusal.retry_after)
        if refusal.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return JSONResponse(
            {"error": refusal.code, "message": refusal.message},
            status_code=refusal.status,
            headers=headers,
        )

    def _bearer(self, request: Request) -> Secret:
        header = request.headers.get("authorization")
        if header is None:
            raise Refused(
                "missing_token",
                "no Authorization header; send the CI job's ID token as "
                "`Authorization: Bearer <token>`",
            )
        if len(header) > self._deps.max_token_bytes + 16:
            raise Refused(
                "token_too_large",
                f"the Authorization header is longer than {self._deps.max_token_bytes} bytes; "
                "CI ID tokens are a few KiB",
            )
        match = _BEARER.match(header)
        if match is None:
            raise Refused(
                "missing_token",
                "the Authorization header is not `Bearer <token>`; send the CI job's ID token",
            )
        return Secret(match.group(1))

    async def _body(self, request: Request) -> bytes:
        limit = self._deps.max_body_bytes
        too_large = Refused(
            "body_too_large",
            f"the request body is over {limit} bytes; send nothing or "
            '{"cache": "name", "lifetime": seconds}',
        )
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)


def _identity_fields(identity: Identity) -> dict[str, object]:
    return {
        "subject": identity.subject,
        "project": identity.project,
        "project_id": identity.project_id,
        "ref": identity.ref,
        "trigger": identity.trigger,
        "environment": identity.claims.get("environment"),
        "pull_request": identity.pull_request,
    }
