"""logfmt lines and the status line: pure tables; the formatter and its redaction."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from nix_job.core.secret import Secret
from nix_job.service.logs import LogfmtFormatter, SecretScrubber, configure, event
from nix_job.service.status import (
    Snapshot,
    Value,
    logfmt,
    render_value,
    status_line,
    systemd_status,
)
from tests.service.harness import parse_line


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        pytest.param("plain", "plain", id="bare"),
        pytest.param("/nix/store/abc-x", "/nix/store/abc-x", id="path"),
        pytest.param("http://h:1/", "http://h:1/", id="url"),
        pytest.param("two words", '"two words"', id="space"),
        pytest.param('say "hi"', '"say \\"hi\\""', id="quotes"),
        pytest.param("a=b", '"a=b"', id="equals"),
        pytest.param("line\nbreak", '"line\\nbreak"', id="newline-stays-one-line"),
        pytest.param("", '""', id="empty"),
        pytest.param(None, "-", id="none"),
        pytest.param(True, "true", id="true"),
        pytest.param(3, "3", id="int"),
        pytest.param(1.5, "1.5", id="float"),
        pytest.param(2.0, "2", id="whole-float"),
        pytest.param(0.12345, "0.123", id="rounded"),
        pytest.param(float("inf"), "inf", id="inf"),
    ],
)
def test_values_render_as_logfmt(value: Value, rendered: str) -> None:
    assert render_value(value) == rendered


def test_keys_must_be_snake_case() -> None:
    with pytest.raises(ValueError, match="snake case"):
        logfmt({"Bad-Key": 1})


def test_lines_parse_back() -> None:
    fields: dict[str, Value] = {"event": "x", "msg": 'a "quoted" = thing', "n": 3}
    assert parse_line(logfmt(fields)) == {"event": "x", "msg": 'a "quoted" = thing', "n": "3"}


SNAP = Snapshot(
    uptime_s=61.6,
    server="up",
    pushed=3,
    pushed_bytes=4096,
    cached=1,
    upstream=2,
    excluded=1,
    vanished=1,
    failed=1,
    gave_up=0,
    queue=5,
    retrying=1,
    refused_full=0,
)


def test_the_status_line_has_stable_keys_in_order() -> None:
    assert status_line(SNAP) == (
        "event=status pushed=3 pushed_bytes=4096 skipped=5 cached=1 upstream=2 excluded=1 "
        "vanished=1 failed=1 gave_up=0 queue=5 retrying=1 refused_full=0 server=up "
        "watcher_errors=0 uptime_s=62"
    )
    assert systemd_status(SNAP) == status_line(SNAP).removeprefix("event=status ")


def test_formatter_wraps_foreign_records_and_redacts_every_token_form() -> None:
    scrub = SecretScrubber()
    token = Secret("tok-123456")
    scrub.add(token)
    stream = io.StringIO()
    configure(stream, scrub)
    logging.getLogger("somewhere").warning("Bearer %s and\nmore", token.reveal())
    event(logging.getLogger("nix_job.service"), logging.INFO, "ready", token=token.reveal())
    basic = token.derived_forms()[1]
    logging.getLogger("x").error("basic %s", basic)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # one line per event, whatever the message held
    assert all("tok-123456" not in line and basic not in line for line in lines)
    first = parse_line(lines[0])
    assert (first["level"], first["event"], first["logger"]) == ("warning", "log", "somewhere")
    assert first["msg"] == "Bearer *** and\nmore"
    assert parse_line(lines[1])["event"] == "ready"


def test_quieted_loggers_stay_quiet_unless_verbose() -> None:
    stream = io.StringIO()
    configure(stream, SecretScrubber())
    logging.getLogger("nix_job.push.retry").warning("attempt 1 failed, retrying")
    assert stream.getvalue() == ""
    configure(stream, SecretScrubber(), verbose=True)
    logging.getLogger("nix_job.push.retry").warning("attempt 1 failed, retrying")
    assert "attempt 1 failed" in stream.getvalue()


def test_exceptions_stay_on_one_line() -> None:
    formatter = LogfmtFormatter(lambda text: text)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("n", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in parse_line(line)["exc"]
