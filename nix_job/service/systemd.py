"""systemd's notification protocol, the few lines ``Type=notify`` needs (sd_notify(3)).

A message is one datagram of newline-separated ``KEY=VALUE`` assignments sent to the
``AF_UNIX`` socket named by ``NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract
namespace (the ``@`` stands for a leading NUL byte). ``WATCHDOG_USEC`` asks for ``WATCHDOG=1``
keep-alives, which sd_watchdog_enabled(3) recommends sending at half that interval; when
``WATCHDOG_PID`` is set, only that process is meant. Without ``NOTIFY_SOCKET`` every call does
nothing. Sending never raises: a lost notification must not stop the uploads.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: The variables systemd hands a service for notifications; no child process needs them.
NOTIFY_ENVS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between keep-alives (half of ``WATCHDOG_USEC``), or None when none are asked
    for (unset, not a positive number, or ``WATCHDOG_PID`` names another process)."""
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(pid):
        return None
    return int(usec) / 1_000_000 / 2


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value (None when unusable)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # sd_notify(3) also knows vsock addresses; a service on a host does not need them


class Notifier:
    """Sends notifications to systemd; a no-op without ``NOTIFY_SOCKET``. Thread-safe."""

    def __init__(self, address: str | bytes | None, *, watchdog_s: float | None = None) -> None:
        self._address = address
        self.watchdog_s = watchdog_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, pid: int) -> Notifier:
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a Unix socket address; not notifying", raw)
        return cls(address, watchdog_s=watchdog_interval(env, pid) if address else None)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased) in one datagram; True when sent."""
        if self._address is None:
            return False
        message = "\n".join(
            f"{key.upper()}={' '.join(str(value).split())}" for key, value in fields.items()
        )
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(message.encode(), self._address)
            except OSError as exc:
                if not self._failed:
                    log.warning("notifying systemd failed (%s); the service goes on", exc)
                self._failed = True
                return False
            self._failed = False
            return True

    def ready(self, status: str) -> bool:
        return self.notify(ready="1", status=status)

    def status(self, status: str) -> bool:
        return self.notify(status=status)

    def watchdog(self) -> bool:
        return self.notify(watchdog="1")

    def stopping(self, status: str) -> bool:
        return self.notify(stopping="1", status=status)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
