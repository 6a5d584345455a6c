"""The token: read from a file (trimmed), re-read when it changes, never shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nix_job.core.secret import Secret
from nix_job.service.credential import Credential, CredentialError, read_token_file


def test_a_trailing_newline_is_trimmed(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("  abc.def.ghi\n")
    assert read_token_file(tmp_path / "t") == Secret("abc.def.ghi")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"\n", "is empty", id="empty"),
        pytest.param(b"two words\n", "more than one word", id="two-words"),
        pytest.param(b"\xff\xfe", "not UTF-8", id="binary"),
        pytest.param(b"x" * 70_000, "more than", id="huge"),
    ],
)
def test_bad_token_files_are_refused_without_echoing_them(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "t").write_bytes(content)
    with pytest.raises(CredentialError, match=message) as caught:
        read_token_file(tmp_path / "t")
    assert "words" not in str(caught.value)


def test_a_token_passed_as_the_path_is_not_echoed() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    with pytest.raises(CredentialError, match="looks like a token") as caught:
        read_token_file(Path(jwt))
    assert jwt not in str(caught.value)


def test_a_changed_file_gives_a_new_token_and_version(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("one\n")
    credential = Credential.from_file(path)
    assert not credential.refresh()
    new = tmp_path / "t.new"
    new.write_text("two\n")
    new.replace(path)
    assert credential.refresh()
    assert credential.current() == (Secret("two"), 2)
    assert credential.seen() == (Secret("one"), Secret("two"))
    path.write_text("two\n")  # touched, same token: no new version
    os.utime(path, ns=(1, 1))
    assert not credential.refresh()
    assert credential.version == 2


def test_an_unreadable_file_keeps_the_previous_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t"
    path.write_text("one\n")
    credential = Credential.from_file(path)
    path.unlink()
    assert not credential.refresh()
    assert not credential.refresh()
    assert credential.current() == (Secret("one"), 1)
    assert len([r for r in caplog.records if "keeping the previous token" in r.message]) == 1
    path.write_text("\n")  # rewritten in place, not yet complete
    assert not credential.refresh()
    path.write_text("three\n")
    assert credential.refresh()
    assert credential.current() == (Secret("three"), 2)


def test_a_token_from_the_environment_never_changes() -> None:
    credential = Credential(token=Secret("env"))
    assert not credential.refresh()
    assert credential.source == "ATTIC_TOKEN"
