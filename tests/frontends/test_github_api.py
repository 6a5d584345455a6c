"""The API fallback for the default branch, against a GitHub API double on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nix_job.core.decision import GateInputs
from nix_job.core.secret import Secret
from nix_job.frontends.github.api import (
    DefaultBranchLookup,
    fetch_default_branch,
    resolve_default_branch,
)
from nix_job.frontends.github.event import EventContext, read_event
from nix_job.frontends.github.gate import decide_publish
from tests.serving import Serving

TOKEN = "ghs_fake_token_8f3a1c"


@dataclass(slots=True, kw_only=True)
class Reply:
    status: int = 200
    body: object = field(default_factory=lambda: {"default_branch": "trunk"})
    location: str | None = None
    raw: bytes | None = None
    # Set while the handler should hang (a slow API); released at teardown.
    hang: threading.Event | None = None


@dataclass(slots=True)
class ApiDouble:
    url: str
    replies: dict[str, Reply] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[ApiDouble]:
    double = ApiDouble(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            double.requests.append((self.path, dict(self.headers.items())))
            reply = double.replies.get(self.path, Reply(status=404, body={"message": "Not Found"}))
            if reply.hang is not None:
                reply.hang.wait(30)
                return  # the client gave up long ago; answer nothing
            if reply.raw is not None:
                data = reply.raw
            elif isinstance(reply.body, str):
                data = reply.body.replace("{auth}", self.headers.get("Authorization", "")).encode()
            else:
                data = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if reply.location is not None:
                self.send_header("Location", reply.location)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    serving = Serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler), name="github-api")
    double.url = f"http://127.0.0.1:{serving.port}"
    try:
        yield double
    finally:
        for reply in double.replies.values():
            if reply.hang is not None:
                reply.hang.set()
        serving.stop()


def lookup(
    api_url: str, *, repository: str = "acme/app", timeout_s: float = 5
) -> DefaultBranchLookup:
    return fetch_default_branch(
        token=Secret(TOKEN), api_url=api_url, repository=repository, timeout_s=timeout_s
    )


def test_the_default_branch_comes_from_get_repos_with_the_token(api: ApiDouble) -> None:
    api.replies["/repos/acme/app"] = Reply(
        body={"full_name": "acme/app", "default_branch": "trunk"}
    )

    result = lookup(api.url)

    assert result == DefaultBranchLookup(branch="trunk", error=None)
    assert [path for path, _ in api.requests] == ["/repos/acme/app"]
    headers = {name.lower(): value for name, value in api.requests[0][1].items()}
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["x-github-api-version"] == "2022-11-28"


def test_a_ghes_api_prefix_and_trailing_slash_are_kept(api: ApiDouble) -> None:
    api.replies["/api/v3/repos/acme/app"] = Reply(body={"default_branch": "main"})

    result = lookup(api.url + "/api/v3/")

    assert result.branch == "main"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("reply", "error_has"),
    [
        pytest.param(
            Reply(status=404, body={"message": "Not Found"}),
            "returned HTTP 404: the repository was not found",
            id="404-not-found",
        ),
        pytest.param(
            Reply(status=401, body={"message": "Bad credentials"}),
            "returned HTTP 401: the github-token was refused",
            id="401-bad-credentials",
        ),
        pytest.param(
            Reply(status=403, body={"message": "Resource not accessible by integration"}),
            "returned HTTP 403",
            id="403-forbidden",
        ),
        pytest.param(
            Reply(status=500, body={"message": "boom"}),
            "returned HTTP 500: the GitHub API had a problem",
            id="500-server-error",
        ),
        pytest.param(
            Reply(status=502, body='{"message": "echo {auth}"}'),
            "returned HTTP 502",
            id="error-body-echoing-the-token",
        ),
        pytest.param(
            Reply(body={"full_name": "acme/app"}),
            "gave no usable default_branch (None)",
            id="reply-without-default-branch",
        ),
        pytest.param(
            Reply(body={"default_branch": 7}),
            "gave a reply that is not a repository",
            id="default-branch-not-a-string",
        ),
        pytest.param(
            Reply(raw=b"<html>not json</html>"),
            "GET ",
            id="reply-not-json",
        ),
        pytest.param(
            Reply(raw=f'{{"message": "{TOKEN}" '.encode()),
            "GET ",
            id="broken-json-containing-the-token",
        ),
    ],
)
def test_api_errors_give_no_branch_and_a_reason(
    api: ApiDouble,
    reply: Reply,
    error_has: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api.replies["/repos/acme/app"] = reply

    result = lookup(api.url)

    assert result.branch is None
    assert result.error is not None
    assert error_has in result.error
    assert TOKEN not in result.error
    out, err = capfd.readouterr()
    assert TOKEN not in out + err + caplog.text


def test_a_redirect_to_another_host_is_refused_so_the_token_stays_home(api: ApiDouble) -> None:
    api.replies["/repos/acme/app"] = Reply(
        status=301, body={}, location=f"http://localhost:{closed_port()}/repos/acme/app"
    )

    result = lookup(api.url)

    assert result.branch is None
    assert result.error is not None
    assert "redirected from host 127.0.0.1 to localhost" in result.error
    assert TOKEN not in result.error


def test_connection_refused_gives_no_branch_and_a_reason(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    result = lookup(f"http://127.0.0.1:{closed_port()}")

    assert result.branch is None
    assert result.error is not None
    assert "Connection refused" in result.error
    assert "check GITHUB_API_URL" in result.error
    out, err = capfd.readouterr()
    assert TOKEN not in out + err + caplog.text + result.error


def test_a_hanging_api_times_out_with_a_reason(api: ApiDouble) -> None:
    api.replies["/repos/acme/app"] = Reply(hang=threading.Event())

    result = lookup(api.url, timeout_s=0.2)

    assert result.branch is None
    assert result.error is not None
    assert "timed out" in result.error


@pytest.mark.parametrize(
    ("api_url", "repository", "token", "error_has"),
    [
        pytest.param("", "acme/app", TOKEN, "is not an http(s) URL", id="empty-api-url"),
        pytest.param("ftp://x", "acme/app", TOKEN, "is not an http(s) URL", id="ftp-api-url"),
        pytest.param(
            "http://127.0.0.1:99999", "acme/app", TOKEN, "is not an http(s) URL", id="bad-port"
        ),
        pytest.param("http://127.0.0.1:9", "", TOKEN, "is not `owner/name`", id="no-repository"),
        pytest.param(
            "http://127.0.0.1:9", "acme/app/../x", TOKEN, "is not `owner/name`", id="path-tricks"
        ),
        pytest.param("http://127.0.0.1:9", "acme/app", "", "no github-token", id="empty-token"),
    ],
)
def test_unusable_arguments_give_a_reason_without_any_request(
    api_url: str, repository: str, token: str, error_has: str
) -> None:
    result = fetch_default_branch(token=Secret(token), api_url=api_url, repository=repository)

    assert result.branch is None
    assert result.error is not None
    assert error_has in result.error


# --- resolve_default_branch: when to ask, and what is recorded --------------------------------


@dataclass(slots=True)
class FakeFetch:
    result: DefaultBranchLookup
    calls: int = 0

    def __call__(self) -> DefaultBranchLookup:
        self.calls += 1
        return self.result


def push_event(payload: object) -> EventContext:
    env = {"GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/trunk"}
    return read_event(env, json.dumps(payload).encode())


NO_BRANCH = {"repository": {"full_name": "acme/app"}}


def test_a_branch_from_the_payload_is_kept_without_asking() -> None:
    fetch = FakeFetch(DefaultBranchLookup(branch="other", error=None))
    event = push_event({"repository": {"default_branch": "trunk"}})

    resolved = resolve_default_branch(event, fetch)

    assert resolved == event
    assert resolved.default_branch_source == "payload"
    assert fetch.calls == 0


def test_a_missing_branch_is_asked_for_and_marked_as_from_the_api() -> None:
    fetch = FakeFetch(DefaultBranchLookup(branch="trunk", error=None))

    resolved = resolve_default_branch(push_event(NO_BRANCH), fetch)

    assert fetch.calls == 1
    assert resolved.default_branch == "trunk"
    assert resolved.default_branch_source == "api"
    assert resolved.lookup_error is None


def test_a_failed_lookup_is_recorded_for_the_gate_to_explain() -> None:
    fetch = FakeFetch(DefaultBranchLookup(branch=None, error="GET ... returned HTTP 404"))

    resolved = resolve_default_branch(push_event(NO_BRANCH), fetch)
    decision = decide_publish(
        event=resolved,
        gate=GateInputs(
            push_cache=True,
            token_present=True,
            cache_attached=True,
        ),
    )

    assert resolved.default_branch is None
    assert resolved.lookup_error == "GET ... returned HTTP 404"
    assert not decision.allowed
    assert "the GitHub API lookup failed: GET ... returned HTTP 404" in decision.reason


def test_without_a_fetch_the_event_is_unchanged() -> None:
    event = push_event(NO_BRANCH)

    assert resolve_default_branch(event, None) == event


@pytest.mark.parametrize(
    "event_name",
    [
        pytest.param("pull_request", id="pull-request"),
        pytest.param("pull_request_target", id="pull-request-target"),
        pytest.param("release", id="release"),
        pytest.param("", id="unknown-event"),
    ],
)
def test_events_that_never_publish_cost_no_api_call(event_name: str) -> None:
    fetch = FakeFetch(DefaultBranchLookup(branch="trunk", error=None))
    event = replace(push_event(NO_BRANCH), event_name=event_name)

    resolved = resolve_default_branch(event, fetch)

    assert fetch.calls == 0
    assert resolved.default_branch is None


def test_a_fetch_that_raises_is_recorded_not_propagated() -> None:
    def broken() -> DefaultBranchLookup:
        raise RuntimeError(TOKEN)

    resolved = resolve_default_branch(push_event(NO_BRANCH), broken)

    assert resolved.default_branch is None
    assert resolved.lookup_error == "the lookup raised RuntimeError"


def test_api_lookup_end_to_end_lets_a_push_publish(api: ApiDouble) -> None:
    api.replies["/repos/acme/app"] = Reply(body={"default_branch": "trunk"})
    fetch: Callable[[], DefaultBranchLookup] = lambda: lookup(api.url)  # noqa: E731

    resolved = resolve_default_branch(push_event(NO_BRANCH), fetch)
    decision = decide_publish(
        event=resolved,
        gate=GateInputs(
            push_cache=True,
            token_present=True,
            cache_attached=True,
        ),
    )

    assert decision.allowed
    assert "from the GitHub API" in decision.reason
