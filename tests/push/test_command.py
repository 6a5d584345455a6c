"""push_command: ``python -m nix_job push`` arguments, exit codes and report."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nix_job.args import USAGE_EXIT, UsageError
from nix_job.push.command import format_report, main, to_store_path
from nix_job.push.report import Failure, PushReport, PushStats
from tests.attic_double.server import AtticDouble
from tests.attic_double.state import Faults
from tests.nixenv import NixEnv, require_nix, write_derivations
from tests.serving import Serving

P = "/nix/store/" + "a" * 32 + "-hello"


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("demo")
        yield d


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        pytest.param([], {}, "the following arguments are required: PATH", id="no-paths"),
        pytest.param([P], {"ATTIC_CACHE": "demo"}, "no Attic server", id="no-server"),
        pytest.param([P], {"ATTIC_SERVER": "http://h/"}, "no cache", id="no-cache"),
        pytest.param(
            ["--server", "cache.example", "--cache", "demo", P], {}, "not an http(s) URL", id="url"
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "-bad", P],
            {},
            "expected one argument",
            id="cache-looks-like-a-flag",
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "bad name", P], {}, "not a valid", id="cache-name"
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "c", "--jobs", "0", P], {}, "--jobs", id="jobs"
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "c", "--timeout", "0", P],
            {},
            "--timeout",
            id="timeout",
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "c", "--exclude", "(", P],
            {},
            "not a valid regex",
            id="exclude",
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "c", "/etc/passwd"], {}, "not in", id="not-store"
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "c", "--max-size", "huge", P],
            {},
            "--max-size 'huge' is not a size",
            id="max-size",
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "c", "--closure", "all", P],
            {},
            "invalid choice: 'all'",
            id="closure",
        ),
        pytest.param(
            ["--server", "http://h/", "--cache", "c", "--token", "x", P],
            {},
            "unrecognized arguments: --token",
            id="no-token-argument",
        ),
    ],
)
def test_bad_usage_exits_2_and_says_what_is_wrong(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, env) == USAGE_EXIT
    err = capsys.readouterr().err
    assert message in err
    assert "usage: python -m nix_job push" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"], {}) == 0
    assert "ATTIC_TOKEN" in capsys.readouterr().out


def test_every_usage_problem_is_reported_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--jobs", "0", "/tmp"], {}) == USAGE_EXIT
    err = capsys.readouterr().err
    for message in ("no Attic server", "no cache", "--jobs", "not in /nix/store"):
        assert message in err


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        pytest.param(P, P, id="store-path"),
        pytest.param(P + "/bin/hello", P, id="file-inside-a-store-path"),
        pytest.param(P + "/", P, id="trailing-slash"),
    ],
)
def test_arguments_become_top_level_store_paths(arg: str, expected: str) -> None:
    assert to_store_path(arg) == expected


def test_a_link_into_the_store_is_followed(tmp_path: Path) -> None:
    link = tmp_path / "result"
    link.symlink_to(P + "/bin")
    assert to_store_path(str(link)) == P


@pytest.mark.parametrize(
    "arg",
    [pytest.param("/nix/store/", id="store-itself"), pytest.param("/usr/bin", id="elsewhere")],
)
def test_paths_outside_the_store_are_refused(arg: str) -> None:
    with pytest.raises(UsageError, match="is not in /nix/store"):
        to_store_path(arg)


@pytest.mark.parametrize(
    ("require", "code"),
    [pytest.param(False, 0, id="warns"), pytest.param(True, 1, id="fails-with-require")],
)
def test_without_a_token_nothing_is_pushed(
    require: bool, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--require", P] if require else [P]
    assert main(argv, {"ATTIC_SERVER": "http://127.0.0.1:9/", "ATTIC_CACHE": "demo"}) == code
    assert "ATTIC_TOKEN is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("require", "code"),
    [pytest.param(False, 0, id="warns"), pytest.param(True, 1, id="fails-with-require")],
)
def test_a_refused_token_stops_before_any_work(
    double: AtticDouble, require: bool, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    token = double.make_token({"other": "rw"})
    env = {"ATTIC_SERVER": double.url, "ATTIC_CACHE": "demo", "ATTIC_TOKEN": token}
    argv = ["--require", P] if require else [P]
    assert main(argv, env) == code
    out = capsys.readouterr()
    assert "401" in out.err
    assert token not in out.out + out.err
    assert double.write_requests() == []


class _EchoingProxy(BaseHTTPRequestHandler):
    """A broken proxy that answers 502 with the request's Authorization header in its body."""

    def do_GET(self) -> None:
        body = f"upstream failed for {self.headers.get('Authorization')}".encode()
        self.send_response(502)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        del format, args


def test_a_server_answer_that_echoes_the_token_is_printed_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = "attic-" + "s3cr3t" * 8
    serving = Serving(ThreadingHTTPServer(("127.0.0.1", 0), _EchoingProxy), name="echo")
    try:
        env = {
            "ATTIC_SERVER": f"http://127.0.0.1:{serving.port}/",
            "ATTIC_CACHE": "demo",
            "ATTIC_TOKEN": token,
        }
        assert main(["--require", P], env) == 1
    finally:
        serving.stop()
    out = capsys.readouterr()
    assert "502" in out.err
    assert "upstream failed for Bearer ***" in out.err
    assert token not in out.out + out.err


def test_the_report_names_counts_failures_and_leftovers() -> None:
    report = PushReport(
        pushed_watch=PushStats(paths=1, bytes=1024 * 1024),
        pushed_final=PushStats(paths=2, bytes=1024 * 1024),
        already_cached=PushStats(paths=4, bytes=1),
        upstream=PushStats(paths=5, bytes=1),
        excluded=PushStats(paths=6, bytes=1),
        vanished=7,
        failed=PushStats(paths=3, bytes=1),
        failures=(Failure(path=P, reason="HTTP 400: Bad NAR Hash"),),
        left_over=PushStats(paths=8, bytes=0),
        auth_error=None,
        drain_seconds=1.25,
    )
    text = format_report(report, server="http://h/", cache="demo")
    assert text.splitlines() == [
        "Pushed 3 path(s) (2.0 MiB) to cache 'demo' on http://h/ in 1.2 s.",
        "Skipped: 4 already cached, 5 from upstream caches, 6 excluded, 7 garbage-collected.",
        "Failed: 3 path(s).",
        f"  {P}: HTTP 400: Bad NAR Hash",
        "  … and 2 more",
        "Left unpushed at the deadline: 8 path(s); raise --timeout or push again.",
    ]


# --- real Nix -------------------------------------------------------------------------------


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.mark.nix
def test_pushing_a_result_link_uploads_its_closure(
    nix: NixEnv, double: AtticDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf, top = write_derivations(tmp_path, count=2, chain=True).build(nix, "d0", "d1")
    link = tmp_path / "result"
    link.symlink_to(top)
    token = double.make_token({"demo": "rw"})
    env = {**nix.env(), "ATTIC_SERVER": double.url, "ATTIC_CACHE": "demo", "ATTIC_TOKEN": token}

    assert main(["--require", str(link)], env) == 0

    out = capsys.readouterr()
    assert out.out.startswith("Pushed 2 path(s)")
    assert token not in out.out + out.err
    assert double.has_path("demo", leaf)
    assert double.has_path("demo", top)


@pytest.mark.nix
def test_exclude_and_require_shape_the_outcome(
    nix: NixEnv, double: AtticDouble, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaf, top = write_derivations(tmp_path, count=2, chain=True).build(nix, "d0", "d1")
    token = double.make_token({"demo": "rw"})
    env = {**nix.env(), "ATTIC_TOKEN": token}
    argv = ["--server", double.url, "--cache", "demo", "--exclude", f"^{leaf}$", top]
    # The first upload fails, and so does the reconcile's second try: still missing at the end.
    double.faults = Faults(fail_first_uploads=2, upload_failure_status=400)

    assert main(["--require", *argv], env) == 1
    first = capsys.readouterr().out
    assert "excluded" in first
    assert "Failed: 1 path(s)." in first
    assert "Outputs verified in the cache: 0 of 1" in first
    assert not double.has_path("demo", leaf)

    assert main(["--require", *argv], env) == 0  # the failure was not remembered as pushed
    assert double.has_path("demo", top)
