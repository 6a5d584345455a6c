"""The token-exchange client: the request it sends, every refusal mapped to a clear error,
retries of what is worth retrying, timeouts and answers that are not the service's; then the
real service in-process with a fake OIDC issuer."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import get_args

import httpx
import pytest

from nix_job.cache.exchange_client import ExchangeClient, ExchangeError
from nix_job.core.secret import Secret
from nix_job.exchange.app import Deps, create_app
from nix_job.exchange.errors import STATUS, RefusalCode
from tests.exchange.issuer import FakeIssuer, b64url
from tests.exchange.support import AUDIENCE, hs256_signer, make_policy, serve

URL = "https://attic-exchange.example.com/"
ID_TOKEN = (
    b64url(b'{"alg":"RS256","kid":"k"}')
    + "."
    + b64url(b'{"iss":"https://token.example","aud":"https://github.com/octo-org"}')
    + ".c2lnbmF0dXJl"
)
MINTED = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtaW50ZWQifQ.bWludGVk"
GRANTED = {"token": MINTED, "expires_at": 1_767_225_630, "caches": {"main": "rw"}, "rule": "r1"}
DATE = "Wed, 31 Dec 2025 23:30:30 GMT"  # 1767223830: 1800 s before expires_at

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, *, slept: list[float] | None = None) -> ExchangeClient:
    http = httpx.Client(transport=httpx.MockTransport(handler), follow_redirects=False)
    sleeps = slept if slept is not None else []
    return ExchangeClient(url=URL, http=http, sleep=sleeps.append, clock=lambda: 0.0)


def refusal(status: int, code: str, message: str = "the service says why") -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": message})


def failure(handler: Handler, *, slept: list[float] | None = None) -> ExchangeError:
    with pytest.raises(ExchangeError) as info:
        client(handler, slept=slept).exchange(Secret(ID_TOKEN), cache="main")
    assert ID_TOKEN not in info.value.message
    assert MINTED not in info.value.message
    return info.value


def test_one_post_with_the_id_token_for_one_cache() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=GRANTED, headers={"Date": DATE})

    grant = client(handler).exchange(Secret(ID_TOKEN), cache="main")

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == URL + "v1/exchange"
    assert request.headers["authorization"] == f"Bearer {ID_TOKEN}"
    assert json.loads(request.content) == {"cache": "main"}
    assert grant.token.reveal() == MINTED
    assert grant.lifetime_s == 1800  # measured on the service's clock (Date), not ours
    assert grant.can_push("main")


def test_a_prefix_in_the_url_is_kept() -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    assert ExchangeClient(url="https://h.example/exchange", http=http).endpoint == (
        "https://h.example/exchange/v1/exchange"
    )


@pytest.mark.parametrize("code", get_args(RefusalCode))
def test_every_refusal_becomes_an_error_that_names_the_code_and_what_to_do(
    code: RefusalCode,
) -> None:
    slept: list[float] = []
    error = failure(lambda r: refusal(STATUS[code], code), slept=slept)
    assert error.code == code
    assert error.status == STATUS[code]
    assert f"HTTP {STATUS[code]}, {code}: the service says why" in error.message
    assert error.message.startswith("the token exchange at 'https://attic-exchange.example.com/'")
    assert error.hint_url.endswith("#token-exchange-fails")


@pytest.mark.parametrize(
    ("code", "attempts"),
    [
        pytest.param("issuer_unavailable", 3, id="issuer-unavailable-is-retried"),
        pytest.param("rate_limited", 3, id="rate-limited-is-retried"),
        pytest.param("unknown_key", 3, id="unknown-key-is-retried"),
        pytest.param("no_matching_rule", 1, id="a-policy-refusal-is-final"),
        pytest.param("wrong_audience", 1, id="a-token-refusal-is-final"),
    ],
)
def test_only_refusals_worth_it_are_retried(code: RefusalCode, attempts: int) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return refusal(STATUS[code], code)

    slept: list[float] = []
    failure(handler, slept=slept)
    assert len(calls) == attempts
    assert slept == [1.0, 2.0][: attempts - 1]


def test_retry_after_is_honoured_when_short_and_ends_the_tries_when_long() -> None:
    answers = iter(
        [
            httpx.Response(429, json={"error": "rate_limited"}, headers={"Retry-After": "4"}),
            httpx.Response(429, json={"error": "rate_limited"}, headers={"Retry-After": "40"}),
        ]
    )
    slept: list[float] = []
    error = failure(lambda r: next(answers), slept=slept)
    assert slept == [4.0]
    assert error.code == "rate_limited"


def test_a_transient_failure_then_a_grant() -> None:
    answers = iter([httpx.Response(502, text="bad gateway"), httpx.Response(200, json=GRANTED)])
    slept: list[float] = []
    grant = client(lambda r: next(answers), slept=slept).exchange(Secret(ID_TOKEN), cache="main")
    assert grant.rule == "r1"
    assert slept == [1.0]


@pytest.mark.parametrize(
    ("exception", "says"),
    [
        pytest.param(httpx.ReadTimeout("slow"), "did not answer in time (ReadTimeout)", id="read"),
        pytest.param(httpx.ConnectTimeout("t"), "did not answer in time", id="connect-timeout"),
        pytest.param(httpx.ConnectError("refused"), "could not reach", id="refused"),
    ],
)
def test_timeouts_and_transport_errors_are_retried_then_explained(
    exception: Exception, says: str
) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        raise exception

    error = failure(handler)
    assert says in error.message
    assert len(calls) == 3


def test_the_client_has_explicit_timeouts() -> None:
    made = ExchangeClient(url=URL)
    try:
        timeout = made._http.timeout
        assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (10, 30, 10, 10)
        assert made._http.follow_redirects is False
    finally:
        made.close()


@pytest.mark.parametrize(
    ("response", "says"),
    [
        pytest.param(
            httpx.Response(200, text="<html>login</html>"),
            "answered 200, but the answer is not a JSON object",
            id="html-200",
        ),
        pytest.param(
            httpx.Response(200, json={"token": MINTED}),
            "answered 200, but `expires_at` is not an integer",
            id="incomplete-200",
        ),
        pytest.param(
            httpx.Response(404, text="Not Found"),
            "HTTP 404: Not Found); is attic-token-exchange the service's root URL",
            id="not-found",
        ),
        pytest.param(
            httpx.Response(302, headers={"Location": "https://login.example/"}),
            "redirected (HTTP 302) to 'https://login.example/'",
            id="redirect",
        ),
        pytest.param(
            httpx.Response(401, json={"error": "wrong_audience", "message": "aud is not x"}),
            "the ID token's `aud` is 'https://github.com/octo-org'",
            id="audience-named-from-the-id-token",
        ),
    ],
)
def test_answers_that_are_not_a_grant(response: httpx.Response, says: str) -> None:
    assert says in failure(lambda r: response).message


def test_a_server_message_that_echoes_the_id_token_is_redacted() -> None:
    error = failure(lambda r: refusal(401, "bad_signature", f"token {ID_TOKEN} is bad"))
    assert "token *** is bad" in error.message


def test_nothing_secret_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter(
        [
            httpx.Response(503, json={"error": "issuer_unavailable"}),
            httpx.Response(200, json=GRANTED),
        ]
    )
    caplog.set_level(logging.DEBUG)
    client(lambda r: next(answers)).exchange(Secret(ID_TOKEN), cache="main")
    assert "trying again" in caplog.text
    assert ID_TOKEN not in caplog.text
    assert MINTED not in caplog.text


# --- against the service ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[FakeIssuer, str]]:
    with FakeIssuer(name="gh") as issuer:
        policy = make_policy(issuer.url, "https://gitlab.example.com")
        with serve(create_app(Deps(policy=policy, signer=hs256_signer()))) as url:
            yield issuer, url


@pytest.mark.parametrize(
    ("claims", "rule", "letters"),
    [
        pytest.param({}, "gh-publish", "rw", id="default-branch-push"),
        pytest.param(
            {"event_name": "pull_request", "ref": "refs/pull/7/merge", "head_ref": "feature"},
            "gh-pull",
            "r",
            id="pull-request",
        ),
    ],
)
def test_the_real_service_grants_what_its_policy_says(
    service: tuple[FakeIssuer, str], claims: dict[str, str], rule: str, letters: str
) -> None:
    issuer, url = service
    id_token = issuer.sign({**issuer.github_claims(audience=AUDIENCE), **claims})
    exchange = ExchangeClient(url=url)
    try:
        grant = exchange.exchange(Secret(id_token), cache="main")
    finally:
        exchange.close()
    assert (grant.rule, grant.permissions("main")) == (rule, letters)
    assert (
        1790 <= grant.lifetime_s <= 1801 if rule == "gh-publish" else grant.lifetime_s <= 901
    )  # Date has whole seconds


def test_the_real_service_refuses_a_wrong_audience_clearly(
    service: tuple[FakeIssuer, str],
) -> None:
    issuer, url = service
    id_token = issuer.sign(issuer.github_claims(audience="https://github.com/octo-org"))
    exchange = ExchangeClient(url=url)
    try:
        with pytest.raises(ExchangeError) as info:
            exchange.exchange(Secret(id_token), cache="main")
    finally:
        exchange.close()
    assert info.value.code == "wrong_audience"
    assert "set `oidc-audience`" in info.value.message
    assert id_token not in info.value.message
