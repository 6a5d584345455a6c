"""The Attic credential of one run: ``ATTIC_TOKEN`` as given, or a short-lived token from the
token exchange (the job's OIDC identity traded for it), renewed while the run needs it.

Composition, used by the lifecycle before it attaches the cache: it asks the front end for the
job's ID token, the exchange for a token for the one cache, masks every token before anything
can print it, and keeps the netrc Nix reads up to date on renewal. A failed exchange is a
problem (the run reads anonymously), never an exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Protocol

from nix_job.cache import netrc_file
from nix_job.cache.netrc_file import TempNetrc
from nix_job.cache.token_source import FLOOR_S, RenewingToken, StaticToken, TokenSource
from nix_job.core.decision import PublishDecision
from nix_job.core.errors import DOCS_URL, IdTokenError, NixJobError
from nix_job.core.outcome import push_token_warning
from nix_job.core.problem import Kind, Problem
from nix_job.core.report import ExchangeFacts
from nix_job.core.secret import Secret
from nix_job.core.token_grant import PERMISSION_TEXT, Grant
from nix_job.core.token_scope import can_push
from nix_job.core.urls import show_url

log = logging.getLogger(__name__)

TITLE = "nix-job: token exchange failed"
HINT = DOCS_URL + "token-exchange-fails"


class Identity(Protocol):
    """What the front end gives: the job's ID token, masking, a log section."""

    def id_token(self, audience: str) -> Secret: ...

    def mask(self, secret: Secret) -> None: ...

    def section(self, title: str) -> AbstractContextManager[None]: ...


class TokenExchange(Protocol):
    """``cache.exchange_client.ExchangeClient``: raises NixJobError when it grants nothing."""

    def exchange(self, id_token: Secret, *, cache: str) -> Grant: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeRequest:
    url: str
    audience: str
    cache: str


class Credentials:
    """The token for the first reads, the source the Attic client asks on every request, and
    what the gate and the summary need to know about it."""

    def __init__(
        self,
        *,
        token: Secret | None,
        renewer: RenewingToken | None = None,
        facts: ExchangeFacts | None = None,
        missing: str | None = None,
        push_capable: bool | None = None,
    ) -> None:
        self.token = token
        # For the gate: ATTIC_TOKEN is taken on trust, as always; an exchanged token can push
        # when the grant says so.
        self.push_capable = token is not None if push_capable is None else push_capable
        self.renewer = renewer
        self.source: TokenSource = renewer if renewer is not None else StaticToken(token)
        self._facts = facts
        self.missing = missing  # why there is no push token, when the exchange knows better
        self._netrc: Callable[[Grant], None] | None = None

    @property
    def rule(self) -> str | None:
        return self.renewer.grant.rule if self.renewer is not None else None

    def can_push(self, cache: str) -> bool:
        """Whether the token's claims allow push on ``cache`` (advisory: the server decides)."""
        return self.token is not None and can_push(self.token.reveal(), cache) is True

    def push_token_warning(self, decision: PublishDecision, cache: str) -> Problem | None:
        """A run that does not publish but holds a token that can push (``core.outcome``)."""
        return push_token_warning(
            decision, token_can_push=self.can_push(cache), cache=cache, exchange_rule=self.rule
        )

    @property
    def facts(self) -> ExchangeFacts | None:
        renewer, facts = self.renewer, self._facts
        if renewer is None or facts is None:
            return facts
        return ExchangeFacts(
            url=facts.url,
            audience=facts.audience,
            granted=facts.granted,
            rule=renewer.grant.rule,
            lifetime_s=facts.lifetime_s,
            renewals=renewer.renewals,
            failure=renewer.last_error,
        )

    # the netrc Nix reads -------------------------------------------------------------------------

    def follow(self, netrc: TempNetrc | None, host: str | None) -> None:
        """Rewrite ``netrc`` with every renewed token (after it is masked)."""
        if self.renewer is None or netrc is None or not host:
            return

        def rewrite(grant: Grant) -> None:
            try:
                netrc_file.rewrite_password(netrc, host=host, token=grant.token)
            except (OSError, ValueError) as error:  # never the token in the message
                log.warning(
                    "the temporary netrc could not take the renewed token (%s); Nix keeps the "
                    "old one until it expires",
                    getattr(error, "strerror", None) or type(error).__name__,
                )

        self._netrc = rewrite
        self.renewer.subscribe(rewrite)

    def unfollow(self) -> None:
        """Stop rewriting the netrc (waits for a rewrite in progress): call before removing it."""
        if self.renewer is not None and self._netrc is not None:
            self.renewer.unsubscribe(self._netrc)
            self._netrc = None

    def start(self) -> None:
        if self.renewer is not None:
            self.renewer.start()

    def close(self) -> None:
        self.unfollow()
        if self.renewer is not None:
            self.renewer.close()


def from_attic_token(token: Secret | None) -> Credentials:
    return Credentials(token=token)


def credentials_for_run(
    *,
    attic_token: Secret | None,
    url: str | None,
    audience: str | None,
    cache: str,
    identity: Identity,
    connect: Callable[[str], TokenExchange],
    cleanup: ExitStack,
) -> tuple[Credentials, list[Problem]]:
    """``ATTIC_TOKEN`` as given when no exchange is set (today's behaviour); else the token
    exchange's token for ``cache``, the client and the renewal closed by ``cleanup``."""
    if url is None or audience is None:
        return from_attic_token(attic_token), []
    problems: list[Problem] = []
    if attic_token is not None:
        problems.append(
            Problem.notice(
                "nix-job: ATTIC_TOKEN not used",
                "attic-token-exchange is set, so ATTIC_TOKEN is ignored: remove the long-lived "
                "secret from the CI's settings.",
            )
        )
    client = connect(url)
    cleanup.callback(client.close)
    with identity.section("nix-job: token exchange"):
        creds, problem = exchange(
            ExchangeRequest(url=url, audience=audience, cache=cache),
            identity=identity,
            client=client,
        )
    cleanup.callback(creds.close)  # before the client closes
    return creds, [*problems, *([problem] if problem else [])]


def exchange(
    request: ExchangeRequest,
    *,
    identity: Identity,
    client: TokenExchange,
    clock: Callable[[], float] | None = None,
    floor_s: float = FLOOR_S,
) -> tuple[Credentials, Problem | None]:
    """Trade the job's identity for a token for ``request.cache``. On failure: no token (the
    run reads anonymously) and a problem saying what failed, why and what to do."""
    shown = show_url(request.url)

    def trade() -> Grant:
        id_token = identity.id_token(request.audience)  # masked by the front end
        grant = client.exchange(id_token, cache=request.cache)
        # SECURITY: masked before anyone is handed it (listeners and current() wait for this).
        identity.mask(grant.token)
        return grant

    try:
        grant = trade()
    except NixJobError as error:
        failure = error.message
        kind: Kind = "notice" if isinstance(error, IdTokenError) and error.expected else "warning"
        facts = ExchangeFacts(url=shown, audience=request.audience, failure=failure)
        problem = Problem(
            kind=kind,
            title=error.title if isinstance(error, IdTokenError) else TITLE,
            message=f"{failure} Without a token from the exchange this run reads cache "
            f"`{request.cache}` anonymously (a private cache answers 401) and cannot publish.",
            hint_url=HINT,
        )
        missing = _short(error)
        return Credentials(token=None, facts=facts, missing=missing, push_capable=False), problem

    renewer = RenewingToken(grant=grant, renew=trade, floor_s=floor_s, **_clock(clock))
    letters = grant.permissions(request.cache)
    facts = ExchangeFacts(
        url=shown,
        audience=request.audience,
        granted=PERMISSION_TEXT.get(letters, "nothing"),
        rule=grant.rule,
        lifetime_s=grant.lifetime_s,
    )
    log.info("the token exchange at %s granted %s", shown, grant.describe(request.cache))
    no_push: str | None = None
    if "w" not in letters:
        no_push = (
            f"the token exchange granted cache `{request.cache}` "
            f"{PERMISSION_TEXT.get(letters, 'nothing')} only (rule `{grant.rule}`)"
        )
    credentials = Credentials(
        token=grant.token,
        renewer=renewer,
        facts=facts,
        missing=no_push,
        push_capable=no_push is None,
    )
    return credentials, None


def _clock(clock: Callable[[], float] | None) -> dict[str, Callable[[], float]]:
    return {} if clock is None else {"clock": clock}


def _short(error: NixJobError) -> str:
    """The failure in a few words, for the gate's one-sentence reason."""
    if isinstance(error, IdTokenError):
        return "the job has no OIDC ID token for the token exchange"
    code = getattr(error, "code", None)
    return f"the token exchange refused ({code})" if code else "the token exchange failed"
