"""What Attic's error answers mean (nix_job.cache.answers): throttling and Retry-After."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from nix_job.cache.answers import MAX_RETRY_AFTER_S, AtticUnavailableError, error_for, retry_after_s

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(" 0 ", 0.0, id="zero"),
        pytest.param("99999", MAX_RETRY_AFTER_S, id="capped"),
        pytest.param(email.utils.formatdate(NOW + 30, usegmt=True), 30.0, id="http-date"),
        pytest.param(email.utils.formatdate(NOW - 30, usegmt=True), 0.0, id="date-in-the-past"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("-5", None, id="negative"),
    ],
)
def test_retry_after_is_read_as_seconds_or_a_date(
    header: str | None, expected: float | None
) -> None:
    assert retry_after_s(header, now=NOW) == expected


def _answer(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("PUT", "https://cache.example/_api/v1/upload-path")
    return httpx.Response(status, headers=headers, text="slow down", request=request)


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_answers_are_retried_after_what_the_server_asked(status: int) -> None:
    error = error_for(
        _answer(status, {"Retry-After": "3"}),
        "uploading x",
        endpoint="https://cache.example/",
        cache="demo",
        has_token=True,
    )
    assert isinstance(error, AtticUnavailableError)
    assert error.throttled
    assert error.retry_after_s == 3.0
    assert "after the 3 s it asked for" in error.message


def test_a_throttling_answer_without_retry_after_uses_the_backoff() -> None:
    error = error_for(
        _answer(429), "x", endpoint="https://cache.example/", cache="demo", has_token=True
    )
    assert isinstance(error, AtticUnavailableError)
    assert error.retry_after_s is None
    assert "with a backoff" in error.message


def test_other_server_errors_are_retried_but_are_not_throttling() -> None:
    error = error_for(
        _answer(502), "x", endpoint="https://cache.example/", cache="demo", has_token=True
    )
    assert isinstance(error, AtticUnavailableError)
    assert not error.throttled
