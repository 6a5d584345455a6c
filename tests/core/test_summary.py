"""The job summary and the action outputs: pure renderings of a RunReport."""

from __future__ import annotations

import dataclasses
import re

import pytest

from nix_job.core.outcome import final_exit_code, upload_problems
from nix_job.core.problem import Problem
from nix_job.core.report import CacheFacts, ExchangeFacts, NixFacts, PushFacts, RunReport
from nix_job.core.summary import action_outputs, render_summary

BASE = RunReport(command="nix build .#default", working_directory=".", attic_enabled=True)
PUSH = PushFacts(
    pushed_during_build=12,
    pushed_final=1,
    already_cached=30,
    upstream=200,
    excluded=2,
    vanished=1,
    failed=3,
    left_over=4,
    bytes_uploaded=5 * 1024 * 1024,
    drain_seconds=2.5,
    failures=(("/nix/store/x-a", "HTTP 500"),),
)
CACHE = CacheFacts(
    server="https://cache.example/",
    cache="main",
    source="inputs",
    substituter="https://cache.example/main",
    public_key="main:abc=",
    key_source="discovered",
    authenticated_reads=True,
    is_public=False,
)


@pytest.mark.parametrize(
    ("report", "headline"),
    [
        pytest.param(BASE, "stopped before the command ran", id="never-ran"),
        pytest.param(
            RunReport(command="x", working_directory=".", attic_enabled=True, exit_code=0),
            "command succeeded",
            id="success",
        ),
        pytest.param(
            RunReport(command="x", working_directory=".", attic_enabled=True, exit_code=2),
            "command failed with exit code 2",
            id="failure",
        ),
        pytest.param(
            RunReport(
                command="x",
                working_directory=".",
                attic_enabled=True,
                exit_code=143,
                cancelled=True,
            ),
            "cancelled",
            id="cancelled",
        ),
        pytest.param(
            RunReport(
                command="x",
                working_directory=".",
                attic_enabled=True,
                exit_code=0,
                problems=(Problem(kind="error", title="t", message="m"),),
            ),
            "nix-job reported errors",
            id="success-with-errors",
        ),
    ],
)
def test_headline_says_what_happened(report: RunReport, headline: str) -> None:
    assert headline in render_summary(report).splitlines()[0]


def test_summary_tells_cache_gate_and_uploads() -> None:
    report = RunReport(
        command="nix build .#default",
        working_directory="sub",
        attic_enabled=True,
        exit_code=0,
        command_seconds=12.34,
        bootstrap_seconds=0.5,
        nix=NixFacts(
            version="2.8.0", installed_now=False, store="single-user", config_delivery="NIX_CONFIG"
        ),
        cache=CACHE,
        publish_allowed=True,
        publish_reason="push to main",
        push=PUSH,
    )
    text = render_summary(report)
    assert "`nix build .#default` in `sub`" in text
    assert "12.3 s" in text
    assert "Nix 2.8.0, reused, single-user" in text
    assert "`main` on https://cache.example/" in text
    assert "authenticated" in text
    assert "**yes**: push to main" in text
    assert "| 12 | 1 | 30 | 200 | 2 | 1 | 3 | 4 | 5.0 MiB | 2.5 s |" in text
    assert "HTTP 500" in text


def test_raw_nix_runs_say_the_cache_is_disabled() -> None:
    report = RunReport(command="x", working_directory=".", attic_enabled=False, exit_code=0)
    assert "disabled (`attic-enabled: false`)" in render_summary(report)


def test_problems_are_listed_with_their_help_link() -> None:
    report = RunReport(
        command="x",
        working_directory=".",
        attic_enabled=True,
        exit_code=0,
        problems=(
            Problem(
                kind="warning", title="reads", message="401\nfrom server", hint_url="https://h#a"
            ),
        ),
    )
    text = render_summary(report)
    assert "**warning: reads**: 401 from server ([help](https://h#a))" in text


def test_multi_line_commands_show_their_first_line_and_cannot_break_the_table() -> None:
    report = RunReport(
        command="echo `a` | tee x\nsecond", working_directory=".", attic_enabled=True
    )
    text = render_summary(report)
    assert "echo 'a' \\| tee x …" in text
    assert "second" not in text


def test_outputs_without_a_push() -> None:
    outputs = action_outputs(
        RunReport(
            command="x", working_directory=".", attic_enabled=True, exit_code=3, command_seconds=1.5
        )
    )
    assert outputs["exit-code"] == "3"
    assert outputs["cache-push"] == "false"
    assert outputs["paths-pushed"] == "0"
    assert outputs["command-seconds"] == "1.500"
    assert outputs["bootstrap-seconds"] == ""


def test_outputs_count_pushed_and_failed_paths() -> None:
    outputs = action_outputs(
        RunReport(
            command="x",
            working_directory=".",
            attic_enabled=True,
            exit_code=0,
            publish_allowed=True,
            push=PUSH,
        )
    )
    assert outputs["cache-push"] == "true"
    assert outputs["paths-pushed"] == "13"
    assert outputs["paths-failed"] == "7"


def test_paths_left_over_at_the_deadline_are_named() -> None:
    push = PushFacts(
        pushed_during_build=1,
        pushed_final=0,
        already_cached=0,
        upstream=0,
        excluded=0,
        vanished=0,
        failed=0,
        left_over=7,
        bytes_uploaded=0,
        drain_seconds=120.0,
        left_over_sample=("/nix/store/aaaa-slow",),
    )
    report = RunReport(
        command="x", working_directory=".", attic_enabled=True, exit_code=0, push=push
    )
    text = render_summary(report)
    assert "Not uploaded by the drain deadline (7 in all)" in text
    assert "- `/nix/store/aaaa-slow`" in text


def test_no_left_over_section_when_everything_was_uploaded() -> None:
    report = RunReport(
        command="x", working_directory=".", attic_enabled=True, exit_code=0, push=PUSH
    )
    assert "drain deadline" not in render_summary(report)


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param("x | y", id="pipe-would-add-a-table-cell"),
        pytest.param("<img src=x onerror=alert(1)>", id="html"),
        pytest.param("[click](https://evil.example)", id="link"),
        pytest.param("![img](https://evil.example/x.png)", id="image"),
        pytest.param("line one\n\n## Injected heading", id="newlines"),
        pytest.param("`code` and **bold**", id="backticks-and-emphasis"),
    ],
)
def test_text_from_outside_is_inert_in_the_summary(hostile: str) -> None:
    report = RunReport(
        command="true",
        working_directory=hostile,
        attic_enabled=True,
        exit_code=0,
        publish_reason=hostile,
        push=PushFacts(
            pushed_during_build=0,
            pushed_final=0,
            already_cached=0,
            upstream=0,
            excluded=0,
            vanished=0,
            failed=1,
            left_over=1,
            bytes_uploaded=0,
            drain_seconds=0.0,
            failures=(("/nix/store/x-a", hostile),),
            left_over_sample=(hostile,),
        ),
        problems=(Problem.warning(hostile, hostile),),
    )
    markdown = render_summary(report)
    for line in markdown.splitlines():
        prose = re.sub(r"`[^`]*`", "", line)  # code spans show their text literally
        assert "<img" not in prose, line
        links = re.findall(r"(?<!\\)\]\(", prose.replace("[help](", ""))
        assert links == [], line  # an escaped bracket cannot close a link
        assert not line.startswith("## Injected"), line
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert all(line.count(" | ") - line.count("\\|") <= 2 for line in table if "Command" in line)


def test_the_summary_shows_push_policy_reconcile_and_throttling() -> None:
    push = dataclasses.replace(
        PUSH,
        closure_mode="build",
        without_derivation=2,
        oversize=1,
        oversize_bytes=3 * 1024**3,
        oversize_sample=("/nix/store/" + "v" * 32 + "-vendor-deps",),
        verification="Outputs verified in the cache: 2 of 2 (40 of 40 paths with their closures).",
        throttling="The server pushed back: 3 throttling answer(s) (429/503) and 0 other server "
        "error(s); waited 3.0 s in all, uploads at once went down to 1 of 6.",
    )
    text = render_summary(
        RunReport(command="nix build", working_directory=".", attic_enabled=True, push=push)
    )
    assert "Closure pushed: **build**" in text
    assert "build-time inputs unknown for 2 output(s)" in text
    assert "Outputs verified in the cache: 2 of 2" in text
    assert "Too large to push (`push-max-size`): 1 path(s), 3.0 GiB" in text
    assert "-vendor-deps`" in text
    assert "went down to 1 of 6" in text


@pytest.mark.parametrize(
    ("push", "code", "fragment"),
    [
        pytest.param(dataclasses.replace(PUSH, failed=0, left_over=0), 0, None, id="all-good"),
        pytest.param(
            dataclasses.replace(PUSH, failed=0, left_over=0, outputs_missing=1),
            1,
            "1 output(s) are not in the cache at the end",
            id="an-output-missing",
        ),
        pytest.param(
            dataclasses.replace(PUSH, failed=2, left_over=0, outputs_missing=1),
            1,
            "2 path(s) failed and 0 were left over; 1 output(s)",
            id="failures-and-a-missing-output",
        ),
    ],
)
def test_require_cache_push_fails_on_a_missing_output(
    push: PushFacts, code: int, fragment: str | None
) -> None:
    exit_code, problem = final_exit_code(
        command_exit=0, require_cache_push=True, publishing_expected=True, push=push
    )
    assert exit_code == code
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None
        assert fragment in problem.message


def test_upload_problems_tell_oversize_throttling_and_missing_outputs() -> None:
    push = dataclasses.replace(
        PUSH,
        failed=0,
        left_over=0,
        oversize=4,
        oversize_bytes=5 * 1024**3,
        oversize_sample=tuple(f"/nix/store/{c * 32}-big" for c in "abcd"),
        throttling="The server pushed back: 2 throttling answer(s)",
        verification="Outputs verified in the cache: 0 of 1 (0 of 1 paths). Missing: x",
        outputs_missing=1,
    )
    problems = {p.title: p for p in upload_problems(push, auth_error=None, drain_timeout_s=60)}
    too_large = problems["nix-job: paths too large to push"]
    assert too_large.kind == "notice"
    assert "4 store path(s) (5 GiB of NAR)" in too_large.message
    assert too_large.message.count("-big`") == 3
    assert problems["nix-job: the cache server pushed back"].kind == "notice"
    missing = problems["nix-job: outputs missing from the cache"]
    assert missing.kind == "warning"
    assert "0 of 1" in missing.message


@pytest.mark.parametrize(
    ("exchange", "row"),
    [
        pytest.param(None, None, id="no-exchange-no-row"),
        pytest.param(
            ExchangeFacts(
                url="'https://x/'",
                audience="https://x",
                granted="pull and push",
                rule="gh-publish",
                lifetime_s=1800,
                renewals=2,
            ),
            "| Token exchange | rule `gh-publish` granted pull and push on `main` for 30 min "
            "(audience https://x); renewed 2× |",
            id="granted-and-renewed",
        ),
        pytest.param(
            ExchangeFacts(url="'https://x/'", audience="https://x", failure="HTTP 403 *no*"),
            "| Token exchange | no token, reads anonymous: HTTP 403 \\*no\\* |",
            id="refused",
        ),
    ],
)
def test_the_summary_shows_what_the_exchange_granted_next_to_the_gate(
    exchange: ExchangeFacts | None, row: str | None
) -> None:
    report = dataclasses.replace(BASE, cache=CACHE, exchange=exchange, publish_reason="why.")
    text = render_summary(report)
    rows = [line for line in text.splitlines() if line.startswith("| Token exchange")]
    assert rows == ([row] if row else [])
    assert "| Publishing | no: why. |" in text
