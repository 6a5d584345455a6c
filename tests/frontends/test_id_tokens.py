"""The job's OIDC ID token, per CI: GitHub's request (audience, bearer, retries, a missing
permission, never the request token in a message or log line), GitLab's declared variable, none
elsewhere; and the entrypoint takes both credentials out of the process environment."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import httpx
import pytest

from nix_job import __main__ as entry
from nix_job import frontends
from nix_job.core.errors import IdTokenError
from nix_job.core.secret import Secret
from nix_job.frontends.generic import GenericFrontend
from nix_job.frontends.github.frontend import GitHubFrontend
from nix_job.frontends.github.oidc import REQUEST_TOKEN_ENV, id_token_url, request_id_token
from nix_job.frontends.gitlab.frontend import ID_TOKEN_ENV, GitLabFrontend
from nix_job.process import scrubbed_env

REQUEST_URL = "https://pipelines.example/abc/idtoken?api-version=2.0"
REQUEST_TOKEN = "ghs-runtime-request-token-0123456789"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL3gifQ.signature-of-the-id-token"


def endpoint(*answers: httpx.Response) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def ask(http: httpx.Client, slept: list[float] | None = None) -> Secret:
    return request_id_token(
        url=REQUEST_URL,
        request_token=Secret(REQUEST_TOKEN),
        audience="https://attic-exchange.example.com",
        http=http,
        sleep=(slept if slept is not None else []).append,
    )


def refused(http: httpx.Client, slept: list[float] | None = None) -> IdTokenError:
    with pytest.raises(IdTokenError) as info:
        ask(http, slept)
    assert REQUEST_TOKEN not in info.value.message
    return info.value


def test_the_audience_is_appended_encoded_and_the_request_token_is_the_bearer() -> None:
    http, seen = endpoint(httpx.Response(200, json={"count": 1, "value": ID_TOKEN}))
    assert ask(http).reveal() == ID_TOKEN
    (request,) = seen
    assert str(request.url) == (REQUEST_URL + "&audience=https%3A%2F%2Fattic-exchange.example.com")
    assert request.headers["authorization"] == f"Bearer {REQUEST_TOKEN}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "https://h/x?api-version=2.0", "https://h/x?api-version=2.0&audience=a%20b", id="query"
        ),
        pytest.param("https://h/x", "https://h/x?audience=a%20b", id="no-query"),
    ],
)
def test_id_token_url(url: str, expected: str) -> None:
    assert id_token_url(url, "a b") == expected


@pytest.mark.parametrize(
    ("answer", "says", "attempts"),
    [
        pytest.param(httpx.Response(401, text="Unauthorized"), "id-token: write", 1, id="401"),
        pytest.param(
            httpx.Response(403, text=f"bad token {REQUEST_TOKEN}"),
            "HTTP 403 (bad token ***)",
            1,
            id="403-echoes",
        ),
        pytest.param(httpx.Response(500, text="oops"), "re-run the job later", 3, id="500-retried"),
        pytest.param(
            httpx.Response(200, json={"count": 0}), "without an ID token", 1, id="no-value"
        ),
        pytest.param(httpx.Response(200, text="<html>"), "without an ID token", 1, id="not-json"),
    ],
)
def test_failed_requests_say_what_to_do(answer: httpx.Response, says: str, attempts: int) -> None:
    http, seen = endpoint(answer)
    slept: list[float] = []
    error = refused(http, slept)
    assert says in error.message
    assert len(seen) == attempts
    assert slept == [1.0, 2.0][: attempts - 1]


def test_a_timeout_is_retried_then_explained() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    http = httpx.Client(transport=httpx.MockTransport(handler))
    assert "timed out (ReadTimeout)" in refused(http).message


def github(tmp_path: Path, **env: str) -> tuple[GitHubFrontend, io.StringIO, list[str]]:
    stream, audiences = io.StringIO(), []

    def request(url: str, token: Secret, audience: str) -> Secret:
        assert (url, token.reveal()) == (REQUEST_URL, REQUEST_TOKEN)
        audiences.append(audience)
        return Secret(ID_TOKEN)

    front = GitHubFrontend(
        {"GITHUB_ACTIONS": "true", "RUNNER_TEMP": str(tmp_path), **env},
        stream=stream,
        id_token_request=Secret(REQUEST_TOKEN) if REQUEST_TOKEN_ENV not in env else None,
        request_id_token=request,
    )
    return front, stream, audiences


def test_github_masks_the_request_token_and_every_id_token(tmp_path: Path) -> None:
    front, stream, audiences = github(tmp_path, ACTIONS_ID_TOKEN_REQUEST_URL=REQUEST_URL)
    assert front.id_token("aud-1").reveal() == ID_TOKEN
    lines = stream.getvalue().splitlines()
    assert f"::add-mask::{REQUEST_TOKEN}" in lines
    assert f"::add-mask::{ID_TOKEN}" in lines
    assert audiences == ["aud-1"]


def test_a_mask_from_another_thread_starts_on_a_fresh_line(tmp_path: Path) -> None:
    """The command may be mid-line on the same stdout when a renewal masks a new token."""
    front, stream, _ = github(tmp_path)
    stream.write("progress 42%")  # the command, without a newline
    worker = threading.Thread(target=front.mask, args=(Secret("renewed-token"),))
    worker.start()
    worker.join()
    assert "::add-mask::renewed-token" in stream.getvalue().splitlines()


@pytest.mark.parametrize(
    ("env", "fork", "missing"),
    [
        pytest.param({}, False, "ACTIONS_ID_TOKEN_REQUEST_URL not set", id="no-permission"),
        pytest.param(
            {"ACTIONS_ID_TOKEN_REQUEST_URL": REQUEST_URL, REQUEST_TOKEN_ENV: "x"},
            False,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN not set",
            id="no-request-token",
        ),
    ],
)
def test_github_without_the_permission_says_to_add_it(
    tmp_path: Path, env: dict[str, str], fork: bool, missing: str
) -> None:
    front, _, _ = github(tmp_path, **env)
    with pytest.raises(IdTokenError) as info:
        front.id_token("aud")
    assert missing in info.value.message
    assert "`permissions: id-token: write`" in info.value.message
    assert "forks never get one" in info.value.message
    assert info.value.expected is fork


def test_a_fork_pull_request_expects_no_id_token(tmp_path: Path) -> None:
    payload = tmp_path / "event.json"
    payload.write_text(
        '{"pull_request": {"head": {"repo": {"full_name": "x/y", "fork": true}}, '
        '"base": {"repo": {"full_name": "a/b"}}}}'
    )
    front, _, _ = github(
        tmp_path,
        GITHUB_EVENT_NAME="pull_request",
        GITHUB_EVENT_PATH=str(payload),
        **{REQUEST_TOKEN_ENV: "unset"},
    )
    with pytest.raises(IdTokenError) as info:
        front.id_token("aud")
    assert info.value.expected is True


def test_gitlab_hands_over_the_declared_id_token_and_never_prints_it(tmp_path: Path) -> None:
    stream = io.StringIO()
    front = GitLabFrontend(
        {"GITLAB_CI": "true", "CI_PROJECT_DIR": str(tmp_path)},
        stream=stream,
        id_token=Secret(ID_TOKEN),
    )
    assert front.id_token("ignored: GitLab fixed the audience").reveal() == ID_TOKEN
    front.log(f"echo {ID_TOKEN}")
    assert ID_TOKEN not in stream.getvalue()


def test_gitlab_without_id_tokens_says_how_to_declare_it(tmp_path: Path) -> None:
    front = GitLabFrontend({"GITLAB_CI": "true"}, stream=io.StringIO(), cwd=tmp_path)
    with pytest.raises(IdTokenError) as info:
        front.id_token("https://attic-exchange.example.com")
    assert "`id_tokens: NIX_JOB_ID_TOKEN: {aud: https://attic-exchange.example.com}`" in (
        info.value.message
    )


def test_no_ci_no_identity(tmp_path: Path) -> None:
    front = GenericFrontend(publish=False, cwd=tmp_path, run_id="x", stream=io.StringIO())
    with pytest.raises(IdTokenError, match="give ATTIC_TOKEN instead"):
        front.id_token("aud")


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        pytest.param({"GITHUB_ACTIONS": "true"}, GitHubFrontend, id="github"),
        pytest.param({"GITLAB_CI": "true"}, GitLabFrontend, id="gitlab"),
    ],
)
def test_select_hands_each_front_end_its_credential(
    tmp_path: Path, env: dict[str, str], kind: type
) -> None:
    secrets = {REQUEST_TOKEN_ENV: REQUEST_TOKEN, ID_TOKEN_ENV: ID_TOKEN}
    env = {**env, "ACTIONS_ID_TOKEN_REQUEST_URL": REQUEST_URL, "RUNNER_TEMP": str(tmp_path)}
    front = frontends.select(
        env, github_token=None, publish=False, summary_file=None, cwd=tmp_path, secrets=secrets
    )
    assert isinstance(front, kind)
    if isinstance(front, GitLabFrontend):
        assert front.id_token("a").reveal() == ID_TOKEN
    else:
        assert isinstance(front, GitHubFrontend)
        assert front._id_token_request == Secret(REQUEST_TOKEN)


def test_both_credentials_leave_the_process_environment_and_every_child() -> None:
    assert REQUEST_TOKEN_ENV in entry.SECRET_ENVS
    assert ID_TOKEN_ENV in entry.SECRET_ENVS
    env = {
        REQUEST_TOKEN_ENV: "x",
        "ACTIONS_ID_TOKEN_REQUEST_URL": "y",
        ID_TOKEN_ENV: "z",
        "ACTIONS_RUNTIME_URL": "kept",
    }
    assert scrubbed_env(env) == {"ACTIONS_RUNTIME_URL": "kept"}


def test_nothing_secret_is_logged_while_requesting(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    http, _ = endpoint(httpx.Response(503, text="x"), httpx.Response(200, json={"value": ID_TOKEN}))
    ask(http)
    assert REQUEST_TOKEN not in caplog.text
    assert ID_TOKEN not in caplog.text
