"""Catch-up: selection within the bounds and the mark (pure tables), registration times from
every path-info shape, and the ctime pre-filter on a real directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nix_job.service.catchup import (
    CTIME_SLACK_S,
    CatchUp,
    next_mark,
    parse_registrations,
    select,
)
from nix_job.service.scan import recent_entries

H = "0" * 31
A, B, C, D = (f"/nix/store/{H}{c}-p" for c in "abcd")
DAY = 86400.0
WEEK = 7 * DAY


@pytest.mark.parametrize(
    ("registered", "mark", "window_s", "max_paths", "expected"),
    [
        pytest.param({A: 100, B: 200}, 150.0, WEEK, 10,
                     CatchUp(since=150.0, paths=(B,), beyond_window=False, truncated=0),
                     id="after-the-mark"),
        pytest.param({A: 149, B: 150}, 150.5, WEEK, 10,
                     CatchUp(since=150.5, paths=(B,), beyond_window=False, truncated=0),
                     id="whole-seconds-150-may-be-150.9"),
        pytest.param({A: 148}, 150.0, WEEK, 10,
                     CatchUp(since=150.0, paths=(), beyond_window=False, truncated=0),
                     id="older-is-not"),
        pytest.param({A: 300, B: 400, C: 500}, 0.0, WEEK, 2,
                     CatchUp(since=0.0, paths=(B, C), beyond_window=False, truncated=1),
                     id="count-bound-keeps-the-newest"),
        pytest.param({A: DAY, B: 3 * DAY - 5}, 10.0, DAY, 10,
                     CatchUp(since=2 * DAY, paths=(B,), beyond_window=True, truncated=0),
                     id="window-bound"),
        pytest.param({A: 300}, 0.0, WEEK, 0,
                     CatchUp(since=0.0, paths=(), beyond_window=False, truncated=1),
                     id="max-0-is-off"),
        pytest.param({B: 300, A: 300, C: 200}, 0.0, WEEK, 10,
                     CatchUp(since=0.0, paths=(C, A, B), beyond_window=False, truncated=0),
                     id="oldest-first-then-by-path"),
    ],
)  # fmt: skip
def test_select(
    registered: dict[str, int], mark: float, window_s: float, max_paths: int, expected: CatchUp
) -> None:
    now = 3 * DAY
    assert select(registered, mark=mark, now=now, window_s=window_s, max_paths=max_paths) == (
        expected
    )


@pytest.mark.parametrize(
    ("previous", "now", "holds", "expected"),
    [
        pytest.param(100.0, 1000.0, [], 940.0, id="trails-the-clock-by-the-margin"),
        pytest.param(100.0, 1000.0, [500.0], 500.0, id="stops-at-a-hold"),
        pytest.param(100.0, 1000.0, [500.0, 300.0], 300.0, id="at-the-earliest-hold"),
        pytest.param(600.0, 1000.0, [500.0], 600.0, id="never-backwards"),
        pytest.param(990.0, 1000.0, [], 990.0, id="first-start-mark-kept"),
    ],
)
def test_next_mark(previous: float, now: float, holds: list[float], expected: float) -> None:
    assert next_mark(previous, now=now, margin_s=60.0, holds=holds) == expected


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(
            [
                {"path": A, "narHash": "sha256-x", "registrationTime": 7},
                {"path": B, "valid": False},
            ],
            id="nix-2.8-list",
        ),
        pytest.param({A: {"registrationTime": 7}, B: None}, id="nix-2.19-object"),
        pytest.param(
            {"version": 2, "storeDir": "/nix/store", "info": {A[11:]: {"registrationTime": 7}}},
            id="nix-2.33-envelope",
        ),
    ],
)
def test_registrations_from_every_path_info_shape(document: object) -> None:
    assert parse_registrations(json.dumps(document)) == {A: 7}


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([{"path": "/elsewhere/x", "registrationTime": 1}], id="not-in-the-store"),
        pytest.param([{"path": A, "registrationTime": True}], id="bool-is-not-a-time"),
        pytest.param([{"path": A, "registrationTime": "7"}], id="string-is-not-a-time"),
        pytest.param([{"path": A}], id="no-time"),
    ],
)
def test_entries_without_a_usable_time_are_left_out(document: object) -> None:
    assert parse_registrations(json.dumps(document)) == {}


def test_an_unknown_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="top level"):
        parse_registrations("3")


def test_recent_entries_filters_names_and_ctimes(tmp_path: Path) -> None:
    for name in (f"{H}a-pkg", f"{H}b-pkg.drv", f"{H}c-pkg.lock", ".links", "not-a-store-path"):
        (tmp_path / name).mkdir()
    (tmp_path / f"{H}d-link").symlink_to("/nonexistent")  # a store path may be a symlink
    now = time.time()
    found = recent_entries(tmp_path, since=now, logical_store_dir="/nix/store")
    assert sorted(found) == [f"/nix/store/{H}a-pkg", f"/nix/store/{H}d-link"]
    future = now + CTIME_SLACK_S + 60
    assert recent_entries(tmp_path, since=future, logical_store_dir="/nix/store") == []
    os.utime(tmp_path / f"{H}a-pkg", (1, 1))  # mtime 1, as Nix canonicalises: ctime is now
    assert f"/nix/store/{H}a-pkg" in recent_entries(
        tmp_path, since=now, logical_store_dir="/nix/store/"
    )
