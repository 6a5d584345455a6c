"""The service in-process (Uvicorn on a thread) against fake GitHub and GitLab issuers:
grants, every refusal, the floor, the rate limit, the Attic double, and logs without tokens."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import jwt
import pytest

from nix_job.exchange.app import DECISION_LOGGER
from nix_job.exchange.mint import CLAIM_NAMESPACE, load_signer
from nix_job.exchange.policy import Policy
from tests.attic_double import AtticDouble
from tests.exchange.issuer import FakeIssuer, raw_token
from tests.exchange.support import (
    AUDIENCE,
    HS256_SECRET,
    exchange_client,
    make_policy,
)
from tests.exchange.test_mint import b64, rsa_pem


@dataclass(frozen=True)
class Issuers:
    github: FakeIssuer
    gitlab: FakeIssuer


@pytest.fixture(scope="module")
def issuers() -> Iterator[Issuers]:
    with FakeIssuer(name="gh") as github, FakeIssuer(name="gl") as gitlab:
        github.add_key("gh-unpublished", "rsa", publish=False)
        yield Issuers(github=github, gitlab=gitlab)


@pytest.fixture(scope="module")
def policy(issuers: Issuers) -> Policy:
    return make_policy(issuers.github.url, issuers.gitlab.url, burst=1000)


@pytest.fixture(scope="module")
def client(policy: Policy) -> Iterator[httpx.Client]:
    """One server for the module; its rate limit is high enough not to interfere."""
    with exchange_client(policy) as c:
        yield c


def gh_token(issuers: Issuers, **over: object) -> str:
    claims = issuers.github.github_claims(audience=AUDIENCE)
    claims.update(over)
    return issuers.github.sign(claims)


def gl_token(issuers: Issuers, **over: object) -> str:
    claims = issuers.gitlab.gitlab_claims(audience=AUDIENCE)
    claims.update(over)
    return issuers.gitlab.sign(claims)


def exchange(
    client: httpx.Client, token: str, body: object = None, *, raw: bytes | None = None
) -> httpx.Response:
    content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    return client.post(
        "/v1/exchange", headers={"Authorization": f"Bearer {token}"}, content=content
    )


def minted_claims(response: httpx.Response) -> dict[str, object]:
    token = response.json()["token"]
    return jwt.decode(token, HS256_SECRET, algorithms=["HS256"])


def decision_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == DECISION_LOGGER]


# --- grants ---------------------------------------------------------------------------


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_default_branch_push_gets_pull_and_push(
    client: httpx.Client, issuers: Issuers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = int(time.time())
    response = exchange(client, gh_token(issuers))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expires_at", "caches", "rule"}
    assert body["rule"] == "gh-publish"
    assert body["caches"] == {"main": "rw"}
    assert before + 1800 <= body["expires_at"] <= int(time.time()) + 1800
    assert response.headers["cache-control"] == "no-store"
    claims = minted_claims(response)
    assert claims["sub"] == "github:octo-org/octo-repo:refs/heads/main:run/123456789/1"
    assert claims[CLAIM_NAMESPACE] == {"caches": {"main": {"r": 1, "w": 1}}}
    assert claims["exp"] == body["expires_at"]
    assert claims["nbf"] == claims["iat"] == body["expires_at"] - 1800 - 30  # backdated
    (record,) = decision_records(caplog)
    assert record["outcome"] == "granted"
    assert record["issuer"] == "github"
    assert record["project"] == "octo-org/octo-repo"
    assert record["ref"] == "refs/heads/main"
    assert record["trigger"] == "push"
    assert record["rule"] == "gh-publish"
    assert record["caches"] == {"main": "rw"}
    assert record["lifetime"] == 1800


GRANTS = [
    pytest.param(
        ("gh", {"event_name": "pull_request", "ref": "refs/pull/3/merge"}),
        None,
        ("gh-pull", {"main": "r"}, 900),
        id="github-pull-request-pulls",
    ),
    pytest.param(
        ("gh", {"ref": "refs/heads/feature"}),
        None,
        ("gh-pull", {"main": "r"}, 900),
        id="github-other-branch-pulls",
    ),
    pytest.param(
        ("gh", {"event_name": "workflow_dispatch"}),
        {"cache": "main", "lifetime": 120},
        ("gh-publish", {"main": "rw"}, 120),
        id="github-dispatch-narrowed",
    ),
    pytest.param(("gh-ec", {}), None, ("gh-publish", {"main": "rw"}, 1800), id="github-es256"),
    pytest.param(("gl", {}), None, ("gl-publish", {"main": "rw"}, 3600), id="gitlab-protected"),
    pytest.param(
        ("gl", {"pipeline_source": "merge_request_event", "ref": "feature"}),
        None,
        ("gl-pull", {"main": "r"}, 3600),
        id="gitlab-merge-request-pulls",
    ),
    pytest.param(
        ("gl", {"ref_protected": "false"}),
        None,
        ("gl-pull", {"main": "r"}, 3600),
        id="gitlab-unprotected-pulls",
    ),
]


@pytest.mark.parametrize(("who", "body", "expected"), GRANTS)
def test_grants(
    client: httpx.Client,
    issuers: Issuers,
    who: tuple[str, dict[str, object]],
    body: object,
    expected: tuple[str, dict[str, str], int],
) -> None:
    ci, over = who
    rule, caches, lifetime = expected
    if ci == "gl":
        token = gl_token(issuers, **over)
    else:
        claims = issuers.github.github_claims(audience=AUDIENCE)
        claims.update(over)
        kid = issuers.github.ec_kid if ci == "gh-ec" else None
        token = issuers.github.sign(claims, kid=kid)
    response = exchange(client, token, body)
    assert response.status_code == 200, response.text
    granted = response.json()
    assert (granted["rule"], granted["caches"]) == (rule, caches)
    minted = minted_claims(response)
    nbf = minted["nbf"]
    assert isinstance(nbf, int)
    assert minted["exp"] == granted["expires_at"]
    assert granted["expires_at"] - (nbf + 30) == lifetime  # nbf is backdated by the leeway


def test_pull_request_under_permissive_rule_gets_no_push(
    client: httpx.Client, issuers: Issuers, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule gh-permissive grants push to every event of repository 777; a PR still pulls only."""
    caplog.set_level(logging.INFO)
    token = gh_token(
        issuers, repository="octo-org/other", repository_id="777", event_name="pull_request"
    )
    response = exchange(client, token, {"cache": "other"})
    assert response.status_code == 200, response.text
    assert response.json()["caches"] == {"other": "r"}
    assert minted_claims(response)[CLAIM_NAMESPACE] == {"caches": {"other": {"r": 1}}}
    (record,) = decision_records(caplog)
    assert (
        record["floor"] == "push removed: event_name 'pull_request' runs pull-request code or input"
    )
    assert record["pull_request"] is not None
    (logged,) = [r for r in caplog.records if r.name == DECISION_LOGGER]
    assert logged.levelno == logging.WARNING  # the floor overrode a rule: worth a look


# --- refusals -------------------------------------------------------------------------


def _hs256_with_public_key(i: Issuers) -> str:
    claims = i.github.github_claims(audience=AUDIENCE)
    header = {"alg": "HS256", "typ": "JWT", "kid": i.github.rsa_kid}
    signing_input = raw_token(header, claims, b"").rsplit(".", 1)[0].encode()
    mac = hmac.new(i.github.public_pem(i.github.rsa_kid), signing_input, hashlib.sha256).digest()
    return raw_token(header, claims, mac)


def _alg_none(i: Issuers) -> str:
    return raw_token({"alg": "none", "typ": "JWT"}, i.github.github_claims(audience=AUDIENCE), b"")


def _wrong_signature(i: Issuers) -> str:
    claims = i.github.github_claims(audience=AUDIENCE)
    return i.github.sign(claims, kid="gh-unpublished", headers={"kid": i.github.rsa_kid})


def _claims(i: Issuers, **over: object) -> str:
    claims = i.github.github_claims(audience=AUDIENCE)
    claims.update(over)
    return i.github.sign(claims)


def _unknown_kid(i: Issuers) -> str:
    return i.github.sign(i.github.github_claims(audience=AUDIENCE), kid="gh-unpublished")


def _gitlab_iss_on_github_key(i: Issuers) -> str:
    return i.gitlab.sign({**i.gitlab.gitlab_claims(audience=AUDIENCE), "iss": i.github.url})


def _gitlab_boolean(i: Issuers) -> str:
    return i.gitlab.sign(i.gitlab.gitlab_claims(audience=AUDIENCE, ref_protected=True))


Case = Callable[[Issuers], tuple[dict[str, str], bytes]]


def bearer(make: Callable[[Issuers], str], body: bytes = b"") -> Case:
    def case(i: Issuers) -> tuple[dict[str, str], bytes]:
        return {"Authorization": f"Bearer {make(i)}"}, body

    return case


def claims_case(body: bytes = b"", **over: object) -> Case:
    """A GitHub token from the trusted issuer with ``over`` claims replaced (times are
    computed when the case runs, so none expires while the table waits)."""

    def case(i: Issuers) -> tuple[dict[str, str], bytes]:
        now = int(time.time())
        values = {
            k: (now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v)
            for k, v in over.items()
        }
        return {"Authorization": f"Bearer {_claims(i, **values)}"}, body

    return case


REFUSALS = [
    pytest.param(bearer(_wrong_signature), (401, "bad_signature"), id="wrong-signature"),
    pytest.param(bearer(_unknown_kid), (401, "unknown_key"), id="unknown-kid"),
    pytest.param(
        claims_case(iss="https://token.example.com"), (401, "untrusted_issuer"), id="wrong-issuer"
    ),
    pytest.param(bearer(_gitlab_iss_on_github_key), (401, "unknown_key"), id="other-issuers-key"),
    pytest.param(
        claims_case(aud="https://github.com/octo-org"), (401, "wrong_audience"), id="wrong-audience"
    ),
    pytest.param(claims_case(exp=-60), (401, "expired"), id="expired"),
    pytest.param(claims_case(nbf=120), (401, "not_yet_valid"), id="not-yet-valid"),
    pytest.param(claims_case(iat=120), (401, "issued_in_future"), id="iat-in-future"),
    pytest.param(bearer(_alg_none), (401, "unsupported_algorithm"), id="alg-none"),
    pytest.param(
        bearer(_hs256_with_public_key),
        (401, "unsupported_algorithm"),
        id="hs256-with-issuer-public-key",
    ),
    pytest.param(bearer(lambda i: "e" * 20_000), (413, "token_too_large"), id="oversized-token"),
    pytest.param(
        claims_case(b'{"cache": "' + b"x" * 8192 + b'"}'),
        (413, "body_too_large"),
        id="oversized-body",
    ),
    pytest.param(claims_case(repository=4242), (401, "claim_type"), id="claim-wrong-type-number"),
    pytest.param(
        bearer(_gitlab_boolean), (401, "claim_type"), id="claim-wrong-type-gitlab-boolean"
    ),
    pytest.param(
        claims_case(repository="someone/else", repository_id="1"),
        (403, "no_matching_rule"),
        id="no-matching-rule",
    ),
    pytest.param(
        claims_case(b'{"cache": "push-only"}', repository_id="777", event_name="pull_request"),
        (403, "pull_request_cannot_push"),
        id="pull-request-asks-push-only-cache",
    ),
    pytest.param(
        claims_case(b'{"cache": "elsewhere"}'), (403, "cache_not_granted"), id="cache-not-granted"
    ),
    pytest.param(claims_case(b"cache=main"), (400, "bad_request"), id="body-not-json"),
    pytest.param(bearer(lambda i: "not.a.jwt"), (401, "malformed_token"), id="malformed-token"),
    pytest.param(lambda i: ({}, b""), (401, "missing_token"), id="no-authorization"),
    pytest.param(
        lambda i: ({"Authorization": "Basic dXNlcjpwYXNz"}, b""),
        (401, "missing_token"),
        id="basic-auth",
    ),
]


@pytest.mark.parametrize(("case", "expected"), REFUSALS)
def test_refusals(
    client: httpx.Client,
    issuers: Issuers,
    caplog: pytest.LogCaptureFixture,
    case: Case,
    expected: tuple[int, str],
) -> None:
    status, code = expected
    caplog.set_level(logging.INFO)
    headers, body = case(issuers)
    response = client.post("/v1/exchange", headers=headers, content=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error", "message"}
    assert payload["error"] == code
    assert len(payload["message"]) > 20
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    (record,) = decision_records(caplog)
    assert (record["outcome"], record["status"], record["code"]) == ("refused", status, code)
    token = headers.get("Authorization", "").removeprefix("Bearer ")
    for part in token.split("."):
        if len(part) > 8:
            assert part not in caplog.text


def test_rate_limit_per_repository(issuers: Issuers, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    policy = make_policy(issuers.github.url, issuers.gitlab.url, burst=2)
    with exchange_client(policy) as client:
        assert exchange(client, gh_token(issuers)).status_code == 200
        assert exchange(client, gh_token(issuers, event_name="pull_request")).status_code == 200
        limited = exchange(client, gh_token(issuers, ref="refs/heads/other"))
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Another repository (and another CI) has its own bucket.
        assert exchange(client, gl_token(issuers)).status_code == 200
    assert [r["status"] for r in decision_records(caplog)] == [200, 200, 429, 200]


def test_a_key_rotated_in_after_start_is_fetched(issuers: Issuers, policy: Policy) -> None:
    with exchange_client(policy, refetch_interval=0.0) as client:
        assert exchange(client, gh_token(issuers)).status_code == 200
        issuers.github.add_key("gh-rotated", "ec")
        try:
            claims = issuers.github.github_claims(audience=AUDIENCE)
            token = issuers.github.sign(claims, kid="gh-rotated")
            assert exchange(client, token).status_code == 200
        finally:
            issuers.github.published.discard("gh-rotated")


# --- the Attic double accepts exactly what was granted ---------------------------------


def _attic_calls(double: AtticDouble, token: str) -> tuple[int, int]:
    with httpx.Client(
        base_url=double.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as attic:
        config = attic.get("/_api/v1/cache-config/main")
        missing = attic.post(
            "/_api/v1/get-missing-paths", json={"cache": "main", "store_path_hashes": []}
        )
    return config.status_code, missing.status_code


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        pytest.param({}, (200, 200), id="push-grant-pulls-and-pushes"),
        pytest.param({"event_name": "pull_request"}, (200, 403), id="pull-grant-only-pulls"),
    ],
)
def test_hs256_tokens_work_on_attic_with_exactly_the_grant(
    client: httpx.Client, issuers: Issuers, over: dict[str, object], expected: tuple[int, int]
) -> None:
    with AtticDouble(token_secret=HS256_SECRET) as double:
        double.create_cache("main")
        double.create_cache("other")
        response = exchange(client, gh_token(issuers, **over))
        assert response.status_code == 200, response.text
        minted = response.json()["token"]
        assert _attic_calls(double, minted) == expected
        with httpx.Client(base_url=double.url, timeout=10) as attic:
            other = attic.get(
                "/_api/v1/cache-config/other", headers={"Authorization": f"Bearer {minted}"}
            )
        assert other.status_code == 401  # not granted at all: attic hides the cache


def test_rs256_tokens_work_on_attic_with_exactly_the_grant(
    policy: Policy, issuers: Issuers
) -> None:
    private, public = rsa_pem()
    signer = load_signer(
        algorithm=None,
        secret_file=None,
        env={"ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64": b64(private)},
    )
    with (
        AtticDouble(token_rs256_public_pem=public) as double,
        exchange_client(policy, signer) as client,
    ):
        double.create_cache("main")
        push = exchange(client, gh_token(issuers)).json()["token"]
        pull = exchange(client, gh_token(issuers, event_name="pull_request")).json()["token"]
        assert jwt.get_unverified_header(push)["alg"] == "RS256"
        assert _attic_calls(double, push) == (200, 200)
        assert _attic_calls(double, pull) == (200, 403)


# --- no token in any log ----------------------------------------------------------------


def test_no_token_or_part_of_one_is_logged(
    client: httpx.Client, issuers: Issuers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent: list[str] = []
    minted: list[str] = []
    for over in ({}, {"event_name": "pull_request"}, {"repository_id": "1"}, {"aud": "x"}):
        token = gh_token(issuers, **over)
        sent.append(token)
        response = exchange(client, token)
        if response.status_code == 200:
            minted.append(response.json()["token"])
    sent.append(gl_token(issuers))
    minted.append(exchange(client, sent[-1]).json()["token"])
    assert len(minted) == 3
    assert len(decision_records(caplog)) == 5
    text = caplog.text
    for token in sent + minted:
        assert token not in text
        for part in token.split("."):
            assert part not in text


def test_an_internal_error_is_a_500_with_one_decision_line(
    policy: Policy, issuers: Issuers, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock unavailable")

    caplog.set_level(logging.INFO)
    with exchange_client(policy, clock=broken_clock) as client:
        token = gh_token(issuers)
        response = exchange(client, token)
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    (record,) = decision_records(caplog)
    assert (record["outcome"], record["reason"]) == ("error", "RuntimeError")
    for part in token.split("."):
        assert part not in caplog.text
