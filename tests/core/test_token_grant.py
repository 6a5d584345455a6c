"""What the exchange granted, when to renew it, and what its refusals mean (core/token_grant)."""

from __future__ import annotations

from typing import get_args

import pytest

from nix_job.core.token_grant import (
    RETRIABLE,
    Grant,
    parse_grant,
    refusal_text,
    renewal_delay,
)
from nix_job.exchange.errors import STATUS, RefusalCode

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


def answer(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "token": TOKEN,
        "expires_at": 1_000_900,
        "caches": {"main": "rw"},
        "rule": "gh-publish",
    }
    data.update(changes)
    return data


def test_a_grant_is_read_with_its_lifetime_on_the_services_clock() -> None:
    grant = parse_grant(answer(), now=1_000_000)
    assert isinstance(grant, Grant)
    assert grant.token.reveal() == TOKEN
    assert grant.lifetime_s == 900
    assert grant.rule == "gh-publish"
    assert grant.describe("main") == "cache `main`: pull and push for 15 min (rule `gh-publish`)"
    assert TOKEN not in repr(grant)
    assert TOKEN not in str(grant)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param([], "not a JSON object", id="a-list"),
        pytest.param(answer(token=""), "`token` is missing", id="empty-token"),
        pytest.param(answer(token=None), "`token` is missing", id="no-token"),
        pytest.param(answer(token="a b.c"), "characters a JWT cannot have", id="space-in-token"),
        pytest.param(answer(token="x" * 20000), "`token` is missing", id="huge-token"),
        pytest.param(answer(expires_at="1000"), "`expires_at`", id="expiry-as-text"),
        pytest.param(answer(expires_at=True), "`expires_at`", id="expiry-as-bool"),
        pytest.param(answer(caches={"main": "rwx"}), "`caches`", id="unknown-permission"),
        pytest.param(answer(caches=["main"]), "`caches`", id="caches-as-list"),
        pytest.param(answer(rule=""), "`rule`", id="no-rule"),
    ],
)
def test_a_malformed_answer_says_what_is_wrong_without_the_token(data: object, why: str) -> None:
    problem = parse_grant(data, now=0)
    assert isinstance(problem, str)
    assert why in problem
    assert TOKEN not in problem


def test_an_expiry_in_the_past_is_a_zero_lifetime() -> None:
    grant = parse_grant(answer(expires_at=10), now=100)
    assert isinstance(grant, Grant)
    assert grant.lifetime_s == 0


@pytest.mark.parametrize(
    ("caches", "cache", "letters", "push"),
    [
        pytest.param({"main": "rw"}, "main", "rw", True, id="exact"),
        pytest.param({"main": "r"}, "main", "r", False, id="pull-only"),
        pytest.param({"main": "r"}, "other", "", False, id="not-named"),
        pytest.param({"team-*": "rw"}, "team-a", "rw", True, id="pattern"),
        pytest.param({"*": "r", "main": "rw"}, "main", "rw", True, id="exact-wins-over-pattern"),
        pytest.param({"ma*": "r", "m*": "rw"}, "main", "r", False, id="first-pattern-wins"),
    ],
)
def test_permissions_follow_atticds_lookup(
    caches: dict[str, str], cache: str, letters: str, push: bool
) -> None:
    grant = parse_grant(answer(caches=caches), now=1_000_000)
    assert isinstance(grant, Grant)
    assert grant.permissions(cache) == letters
    assert grant.can_push(cache) is push


@pytest.mark.parametrize(
    ("lifetime", "failures", "left", "floor", "expected"),
    [
        pytest.param(3600, 0, 3600, 20, 2400, id="two-thirds-of-an-hour"),
        pytest.param(60, 0, 60, 20, 40, id="two-thirds-of-a-minute"),
        pytest.param(6, 0, 6, 20, 4, id="a-few-seconds-lifetime-under-the-floor"),
        pytest.param(0, 0, 0, 20, 1, id="a-zero-lifetime-at-most-once-a-second"),
        pytest.param(3600, 1, 1200, 20, 20, id="first-retry-at-the-floor"),
        pytest.param(3600, 1, 1200, 1, 5, id="first-retry-after-5-s"),
        pytest.param(3600, 3, 1200, 1, 20, id="backoff-doubles"),
        pytest.param(3600, 9, 1200, 1, 60, id="backoff-capped-at-a-minute"),
        pytest.param(60, 4, 16, 1, 8, id="never-later-than-half-the-time-left"),
        pytest.param(60, 4, 0, 1, 1, id="expired-retries-once-a-second"),
        pytest.param(6, 2, 1, 20, 2, id="a-short-lifetime-retries-at-a-third-of-it"),
    ],
)
def test_renewal_delay(
    lifetime: float, failures: int, left: float, floor: float, expected: float
) -> None:
    got = renewal_delay(lifetime_s=lifetime, failures=failures, left_s=left, floor_s=floor)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("code", get_args(RefusalCode))
def test_every_refusal_code_of_the_service_has_advice(code: RefusalCode) -> None:
    text = refusal_text(status=STATUS[code], code=code, message="server says", claims=None)
    assert f"HTTP {STATUS[code]}, {code}: server says" in text
    assert "check the service's log" not in text, f"{code} has no advice of its own"


@pytest.mark.parametrize(
    ("code", "claims", "shown"),
    [
        pytest.param(
            "wrong_audience",
            {"aud": "https://github.com/octo-org", "iss": "https://issuer"},
            "the ID token's `aud` is 'https://github.com/octo-org'",
            id="audience",
        ),
        pytest.param(
            "untrusted_issuer",
            {"iss": "https://gitlab.example.com"},
            "the ID token's `iss` is 'https://gitlab.example.com'",
            id="issuer",
        ),
    ],
)
def test_the_id_tokens_own_claims_name_what_to_fix(
    code: str, claims: dict[str, object], shown: str
) -> None:
    assert shown in refusal_text(status=401, code=code, message="", claims=claims)


@pytest.mark.parametrize(
    ("status", "says"),
    [
        pytest.param(404, "root URL", id="not-found"),
        pytest.param(502, "check the service's log", id="bad-gateway"),
    ],
)
def test_answers_that_are_not_the_services_say_where_to_look(status: int, says: str) -> None:
    assert says in refusal_text(status=status, code=None, message="<html>", claims=None)


def test_retriable_refusals_are_codes_of_the_service() -> None:
    assert set(RETRIABLE) - {"internal_error"} <= set(get_args(RefusalCode))
