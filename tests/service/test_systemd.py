"""sd_notify: addresses, the watchdog interval, datagrams to a socket the test binds."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_job.service.systemd import Notifier, socket_address, watchdog_interval


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({"WATCHDOG_USEC": "10000000"}, 5.0, id="half-the-interval"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero"),
        pytest.param({"WATCHDOG_USEC": "x"}, None, id="garbage"),
        pytest.param({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 1.0, id="our-pid"),
        pytest.param({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, None, id="other-pid"),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, 42) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("/run/systemd/notify", "/run/systemd/notify", id="path"),
        pytest.param("@abstract/name", b"\0abstract/name", id="abstract"),
        pytest.param("@", None, id="empty-abstract"),
        pytest.param("vsock:2:1234", None, id="vsock"),
        pytest.param("relative", None, id="relative"),
    ],
)
def test_socket_address(value: str, expected: str | bytes | None) -> None:
    assert socket_address(value) == expected


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    directory = Path(tempfile.mkdtemp(prefix="nj-", dir="/tmp"))
    address = str(directory / "n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(5)
        yield sock, address
    os.unlink(address)
    directory.rmdir()


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"}, pid=1)
    assert notifier.watchdog_s == 2.0
    assert notifier.ready("pushed=0 queue=0")
    assert sock.recv(4096) == b"READY=1\nSTATUS=pushed=0 queue=0"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.status("two\nlines")
    assert sock.recv(4096) == b"STATUS=two lines"  # one assignment per line, always
    assert notifier.stopping("bye")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    name = f"nix-job-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": f"@{name}"}, pid=1)
        assert notifier.ready("ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
        notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"}, pid=1)
    assert not notifier.enabled
    assert notifier.watchdog_s is None
    assert not notifier.ready("x")


def test_a_missing_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")}, pid=1)
    assert not notifier.watchdog()
    assert not notifier.watchdog()
    notifier.close()
    assert len([r for r in caplog.records if "notifying systemd failed" in r.message]) == 1
