"""The run lifecycle with fakes (tests/fakes): what runs, what does not, and in which order.

No Nix, no network, no process: the adapters and the front end are fakes, so each case takes
milliseconds. The end-to-end tests run the same lifecycle for real (tests/test_action*.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nix_job.cache.attic import CacheConfig
from nix_job.cache.exchange_client import ExchangeError
from nix_job.command import Cancellation
from nix_job.core.decision import CACHE_PUSH_ENV
from nix_job.core.errors import AtticAuthError, IdTokenError, NixJobError
from nix_job.core.secret import Secret
from nix_job.core.token_grant import Grant
from nix_job.frontends.base import RunContext
from nix_job.push.report import PushReport, PushStats
from nix_job.run import Runtime, run
from tests.fakes.adapters import Recorder, fake_adapters
from tests.fakes.frontend import FakeFrontend, allow_all, deny_all

CACHE = "demo"
SERVER = "https://cache.example/"


def jwt(perms: dict[str, dict[str, int]]) -> str:
    """An unsigned Attic-shaped JWT (nix-job only reads its claims, for a warning)."""

    def part(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    claims = {"sub": "ci", "https://jwt.attic.rs/v1": {"caches": perms}}
    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


PUSH_TOKEN = jwt({CACHE: {"r": 1, "w": 1}})
PULL_TOKEN = jwt({CACHE: {"r": 1}})


def inputs(**values: str) -> dict[str, str]:
    base = {
        "NIX_JOB_COMMAND": "nix build",
        "NIX_JOB_ATTIC_SERVER": SERVER,
        "NIX_JOB_ATTIC_CACHE": CACHE,
        "NIX_JOB_PUSH_CACHE": "true",
    }
    base.update({f"NIX_JOB_{k.upper()}": v for k, v in values.items()})
    return base


@pytest.fixture
def context(tmp_path: Path) -> RunContext:
    (tmp_path / "workspace").mkdir()
    (tmp_path / "temp").mkdir()
    return RunContext(
        workspace=tmp_path / "workspace",
        temp_root=tmp_path / "temp",
        run_id="7-1",
        cancel_grace_s=1.0,
    )


def start(
    frontend: FakeFrontend,
    recorder: Recorder,
    *,
    values: dict[str, str] | None = None,
    token: str | None = PUSH_TOKEN,
    **adapter_options: object,
) -> int:
    cancellation = Cancellation()
    rt = Runtime(
        env={"PATH": "/usr/bin:/bin", "HOME": "/home/runner", "ATTIC_TOKEN": "in-the-env"},
        inputs=values if values is not None else inputs(),
        token=Secret(token) if token else None,
    )
    adapters = fake_adapters(recorder, cancellation=cancellation, **adapter_options)  # type: ignore[arg-type]
    return run(rt, frontend, cancellation, adapters)


def titles(frontend: FakeFrontend) -> list[str]:
    return [p.title for p in frontend.problems]


def test_a_trusted_run_publishes_around_the_command_and_cleans_up(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context, gate=allow_all), Recorder()

    assert start(frontend, recorder) == 0

    assert recorder.events == [
        "bootstrap",
        "attic",
        "cache-config",
        "configure",
        "cache-config",
        "publisher",
        "publisher-start",
        "command",
        "publisher-finish",
        "publisher-close",
        "restore",
        "attic-close",
    ]
    assert recorder.command_env[CACHE_PUSH_ENV] == "true"
    assert "ATTIC_TOKEN" not in recorder.command_env
    report = frontend.report_
    assert report.publish_allowed
    assert report.push is not None
    assert report.exit_code == 0
    assert any(secret.reveal() == PUSH_TOKEN for secret in frontend.masked)


def test_a_run_the_gate_refuses_never_builds_a_publisher(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context, gate=deny_all), Recorder()

    assert start(frontend, recorder, token=PULL_TOKEN) == 0

    assert "publisher" not in recorder.events
    assert recorder.command_env[CACHE_PUSH_ENV] == "false"
    assert not frontend.report_.publish_allowed
    assert frontend.report_.publish_reason == "this is a pull request."
    assert "nix-job: read-only run" in titles(frontend)  # the gate's notice


def test_a_push_capable_token_on_any_run_that_does_not_publish_is_a_warning(
    context: RunContext,
) -> None:
    """Not only pull requests: whenever the gate says no and the token's claims allow push."""
    frontend, recorder = FakeFrontend(context=context, gate=deny_all), Recorder()

    start(frontend, recorder, token=PUSH_TOKEN)

    (warning,) = [p for p in frontend.problems if p.title.endswith("push token on a read-only run")]
    assert "this is a pull request" in warning.message
    assert f"push to cache `{CACHE}`" in warning.message


def test_a_pull_only_token_on_a_read_only_run_is_not_a_warning(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context, gate=deny_all), Recorder()
    start(frontend, recorder, token=PULL_TOKEN)
    assert not any("push token" in t for t in titles(frontend))


def test_the_commands_exit_code_is_the_runs(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    assert start(frontend, recorder, exit_code=3) == 3
    assert frontend.report_.exit_code == 3
    assert recorder.events.index("publisher-finish") > recorder.events.index("command")


FAILED_UPLOADS = PushReport(failed=PushStats(paths=2, bytes=10))


@pytest.mark.parametrize(
    ("require", "exit_code", "push", "expected"),
    [
        pytest.param("false", 0, FAILED_UPLOADS, 0, id="upload-failures-only-warn"),
        pytest.param("true", 0, FAILED_UPLOADS, 1, id="required-push-fails-the-run"),
        pytest.param("true", 5, FAILED_UPLOADS, 5, id="a-failed-command-keeps-its-code"),
        pytest.param("true", 0, PushReport(), 0, id="required-push-that-worked"),
    ],
)
def test_require_cache_push_turns_upload_failures_into_a_failure(
    context: RunContext, require: str, exit_code: int, push: PushReport, expected: int
) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    values = inputs(require_cache_push=require)
    assert start(frontend, recorder, values=values, exit_code=exit_code, push=push) == expected
    failed = "nix-job: required cache push failed" in titles(frontend)
    assert failed == (expected == 1)


def test_require_cache_push_fails_a_trusted_run_whose_cache_never_attached(
    context: RunContext,
) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    refused = AtticAuthError("401", status=401)
    values = inputs(require_cache_push="true")
    assert start(frontend, recorder, values=values, config=refused) == 1
    assert "publisher" not in recorder.events
    assert "nix-job: required cache push failed" in titles(frontend)


def test_a_cache_for_another_store_dir_is_never_published_to(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    other = CacheConfig(public_key="demo:" + "A" * 43 + "=", store_dir="/gnu/store")
    assert start(frontend, recorder, config=other) == 0
    assert "publisher" not in recorder.events
    (skipped,) = [p for p in frontend.problems if p.title == "nix-job: publishing skipped"]
    assert "/gnu/store" in skipped.message


def test_attic_disabled_touches_no_cache(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    assert start(frontend, recorder, values=inputs(attic_enabled="false")) == 0
    assert "attic" not in recorder.events
    assert recorder.settings == []
    assert not frontend.report_.publish_allowed


def test_bad_inputs_stop_everything_before_it_starts(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    assert start(frontend, recorder, values=inputs(push_jobs="0", push_cache="maybe")) == 1
    assert recorder.events == []
    (error,) = frontend.problems
    assert error.kind == "error"
    assert "`push-jobs`" in error.message
    assert "`push-cache`" in error.message
    assert frontend.report_.exit_code is None  # the summary says the command never ran


def test_the_netrc_exists_only_while_the_run_needs_it(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    seen: dict[Path, str] = {}

    def look() -> None:
        seen.update({p: p.read_text() for p in context.temp_root.rglob("netrc")})

    recorder.during_command = look

    start(frontend, recorder)

    ((netrc, text),) = seen.items()
    assert f"password {PUSH_TOKEN}" in text
    assert list(context.temp_root.rglob("netrc")) == []
    assert ("netrc-file", str(netrc)) in recorder.settings


def test_a_cancellation_during_bootstrap_runs_no_command(context: RunContext) -> None:
    frontend, recorder = FakeFrontend(context=context), Recorder()
    assert start(frontend, recorder, cancel_in="bootstrap") == 143
    assert "command" not in recorder.events
    assert frontend.report_.cancelled


@pytest.mark.parametrize(
    "cancel", [pytest.param(None, id="normal"), pytest.param("command", id="cancelled")]
)
def test_the_netrc_goes_right_after_the_command_before_the_drain_and_the_restore(
    context: RunContext, cancel: str | None
) -> None:
    """Only Nix reads the netrc, and it ran inside the command. A cancelled run may be killed
    during the restore's daemon restart, so the netrc must already be gone (issue 16.7)."""
    frontend, recorder = FakeFrontend(context=context), Recorder()
    left: dict[str, int] = {}

    def count(where: str) -> Callable[[], None]:
        return lambda: left.__setitem__(where, len(list(context.temp_root.rglob("netrc"))))

    recorder.during_command = count("command")
    recorder.during_finish = count("drain")
    recorder.during_restore = count("restore")

    start(frontend, recorder, cancel_in=cancel)

    assert left == {"command": 1, "drain": 0, "restore": 0}
    assert recorder.restore_budgets == [2.0 if cancel else None]


# --- the token exchange ----------------------------------------------------------------------

EXCHANGE = "https://attic-exchange.example"
ID_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJjaSJ9.id-token-signature"


def minted(perms: str, n: int = 1, lifetime: float = 1800.0) -> Grant:
    letters = {"rw": {"r": 1, "w": 1}, "r": {"r": 1}}[perms]
    token = jwt({CACHE: letters}).replace("c2ln", f"bWludGVk{n}")
    return Grant(
        token=Secret(token),
        expires_at=0,
        lifetime_s=lifetime,
        caches=((CACHE, perms),),
        rule=f"rule-{perms}",
    )


def with_exchange(**values: str) -> dict[str, str]:
    return inputs(attic_token_exchange=EXCHANGE, **values)


def exchanging(context: RunContext, gate: Callable[..., object] = allow_all) -> FakeFrontend:
    return FakeFrontend(
        context=context,
        gate=gate,  # type: ignore[arg-type]
        id_tokens=lambda audience: Secret(ID_TOKEN),
    )


def exchange_run(
    frontend: FakeFrontend,
    recorder: Recorder,
    grants: list[Grant | NixJobError],
    *,
    values: dict[str, str] | None = None,
    token: str | None = None,
    **options: object,
) -> int:
    return start(
        frontend,
        recorder,
        values=values or with_exchange(),
        token=token,
        grants=grants,
        **options,
    )


def test_with_no_attic_token_a_trusted_run_publishes_through_the_exchange(
    context: RunContext,
) -> None:
    frontend, recorder = exchanging(context), Recorder()
    grant = minted("rw")
    netrcs: list[str] = []
    recorder.during_command = lambda: netrcs.extend(
        p.read_text() for p in context.temp_root.rglob("netrc")
    )

    assert exchange_run(frontend, recorder, [grant]) == 0

    assert recorder.events[:4] == ["bootstrap", "exchange", "attic", "cache-config"]
    assert recorder.exchanged == [(EXCHANGE, ID_TOKEN, CACHE)]
    assert frontend.audiences == [EXCHANGE]  # the default audience: the exchange's origin
    assert "publisher" in recorder.events
    assert recorder.token_source is not None
    assert recorder.token_source.current() == grant.token
    (text,) = netrcs
    assert f"password {grant.token.reveal()}" in text
    masked = {s.reveal() for s in frontend.masked}
    assert {ID_TOKEN, grant.token.reveal()} <= masked
    report = frontend.report_
    assert report.publish_allowed
    assert report.exchange is not None
    assert (report.exchange.rule, report.exchange.granted) == ("rule-rw", "pull and push")
    assert "exchange-close" in recorder.events
    assert frontend.decisions[0].token_present


def test_a_refused_exchange_reads_anonymously_warns_and_does_not_publish(
    context: RunContext,
) -> None:
    frontend, recorder = exchanging(context), Recorder()
    refused = ExchangeError(
        "the exchange refused (HTTP 403, no_matching_rule)", code="no_matching_rule"
    )

    assert exchange_run(frontend, recorder, [refused]) == 0

    (warning,) = [p for p in frontend.problems if p.title == "nix-job: token exchange failed"]
    assert warning.kind == "warning"
    assert "reads cache `demo` anonymously" in warning.message
    assert recorder.token_source is not None
    assert recorder.token_source.current() is None
    assert "publisher" not in recorder.events
    assert not list(context.temp_root.rglob("netrc"))
    gate = frontend.decisions[0]
    assert (gate.token_present, gate.token_missing) == (
        False,
        "the token exchange refused (no_matching_rule)",
    )
    assert frontend.report_.exchange is not None
    assert "no_matching_rule" in (frontend.report_.exchange.failure or "")


def test_require_cache_push_fails_a_trusted_run_the_exchange_left_without_push(
    context: RunContext,
) -> None:
    frontend, recorder = exchanging(context), Recorder()
    values = with_exchange(require_cache_push="true")
    refused = ExchangeError("refused", code="no_matching_rule")
    assert exchange_run(frontend, recorder, [refused], values=values) == 1
    assert "nix-job: required cache push failed" in titles(frontend)


def test_a_pull_only_grant_on_a_trusted_run_reads_and_says_why_it_does_not_publish(
    context: RunContext,
) -> None:
    frontend, recorder = exchanging(context, gate=allow_all), Recorder()
    assert exchange_run(frontend, recorder, [minted("r")]) == 0
    assert "publisher" not in recorder.events
    assert frontend.decisions[0].token_missing == (
        "the token exchange granted cache `demo` pull only (rule `rule-r`)"
    )
    assert list(context.temp_root.rglob("netrc")) == []  # removed after the command


def test_a_pull_request_without_an_id_token_gets_a_notice_not_a_warning(
    context: RunContext,
) -> None:
    frontend, recorder = FakeFrontend(context=context, gate=deny_all), Recorder()

    def none(audience: str) -> Secret:
        raise IdTokenError("forks never get one", expected=True)

    frontend.id_tokens = none
    assert exchange_run(frontend, recorder, [minted("r")]) == 0
    (problem,) = [p for p in frontend.problems if "ID token" in p.title]
    assert problem.kind == "notice"
    assert "exchange" not in recorder.events


def test_attic_token_is_ignored_when_the_exchange_is_set(context: RunContext) -> None:
    frontend, recorder = exchanging(context), Recorder()
    netrcs: list[str] = []
    recorder.during_command = lambda: netrcs.extend(
        p.read_text() for p in context.temp_root.rglob("netrc")
    )
    exchange_run(frontend, recorder, [minted("rw")], token=PULL_TOKEN)
    assert "nix-job: ATTIC_TOKEN not used" in titles(frontend)
    (text,) = netrcs
    assert PULL_TOKEN not in text


def test_an_explicit_audience_is_the_one_requested(context: RunContext) -> None:
    frontend, recorder = exchanging(context), Recorder()
    values = with_exchange(oidc_audience="https://attic.example")
    exchange_run(frontend, recorder, [minted("rw")], values=values)
    assert frontend.audiences == ["https://attic.example"]


def test_the_token_is_renewed_during_a_long_command_for_uploads_and_for_nix(
    context: RunContext,
) -> None:
    """A token living 1.5 s, renewed after 1 s: a 2.5 s command sees a new one in the netrc,
    and the Attic client hands out the new one, masked before anyone could see it."""
    frontend, recorder = exchanging(context), Recorder()
    second = minted("rw", 2, lifetime=1.5)
    grants: list[Grant | NixJobError] = [minted("rw", 1, lifetime=1.5), second, minted("rw", 3)]
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            for path in context.temp_root.rglob("netrc"):
                with contextlib.suppress(FileNotFoundError):
                    text = path.read_text()
                    source = recorder.token_source
                    assert source is not None
                    current = source.current()
                    assert current is not None
                    seen.append((text, current.reveal()))
            time.sleep(0.05)

    recorder.during_command = watch
    exchange_run(frontend, recorder, grants)

    assert any(second.token.reveal() in text for text, _ in seen), "the netrc was not rewritten"
    assert any(current == second.token.reveal() for _, current in seen)
    assert recorder.events.count("exchange") >= 2
    assert second.token in frontend.masked
    report = frontend.report_
    assert report.exchange is not None
    assert report.exchange.renewals >= 1


# SECURITY: after the command ran, nix-job still holds the secrets, and the command could write
# where nix-job's code, vendored packages and templates live: nothing may be imported then.
_IMPORTS_AFTER_THE_COMMAND = """
import io, sys, tempfile
from pathlib import Path
from nix_job.command import Cancellation
from nix_job.core.secret import Secret
from nix_job.frontends.generic import GenericFrontend
from nix_job.run import Runtime, run
from tests.fakes.adapters import Recorder, fake_adapters
from tests.test_run import PUSH_TOKEN, inputs

work = Path(tempfile.mkdtemp())
frontend = GenericFrontend(
    publish=True, cwd=work, run_id="1", summary_file=work / "summary.md", stream=io.StringIO()
)
recorder, seen = Recorder(), set()
recorder.during_command = lambda: seen.update(sys.modules)
cancellation = Cancellation()
code = run(
    Runtime(env={"PATH": "/usr/bin:/bin"}, inputs=inputs(), token=Secret(PUSH_TOKEN)),
    frontend,
    cancellation,
    fake_adapters(recorder, cancellation=cancellation),
)
assert code == 0 and recorder.publisher_requests, (code, recorder.events)
assert "command succeeded" in (work / "summary.md").read_text()
print(" ".join(sorted(set(sys.modules) - seen)))
"""


def test_nothing_is_imported_once_the_command_ran() -> None:
    # A fresh interpreter: in this one, earlier tests have imported everything already.
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_AFTER_THE_COMMAND],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
