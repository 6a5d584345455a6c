"""netrc: lossless parsing, merging exactly one entry for our host, private atomic writes."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_job.cache import netrc, netrc_file

HOST = "cache.example"
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJl"
OURS = f"machine {HOST}\nlogin nix-job\npassword {TOKEN}\n"


def merged(text: str, host: str = HOST, password: str = TOKEN) -> str:
    return netrc.render(netrc.merge(netrc.parse(text), host=host, password=password))


MERGE_CASES = [
    pytest.param("", OURS, id="empty-file-gets-one-entry"),
    pytest.param(
        "machine github.com password gh\n",
        OURS + "machine github.com password gh\n",
        id="new-entry-goes-first-so-no-password-only-entry-gets-a-successor",
    ),
    pytest.param(
        "# managed by hand\n\nmachine github.com\nlogin x\npassword gh\n",
        "# managed by hand\n\n" + OURS + "machine github.com\nlogin x\npassword gh\n",
        id="new-entry-goes-after-leading-comments",
    ),
    pytest.param(
        "# header\nmachine cache.example login bob password old account acc\n"
        "machine b.example password b\n",
        "# header\n" + OURS + "machine b.example password b\n",
        id="ours-replaced-in-place-login-and-account-dropped",
    ),
    pytest.param(
        "machine a.example password a\nmachine CACHE.Example\npassword old\n",
        "machine a.example password a\n" + OURS,
        id="host-matched-case-insensitively-like-curl",
    ),
    pytest.param(
        "machine a.example password a\nmachine cache.example password one\n"
        "machine b.example password b\nmachine cache.example password two\n",
        "machine a.example password a\n" + OURS + "machine b.example password b\n",
        id="duplicates-collapse-to-exactly-one",
    ),
    pytest.param(
        "default login anonymous password me@example\n",
        OURS + "default login anonymous password me@example\n",
        id="new-entry-goes-before-default-block",
    ),
    pytest.param(
        "machine a.example password a\ndefault password d\nmachine cache.example password old\n",
        "machine a.example password a\n" + OURS + "default password d\n",
        id="entry-hidden-behind-default-moves-before-it",
    ),
    pytest.param(
        "# only a comment, no newline",
        "# only a comment, no newline\n" + OURS,
        id="final-comment-without-newline-does-not-swallow-ours",
    ),
    pytest.param(
        "login x machine a.example password a",
        "login x \n" + OURS + "machine a.example password a",
        id="junk-on-the-same-line-before-the-first-entry",
    ),
    pytest.param(
        "macdef init\ncd /pub\n",
        "macdef init\ncd /pub\n\n" + OURS,
        id="open-macdef-is-ended-before-ours",
    ),
    pytest.param(
        "machine a.example\nmacdef init\ncd /pub\nmachine cache.example\n\n"
        "machine cache.example password old\n",
        "machine a.example\nmacdef init\ncd /pub\nmachine cache.example\n\n" + OURS,
        id="macdef-body-kept-verbatim-even-when-it-names-our-host",
    ),
    pytest.param(
        "machine a.example\npassword",
        OURS + "machine a.example\npassword",
        id="keyword-waiting-for-a-value-keeps-its-block",
    ),
    pytest.param("login", 'login ""\n' + OURS, id="waiting-junk-keyword-gets-an-empty-value"),
    pytest.param(
        "# the cache\nmachine cache.example\npassword old\n\n# others\nmachine b.example\n"
        "login u\npassword p\n",
        "# the cache\n" + OURS + "\n# others\nmachine b.example\nlogin u\npassword p\n",
        id="comments-and-blank-lines-around-entries-kept",
    ),
    pytest.param('"a \\\n', '"a \\\n' + OURS, id="open-quote-ends-with-its-line"),
    pytest.param(
        'machine "a b" password "x\\"y"\n',
        OURS + 'machine "a b" password "x\\"y"\n',
        id="quoted-words-kept-verbatim",
    ),
]


@pytest.mark.parametrize(("before", "after"), MERGE_CASES)
def test_merge_replaces_or_adds_exactly_our_entry(before: str, after: str) -> None:
    assert merged(before) == after


@pytest.mark.parametrize(("before", "after"), MERGE_CASES)
def test_merge_is_idempotent(before: str, after: str) -> None:
    assert merged(merged(before)) == merged(before)


@pytest.mark.parametrize(("before", "after"), MERGE_CASES)
def test_render_of_parse_is_the_original_text(before: str, after: str) -> None:
    assert netrc.render(netrc.parse(before)) == before
    assert netrc.render(netrc.parse(after)) == after


@pytest.mark.parametrize(
    ("text", "host", "password"),
    [
        pytest.param("machine a password 1\nmachine a password 2\n", "a", "1", id="first-wins"),
        pytest.param("default password d\nmachine a password 1\n", "a", "d", id="default-first"),
        pytest.param("machine a password 1\ndefault password d\n", "b", "d", id="default-last"),
        pytest.param("machine a\n  login u\n  password 1\n", "A", "1", id="case-insensitive"),
        pytest.param("machine a password 1\n", "b", None, id="no-match"),
        pytest.param('machine a password "p q"\n', "a", "p q", id="quoted-password"),
        pytest.param("# machine a password 1\n", "a", None, id="commented-out"),
        pytest.param(
            "machine b\nmacdef m\nmachine a password 1\n\nmachine a password 2\n",
            "a",
            "2",
            id="macdef-body-is-not-parsed",
        ),
    ],
)
def test_lookup_picks_the_entry_curl_would_use(text: str, host: str, password: str | None) -> None:
    entry = netrc.lookup(netrc.parse(text), host)
    assert (entry.password if entry else None) == password


def test_merged_entry_has_our_login_which_attic_ignores() -> None:
    entry = netrc.lookup(netrc.parse(merged("machine cache.example login bob password x\n")), HOST)
    assert entry is not None
    assert (entry.login, entry.password, entry.account) == ("nix-job", TOKEN, None)


@pytest.mark.parametrize(
    ("host", "password"),
    [
        pytest.param(HOST, "", id="empty-password"),
        pytest.param(HOST, "abc def", id="space-in-password"),
        pytest.param(HOST, "abc\n", id="newline-in-password"),
        pytest.param(HOST, '"abc', id="quote-start"),
        pytest.param(HOST, "#abc", id="hash-start"),
        pytest.param("bad host", TOKEN, id="space-in-host"),
    ],
)
def test_entry_refuses_words_netrc_cannot_carry_without_echoing_them(
    host: str, password: str
) -> None:
    with pytest.raises(ValueError, match="netrc") as info:
        netrc.entry_text(host=host, password=password)
    if password.strip():
        assert password.strip() not in str(info.value)


# --- fuzzing ----------------------------------------------------------------------------------

WORDS = [
    "machine",
    "MACHINE",
    "default",
    "login",
    "password",
    "account",
    "macdef",
    "cache.example",
    "Cache.Example",
    "a.example",
    "b.example",
    "x",
    "#",
    "#c",
    '"q w"',
    '"',
    '"\\"',
    "\\",
]
SEPARATORS = [" ", "\t", "\n", "\n\n", "\r\n", "\r", "\n \n", "\\\n", ""]
netrc_like = st.lists(
    st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), max_size=25
).map(lambda parts: "".join(word + sep for word, sep in parts))
OTHER_HOSTS = ("a.example", "b.example", "x", "nowhere.example", "machine")


def _fields(entry: netrc.NetrcEntry | None) -> tuple[object, ...] | None:
    if entry is None:
        return None
    return (entry.machine, entry.login, entry.password, entry.account)


@given(st.text())
def test_parse_never_fails_and_keeps_every_character(text: str) -> None:
    assert netrc.render(netrc.parse(text)) == text


@settings(max_examples=400)
@given(netrc_like)
def test_merge_of_any_netrc_sets_ours_and_changes_no_other_host(text: str) -> None:
    before = netrc.parse(text)
    assert netrc.render(before) == text
    out = merged(text)
    after = netrc.parse(out)
    ours = netrc.lookup(after, HOST)
    assert ours is not None
    assert (ours.machine, ours.login, ours.password, ours.account) == (
        HOST,
        "nix-job",
        TOKEN,
        None,
    )
    assert [e.machine for e in after.entries].count(HOST) == 1
    for host in OTHER_HOSTS:
        assert _fields(netrc.lookup(after, host)) == _fields(netrc.lookup(before, host)), host
    assert merged(out) == out


# --- write_private / remove_quietly ----------------------------------------------------------


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(0o000, id="umask-000"),
        pytest.param(0o022, id="umask-022"),
        pytest.param(0o077, id="umask-077"),
        pytest.param(0o277, id="umask-277-masks-owner-write"),
        pytest.param(0o777, id="umask-777"),
    ],
)
def test_write_private_gives_exactly_0600_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    target = tmp_path / "netrc"
    with umask(mask):
        netrc_file.write_private(target, OURS)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == OURS
    assert os.listdir(tmp_path) == ["netrc"]  # no temp file left behind


def test_write_private_never_shows_a_wider_mode_while_writing(tmp_path: Path) -> None:
    """A poller lstat()s every file in the directory while a large write is in progress."""
    target = tmp_path / "netrc"
    text = "machine a.example password " + "x" * (16 << 20) + "\n"
    modes: dict[str, set[int]] = {}

    def poll(stop: threading.Event) -> None:
        while not stop.is_set():
            for name in os.listdir(tmp_path):
                try:
                    mode = os.lstat(tmp_path / name).st_mode
                except FileNotFoundError:
                    continue
                modes.setdefault(name, set()).add(stat.S_IMODE(mode))

    for _ in range(20):  # until the poller has caught the temporary file at least once
        stop = threading.Event()
        poller = threading.Thread(target=poll, args=(stop,))
        with umask(0):
            poller.start()
            try:
                netrc_file.write_private(target, text)
            finally:
                stop.set()
                poller.join()
        if any(name != "netrc" for name in modes):
            break
    assert any(name != "netrc" for name in modes), "the temporary file was never observed"
    assert {mode for seen in modes.values() for mode in seen} == {0o600}


def test_write_private_replaces_a_wider_file_with_a_new_private_one(tmp_path: Path) -> None:
    target = tmp_path / "netrc"
    target.write_text("old")
    target.chmod(0o644)
    reader = target.open()  # an earlier reader keeps the old inode, never sees the token
    netrc_file.write_private(target, OURS)
    assert reader.read() == "old"
    reader.close()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == OURS


def test_write_private_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    target = tmp_path / "netrc"
    target.symlink_to(victim)
    netrc_file.write_private(target, OURS)
    assert victim.read_text() == "keep me"
    assert not target.is_symlink()
    assert target.read_text() == OURS


def test_write_private_keeps_undecodable_bytes_of_a_read_netrc(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"machine a.example password \xff\xfe\n")
    target = tmp_path / "netrc"
    netrc_file.write_private(target, merged(netrc_file.read_text(source)))
    assert target.read_bytes() == OURS.encode() + b"machine a.example password \xff\xfe\n"


def test_write_private_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "netrc"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError, match="directory"):
        netrc_file.write_private(target, OURS)
    assert sorted(os.listdir(tmp_path)) == ["netrc"]
    assert os.listdir(target) == []


@pytest.mark.parametrize("exists", [pytest.param(True, id="file"), pytest.param(False, id="none")])
def test_remove_quietly_reports_the_file_gone(tmp_path: Path, exists: bool) -> None:
    target = tmp_path / "netrc"
    if exists:
        target.write_text(OURS)
    assert netrc_file.remove_quietly(target) is True
    assert not target.exists()
    assert netrc_file.remove_quietly(target) is True


def test_remove_quietly_reports_a_file_it_cannot_delete(tmp_path: Path) -> None:
    target = tmp_path / "netrc"
    target.mkdir()  # unlink() of a directory fails; the path is still there
    assert netrc_file.remove_quietly(target) is False
