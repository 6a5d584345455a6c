"""The publishing lifecycle's pure parts: which outputs the final push takes, report mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from nix_job.push.publisher import final_roots, push_facts
from nix_job.push.report import Failure, PushReport, PushStats

STORE = "/nix/store"
A = f"{STORE}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-app"
B = f"{STORE}/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-lib"


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "result").symlink_to(A)
    (tmp_path / "result-dev").symlink_to(B + "/include")
    (tmp_path / "result-file").write_text("not a link")
    (tmp_path / "resultat").symlink_to("/etc")
    return tmp_path


def test_result_links_are_pushed_as_top_level_store_paths(cwd: Path) -> None:
    assert final_roots(cwd, ()) == [A, B]


@pytest.mark.parametrize(
    ("push_paths", "expected"),
    [
        pytest.param((A + "/bin/app",), [A, B], id="store-subpath-is-cut-to-its-root"),
        pytest.param(("result",), [A, B], id="duplicates-collapse"),
        pytest.param(("/etc/passwd", "missing"), [A, B], id="outside-the-store-is-skipped"),
        pytest.param((f"{STORE}/",), [A, B], id="the-store-itself-is-not-a-path"),
    ],
)
def test_push_paths_join_the_result_links(
    cwd: Path, push_paths: tuple[str, ...], expected: list[str]
) -> None:
    assert final_roots(cwd, push_paths) == expected


def test_push_paths_are_relative_to_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "out").symlink_to(B)
    assert final_roots(tmp_path, ("out",)) == [B]


def test_report_maps_to_summary_facts() -> None:
    report = PushReport(
        pushed_watch=PushStats(paths=3, bytes=300),
        pushed_final=PushStats(paths=1, bytes=100),
        already_cached=PushStats(paths=5, bytes=0),
        vanished=2,
        failed=PushStats(paths=1, bytes=0),
        failures=(Failure(path=A, reason="HTTP 500"),),
        left_over=PushStats(paths=4, bytes=0),
        left_over_sample=(B,),
        drain_seconds=1.5,
    )
    facts = push_facts(report)
    assert (facts.pushed_during_build, facts.pushed_final, facts.already_cached) == (3, 1, 5)
    assert (facts.vanished, facts.failed, facts.left_over) == (2, 1, 4)
    assert facts.bytes_uploaded == 400
    assert facts.failures == ((A, "HTTP 500"),)
    assert facts.left_over_sample == (B,)
