"""The journal, the mark and the state lock: durable, bounded, replayed, one owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from nix_job.service.journal import (
    COMPACT_SLACK,
    HEADER,
    Journal,
    MarkFile,
    StateLock,
    read_pending,
    replay,
)

H = "0" * 31
A, B, C = (f"/nix/store/{H}{c}-p" for c in "abc")


@pytest.mark.parametrize(
    ("lines", "pending", "bad"),
    [
        pytest.param([f"+ {A}", f"+ {B}", f"- {A}"], {B: 0}, 0, id="add-and-confirm"),
        pytest.param([f"+ {A}", f"! {A}", f"! {A}"], {A: 2}, 0, id="attempts"),
        pytest.param([f"+ {A} 3", f"! {A}"], {A: 4}, 0, id="compacted-attempts"),
        pytest.param([f"! {A}"], {}, 0, id="attempt-of-nothing"),
        pytest.param([f"- {A}", f"+ {A}"], {A: 0}, 0, id="seen-again"),
        pytest.param(["+ /etc/passwd", f"* {A}", f"+ {A} x", ""], {}, 4, id="unreadable"),
    ],
)
def test_replay(lines: list[str], pending: dict[str, int], bad: int) -> None:
    assert replay(lines) == (pending, bad)


def test_pending_paths_survive_a_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path, limit=10)
    assert journal.add([A, B, A]).new == (A, B)
    journal.failed_attempt(B)
    journal.confirm([A])
    # No close(): as after a crash. Adds are fsync'd; the rest is written.
    again = Journal(tmp_path, limit=10)
    assert again.pending() == [B]
    assert again.attempts(B) == 1
    assert read_pending(tmp_path) == {B: 1}


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "journal").write_text(f"{HEADER}\n+ {A}\n+ {B}")  # B's line never ended
    journal = Journal(tmp_path, limit=10)
    assert journal.pending() == [A]
    assert journal.unreadable_lines == 1
    assert (tmp_path / "journal").read_text() == f"{HEADER}\n+ {A}\n"  # rewritten clean


def test_a_file_that_is_no_journal_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "journal").write_text("something else\n")
    assert Journal(tmp_path, limit=10).pending() == []
    assert (tmp_path / "journal.unreadable").read_text() == "something else\n"


def test_the_limit_refuses_new_paths(tmp_path: Path) -> None:
    journal = Journal(tmp_path, limit=2)
    added = journal.add([A, B, C])
    assert (added.new, added.refused) == ((A, B), (C,))
    assert journal.add([A]).refused == ()  # already pending: neither new nor refused


def test_the_log_is_compacted_so_it_follows_the_pending_set(tmp_path: Path) -> None:
    journal = Journal(tmp_path, limit=10)
    for _ in range(COMPACT_SLACK):
        journal.add([A])
        journal.confirm([A])
    journal.add([B])
    assert journal.maybe_compact()
    assert (tmp_path / "journal").read_text() == f"{HEADER}\n+ {B}\n"
    journal.add([C])  # the append handle follows the new file
    journal.close()
    assert read_pending(tmp_path) == {B: 0, C: 0}
    assert not journal.maybe_compact()


def test_after_close_records_are_not_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path, limit=10)
    journal.add([A])
    journal.close()
    journal.confirm([A])
    journal.sync()
    assert read_pending(tmp_path) == {A: 0}


def test_the_mark_round_trips_and_is_written_only_when_it_moves(tmp_path: Path) -> None:
    marks = MarkFile(tmp_path)
    assert marks.load() is None
    marks.save(12.5)
    assert MarkFile(tmp_path).load() == 12.5
    (tmp_path / "mark.json").unlink()
    marks.save(12.5)  # unchanged: not rewritten
    assert not (tmp_path / "mark.json").exists()


@pytest.mark.parametrize("content", ["{", "[]", '{"seen_through": "x"}', '{"seen_through": true}'])
def test_an_unreadable_mark_is_a_first_start(tmp_path: Path, content: str) -> None:
    (tmp_path / "mark.json").write_text(content)
    assert MarkFile(tmp_path).load() is None


def test_one_service_per_state_directory(tmp_path: Path) -> None:
    first, second = StateLock(tmp_path), StateLock(tmp_path)
    assert first.acquire()
    assert not second.acquire()
    assert second.holder().isdigit()
    first.release()
    assert second.acquire()
    second.release()
