"""GitLab log and report text: sections GitLab folds, lines outside text cannot forge, and a
dotenv report GitLab's parser accepts and reads back as meant."""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nix_job.frontends.gitlab.output import (
    DOTENV_BUDGET,
    DOTENV_SIZE_LIMIT,
    DOTENV_VARIABLE_LIMIT,
    MAX_LINE_CHARS,
    MAX_MESSAGE_LINES,
    WITHHELD,
    build_dotenv,
    error,
    message,
    neutralise,
    notice,
    render_dotenv,
    section_end,
    section_start,
    warning,
)

ESC = "\x1b"

# GitLab's section marker as its log renderer matches it (gitlabhq lib/gitlab/regex.rb:
# logs_section_prefix_regex, logs_section_options_regex, logs_section_suffix_regex).
GITLAB_SECTION = re.compile(
    r"section_((?:start)|(?:end)):(\d+):([a-zA-Z0-9_.-]+)"
    r"(\[(?:\w+=\w+)(?:, ?(?:\w+=\w+))*\])?"
    r"\r\x1b\[0K"
)
# Ruby's String#strip removes these (and only these) from both ends.
RUBY_STRIP = "\x00\t\n\v\f\r "


class GitLabRejected(Exception):
    """What GitLab's dotenv service would answer with a 400."""


def gitlab_gzip_size(text: str, *, name: str = "nix-job.env") -> int:
    """Size of the report as the runner stores it: one gzip stream whose header carries the
    file's name and path (gitlab-runner helpers/archives/gzip_create.go)."""
    data = text.encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(data) + compressor.flush()
    header = b"\x1f\x8b\x08\x18" + b"\0" * 6 + name.encode() + b"\0" + name.encode() + b"\0"
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return len(header) + len(body) + len(trailer)


def parse_like_gitlab(text: str) -> dict[str, str]:
    """A model of gitlabhq app/services/ci/parse_dotenv_artifact_service.rb with the default
    plan limits: each line is ``^(.*?)=(.*)$`` (else "Invalid Format"), both sides stripped,
    the key must be ``[a-zA-Z0-9_]+`` of at most 255 characters, at most 20 variables, and the
    stored file must be smaller than 5120 bytes."""
    if gitlab_gzip_size(text) >= DOTENV_SIZE_LIMIT:
        raise GitLabRejected("Dotenv Artifact Too Big")
    lines = text.split("\n")  # Ruby's each_line splits on LF only
    if lines and lines[-1] == "":
        lines.pop()
    variables: dict[str, str] = {}
    for line in lines:
        match = re.match(r"(.*?)=(.*)", line)
        if match is None:
            raise GitLabRejected(f"Invalid Format: {line!r}")
        key, value = match[1].strip(RUBY_STRIP), match[2].strip(RUBY_STRIP)
        if not re.fullmatch(r"[a-zA-Z0-9_]+", key) or len(key) > 255:
            raise GitLabRejected(f"Key can contain only letters, digits and '_': {key!r}")
        variables[key] = value
    if len(variables) > 20:
        raise GitLabRejected("Dotenv files cannot have more than 20 variables")
    return variables


# --- Sections --------------------------------------------------------------------------------


def test_section_start_and_end_are_the_documented_markers() -> None:
    start = section_start("nix_job.build-1", "Build with nix-job", timestamp=1560896352)
    end = section_end("nix_job.build-1", timestamp=1560896353)

    assert start == "\x1b[0Ksection_start:1560896352:nix_job.build-1\r\x1b[0KBuild with nix-job"
    assert end == "\x1b[0Ksection_end:1560896353:nix_job.build-1\r\x1b[0K"
    opened, closed = GITLAB_SECTION.search(start), GITLAB_SECTION.search(end)
    assert opened is not None
    assert closed is not None
    assert opened.groups()[:3] == ("start", "1560896352", "nix_job.build-1")
    assert closed.groups()[:3] == ("end", "1560896353", "nix_job.build-1")


def test_collapsed_section_carries_the_option_gitlab_reads() -> None:
    start = section_start("upload", "Uploads", timestamp=7, collapsed=True)

    assert start == "\x1b[0Ksection_start:7:upload[collapsed=true]\r\x1b[0KUploads"
    match = GITLAB_SECTION.search(start)
    assert match is not None
    assert match[4] == "[collapsed=true]"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("two words", id="space"),
        pytest.param("a:b", id="colon-would-end-the-name"),
        pytest.param("a[collapsed=true]", id="bracket-would-forge-options"),
        pytest.param("a\r\x1b[0Kb", id="escape-sequence"),
        pytest.param("a\nb", id="newline"),
        pytest.param("größe", id="non-ascii-letters"),
        pytest.param("a/b", id="slash"),
    ],
)
def test_section_names_outside_gitlabs_alphabet_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape("letters, digits, '_', '.' and '-'")):
        section_start(name, "title", timestamp=1)
    with pytest.raises(ValueError, match="not accepted by GitLab"):
        section_end(name, timestamp=1)


def test_negative_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="Unix seconds"):
        section_start("a", "t", timestamp=-1)


@pytest.mark.parametrize(
    "title",
    [
        pytest.param("\r\x1b[0Ksection_end:1:build\r\x1b[0K", id="closes-our-section-early"),
        pytest.param("x\n\x1b[0Ksection_start:1:fake\r\x1b[0KFake", id="opens-a-new-section"),
        pytest.param("section_start:1:fake\r\x1b[0K", id="marker-without-leading-esc"),
        pytest.param("\x9b31mred via 8-bit CSI", id="c1-control-sequence"),
        pytest.param("\x1b]8;;https://evil.example\x07link\x1b]8;;\x07", id="osc-hyperlink"),
    ],
)
def test_a_hostile_title_cannot_forge_a_marker_or_escape(title: str) -> None:
    line = section_start("build", title, timestamp=1)

    assert [m[3] for m in GITLAB_SECTION.finditer(line)] == ["build"]
    header = line.split("\r\x1b[0K", 1)[1]
    assert ESC not in header
    assert "\r" not in header
    assert "\n" not in header
    assert "\x9b" not in header


# --- Neutralising outside text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("plain text", "plain text", id="plain"),
        pytest.param("tab\tkept", "tab\tkept", id="tab-kept"),
        pytest.param("héllo 🛹 ✓", "héllo 🛹 ✓", id="unicode-kept"),
        pytest.param("a\x1b[31mb", "a\\x1b[31mb", id="esc"),
        pytest.param("a\rb", "a\\rb", id="carriage-return"),
        pytest.param("a\nb", "a\\nb", id="line-feed"),
        pytest.param("a\x00b\x07c\x7f", "a\\x00b\\x07c\\x7f", id="nul-bell-del"),
        pytest.param("a\x9bb\x85c", "a\\x9bb\\x85c", id="c1-csi-and-nel"),
        pytest.param("abc\u202eevil", "abc\\u202eevil", id="bidi-override"),
        pytest.param("a\u2028b", "a\\u2028b", id="line-separator"),
        pytest.param("a\ud800b", "a\\ud800b", id="lone-surrogate"),
    ],
)
def test_neutralise(text: str, expected: str) -> None:
    assert neutralise(text) == expected


def test_neutralise_cuts_long_lines_and_says_how_much() -> None:
    text = "x" * (MAX_LINE_CHARS + 500)

    assert neutralise(text) == "x" * MAX_LINE_CHARS + "… (500 more characters)"
    assert neutralise("abcdef", max_chars=3) == "abc… (3 more characters)"
    assert neutralise("abc", max_chars=3) == "abc"
    with pytest.raises(ValueError, match="at least 1"):
        neutralise("abc", max_chars=0)


@given(st.text())
def test_neutralised_text_has_no_control_character_but_tab(text: str) -> None:
    safe = neutralise(text)

    assert all(ch == "\t" or not (ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F) for ch in safe)
    assert GITLAB_SECTION.search(safe) is None


# --- Messages --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("render", "colour", "label"),
    [
        pytest.param(error, "\x1b[31;1m", "error", id="error-red"),
        pytest.param(warning, "\x1b[33;1m", "warning", id="warning-yellow"),
        pytest.param(notice, "\x1b[36;1m", "notice", id="notice-cyan"),
    ],
)
def test_messages_are_coloured_labelled_lines(
    render: Callable[[str], str], colour: str, label: str
) -> None:
    text = render("17 of 240 paths failed to upload")

    assert text == f"{colour}nix-job {label}: 17 of 240 paths failed to upload\x1b[0m"


def test_each_line_of_a_message_is_coloured_and_indented() -> None:
    text = message("warning", "upload failed:\nHTTP 502\r\nfrom the server")

    assert text.split("\n") == [
        "\x1b[33;1mnix-job warning: upload failed:\x1b[0m",
        "\x1b[33;1m  HTTP 502\x1b[0m",
        "\x1b[33;1m  from the server\x1b[0m",
    ]


def test_a_server_message_cannot_forge_a_section_in_a_message() -> None:
    server_text = "boom\x1b[0Ksection_start:1:fake\r\x1b[0KFake\nsection_end:1:fake\r\x1b[0K"

    text = error(server_text)

    assert GITLAB_SECTION.search(text) is None
    assert "\r" not in text


def test_long_messages_keep_their_first_lines() -> None:
    text = warning("\n".join(f"line {i}" for i in range(MAX_MESSAGE_LINES + 10)))

    lines = text.split("\n")
    assert len(lines) == MAX_MESSAGE_LINES + 1
    assert lines[-1] == "\x1b[33;1m  … (10 more lines)\x1b[0m"


@given(st.text())
def test_no_message_ever_contains_a_section_marker(text: str) -> None:
    assert GITLAB_SECTION.search(error(text)) is None


# --- The dotenv report -----------------------------------------------------------------------

REPORT = {
    "NIX_JOB_CACHE_PUSH": "true",
    "NIX_JOB_CACHE_PUSH_REASON": "this push pipeline is on the protected default branch 'main'.",
    "NIX_JOB_PATHS_PUSHED": "47",
    "NIX_JOB_PATHS_FAILED": "0",
    "NIX_JOB_EXIT_CODE": "0",
    "NIX_JOB_COMMAND_SECONDS": "12.5",
    "NIX_JOB_BOOTSTRAP_SECONDS": "3.1",
}


def test_a_report_is_one_key_value_a_line() -> None:
    text = render_dotenv(REPORT)

    assert text == "".join(f"{key}={value}\n" for key, value in REPORT.items())
    assert parse_like_gitlab(text) == REPORT


def test_an_empty_report_is_empty_and_accepted() -> None:
    assert render_dotenv({}) == ""
    assert parse_like_gitlab("") == {}


@pytest.mark.parametrize(
    ("value", "read_back"),
    [
        pytest.param('"quoted"', '"quoted"', id="double-quotes-kept-literally"),
        pytest.param("'single'", "'single'", id="single-quotes-kept-literally"),
        pytest.param('say "hi" now', 'say "hi" now', id="inner-quotes"),
        pytest.param("a # not a comment", "a # not a comment", id="hash-inside"),
        pytest.param("#first", "#first", id="hash-first"),
        pytest.param("a=b=c", "a=b=c", id="equals-signs"),
        pytest.param("=", "=", id="only-equals"),
        pytest.param("${OTHER}_x", "${OTHER}_x", id="no-expansion"),
        pytest.param("  padded  ", "padded", id="outer-spaces-stripped-as-gitlab-would"),
        pytest.param("in  between", "in  between", id="inner-spaces-kept"),
        pytest.param("line one\nline two", "line one line two", id="newline-collapsed"),
        pytest.param("a\r\nb\n\n\nc", "a b c", id="line-break-runs-collapsed"),
        pytest.param("a\rb", "a b", id="lone-carriage-return"),
        pytest.param("tab\there", "tab here", id="tab"),
        pytest.param("bell\x07\x1b[31mred", "bell  [31mred", id="control-characters"),
        pytest.param("a\u2028b\u2029c\x85d", "a b c d", id="unicode-line-breaks"),
        pytest.param("nul\x00here", "nul here", id="nul"),
        pytest.param("\n\t ", "", id="only-whitespace"),
        pytest.param("", "", id="empty"),
        pytest.param("skate 🛹 é", "skate 🛹 é", id="unicode"),
        pytest.param("bad\ud800surrogate", "bad surrogate", id="lone-surrogate"),
        pytest.param("KEY2=spoofed", "KEY2=spoofed", id="looks-like-an-assignment"),
        pytest.param("x\nKEY2=spoofed", "x KEY2=spoofed", id="cannot-inject-a-variable"),
    ],
)
def test_odd_values_are_read_back_by_gitlab_as_rendered(value: str, read_back: str) -> None:
    text = render_dotenv({"NIX_JOB_CACHE_PUSH_REASON": value, "NIX_JOB_EXIT_CODE": "0"})

    assert text.count("\n") == 2
    assert parse_like_gitlab(text) == {
        "NIX_JOB_CACHE_PUSH_REASON": read_back,
        "NIX_JOB_EXIT_CODE": "0",
    }


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("", id="empty"),
        pytest.param("NIX-JOB", id="dash"),
        pytest.param("A B", id="space"),
        pytest.param("A=B", id="equals"),
        pytest.param("KÉY", id="non-ascii"),
        pytest.param("A\nB", id="newline"),
        pytest.param("K" * 256, id="too-long"),
    ],
)
def test_keys_gitlab_rejects_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not accepted by GitLab"):
        render_dotenv({key: "v"})


def test_the_longest_key_gitlab_accepts_is_accepted() -> None:
    assert parse_like_gitlab(render_dotenv({"K" * 255: "v"})) == {"K" * 255: "v"}


def test_more_variables_than_gitlabs_default_limit_are_refused() -> None:
    values = {f"K{i}": "v" for i in range(DOTENV_VARIABLE_LIMIT + 1)}

    with pytest.raises(ValueError, match="more than GitLab's default limit of 20"):
        render_dotenv(values)
    assert len(parse_like_gitlab(render_dotenv(dict(list(values.items())[:20])))) == 20


def test_a_long_reason_is_cut_to_fit_and_short_values_stay_whole() -> None:
    long_reason = "why " * 3000  # 12 000 bytes
    values = {**REPORT, "NIX_JOB_CACHE_PUSH_REASON": long_reason}

    report = build_dotenv(values)

    assert len(report.text.encode()) <= DOTENV_BUDGET
    assert report.truncated == ("NIX_JOB_CACHE_PUSH_REASON",)
    assert report.withheld == ()
    read = parse_like_gitlab(report.text)
    assert {k: v for k, v in read.items() if k != "NIX_JOB_CACHE_PUSH_REASON"} == {
        k: v for k, v in REPORT.items() if k != "NIX_JOB_CACHE_PUSH_REASON"
    }
    reason = read["NIX_JOB_CACHE_PUSH_REASON"]
    assert reason.endswith("why…")
    assert long_reason.startswith(reason.removesuffix("…"))
    assert len(report.text.encode()) > DOTENV_BUDGET - 8  # cut only as much as needed


def test_the_same_report_uncut_would_be_rejected_by_gitlab() -> None:
    long_reason = "".join(hashlib.sha256(bytes([i])).hexdigest() for i in range(200))
    text = "".join(f"{k}={v}\n" for k, v in {**REPORT, "K": long_reason}.items())

    with pytest.raises(GitLabRejected, match="Too Big"):
        parse_like_gitlab(text)
    assert parse_like_gitlab(render_dotenv({**REPORT, "K": long_reason}))


def test_cutting_multibyte_text_keeps_whole_characters() -> None:
    report = build_dotenv({"NIX_JOB_CACHE_PUSH_REASON": "é🛹" * 3000})

    assert report.text.encode().decode() == report.text
    assert len(report.text.encode()) <= DOTENV_BUDGET
    assert parse_like_gitlab(report.text)["NIX_JOB_CACHE_PUSH_REASON"].endswith("…")


def test_two_long_values_are_both_cut_longest_first() -> None:
    report = build_dotenv({"A": "a" * 3000, "B": "b" * 2500, "C": "7"}, max_bytes=2000)

    read = parse_like_gitlab(report.text)
    assert len(report.text.encode()) <= 2000
    assert set(report.truncated) == {"A", "B"}
    assert read["C"] == "7"


def test_a_budget_too_small_for_the_keys_is_an_error() -> None:
    with pytest.raises(ValueError, match="for its keys alone"):
        render_dotenv({"NIX_JOB_CACHE_PUSH": "true", "NIX_JOB_EXIT_CODE": "0"}, max_bytes=10)


TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(TOKEN, id="the-token-itself"),
        pytest.param(f"401 from server: bad token {TOKEN}", id="token-inside-a-message"),
        pytest.param("x" * 5000 + TOKEN, id="token-past-the-cut"),
        pytest.param("x" * 4070 + TOKEN, id="token-across-the-cut"),
        pytest.param(f"multi\nline {TOKEN}\n", id="token-on-a-later-line"),
    ],
)
def test_a_value_containing_a_secret_is_withheld(value: str) -> None:
    report = build_dotenv({**REPORT, "NIX_JOB_CACHE_PUSH_REASON": value}, secrets=[TOKEN])

    assert report.withheld == ("NIX_JOB_CACHE_PUSH_REASON",)
    assert parse_like_gitlab(report.text)["NIX_JOB_CACHE_PUSH_REASON"] == WITHHELD
    assert TOKEN not in report.text
    assert TOKEN[:12] not in report.text
    assert parse_like_gitlab(report.text)["NIX_JOB_PATHS_PUSHED"] == "47"


def test_values_without_the_secret_and_empty_secrets_are_left_alone() -> None:
    report = build_dotenv(REPORT, secrets=[TOKEN, ""])

    assert report.withheld == ()
    assert report.text == render_dotenv(REPORT)


_SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=16, max_size=40)
_KEYS = st.from_regex(r"[A-Z][A-Z0-9_]{0,30}", fullmatch=True)


@given(
    values=st.dictionaries(_KEYS, st.text(max_size=600), max_size=DOTENV_VARIABLE_LIMIT),
    secret=_SECRET,
    plant=st.booleans(),
)
def test_any_report_is_accepted_and_never_holds_a_secret(
    values: dict[str, str], secret: str, plant: bool
) -> None:
    if plant and values:
        first = next(iter(values))
        values = {**values, first: values[first] + secret}

    report = build_dotenv(values, secrets=[secret])

    read = parse_like_gitlab(report.text)
    assert list(read) == list(values)
    assert len(report.text.encode()) <= DOTENV_BUDGET
    assert secret not in report.text


_LAYOUT = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_PLAIN = (
    st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=100)
    .map(lambda text: text.strip(" "))
    .filter(lambda text: not _LAYOUT.search(text))
)


@given(values=st.dictionaries(_KEYS, _PLAIN, max_size=DOTENV_VARIABLE_LIMIT))
def test_plain_values_are_read_back_exactly(values: dict[str, str]) -> None:
    assert parse_like_gitlab(render_dotenv(values)) == values


def test_a_secret_that_only_appears_once_lines_are_joined_is_withheld() -> None:
    report = build_dotenv(
        {"NIX_JOB_CACHE_PUSH_REASON": "the pass\nphrase"}, secrets=["pass phrase"]
    )

    assert report.withheld == ("NIX_JOB_CACHE_PUSH_REASON",)
    assert "pass phrase" not in report.text


def test_a_full_report_of_poorly_compressible_text_fits_gitlabs_limit() -> None:
    """The headroom left below 5 KiB covers gzip's header (file name and path) and text that
    compresses poorly."""
    noise = "".join(chr(0x100 + (i * 7919) % 0x6FF) for i in range(DOTENV_BUDGET))
    report = build_dotenv({**REPORT, "NIX_JOB_CACHE_PUSH_REASON": noise})

    assert len(report.text.encode()) <= DOTENV_BUDGET
    size = gitlab_gzip_size(report.text, name="reports/" + "n" * 200 + ".env")
    assert size < DOTENV_SIZE_LIMIT
