"""Reading a token's claimed push permission (advisory): atticd's lookup rules, never a crash."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nix_job.core.token_scope import CLAIM, can_push


def jwt(claims: object) -> str:
    def part(value: object) -> str:
        raw = json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def caches(mapping: object) -> str:
    return jwt({"sub": "ci", CLAIM: {"caches": mapping}})


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(caches({"main": {"r": 1, "w": 1}}), True, id="exact-push"),
        pytest.param(caches({"main": {"r": 1}}), False, id="exact-pull-only"),
        pytest.param(caches({"other": {"w": 1}}), False, id="other-cache"),
        pytest.param(caches({"ma*": {"w": 1}}), True, id="wildcard-push"),
        pytest.param(caches({"*": {"r": 1}, "ma*": {"w": 1}}), False, id="first-pattern-wins"),
        pytest.param(caches({"*": {"w": 1}, "main": {"r": 1}}), False, id="exact-beats-pattern"),
        pytest.param(caches({"main": {"w": True}}), False, id="boolean-is-not-attic-format"),
        pytest.param(caches({"main": "rw"}), None, id="malformed-perms-unknown"),
        pytest.param(jwt({"sub": "ci"}), None, id="no-attic-claim-unknown"),
        pytest.param("not-a-jwt", None, id="not-a-jwt-unknown"),
        pytest.param("a.!!!.c", None, id="bad-base64-unknown"),
        pytest.param("a.bnVsbA.c", None, id="json-null-unknown"),
    ],
)
def test_claimed_push_permission(token: str, expected: bool | None) -> None:
    assert can_push(token, "main") is expected


@given(st.text(max_size=200))
def test_any_text_gives_an_answer_never_an_exception(token: str) -> None:
    assert can_push(token, "main") in (True, False, None)
