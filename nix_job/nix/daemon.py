"""The nix-daemon as nix-job meets it: its socket, who listens on it, how to restart it, and
whether the owner of a nix.conf block still runs."""

from __future__ import annotations

import errno
import os
import shlex
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from nix_job.core.errors import NixConfigError
from nix_job.core.nixhash import STORE_DIR
from nix_job.nix.settings import BlockOwner
from nix_job.process import CommandRunner


def _boot_id(proc_dir: Path) -> str:
    try:
        return (proc_dir / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def current_owner(proc_dir: Path = Path("/proc")) -> BlockOwner:
    """This process, as the owner of the block it writes."""
    return BlockOwner(pid=os.getpid(), boot=_boot_id(proc_dir))


class OwnerLiveness(Protocol):
    def __call__(self, owner: BlockOwner) -> bool:
        """The nix-job process ``owner`` may still run (True whenever that cannot be ruled out)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcLiveness:
    """Alive unless proven dead: another boot, no such PID, or a PID that is not nix-job now."""

    proc_dir: Path = Path("/proc")

    def __call__(self, owner: BlockOwner) -> bool:
        boot = _boot_id(self.proc_dir)
        if boot and owner.boot and owner.boot != boot:
            return False
        try:
            cmdline = (self.proc_dir / str(owner.pid) / "cmdline").read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            return exc.errno not in (errno.ENOENT, errno.ESRCH)
        return b"nix_job" in cmdline


# ---------------------------------------------------------------------------------------------
# Daemon seams


def socket_answers(path: Path, *, timeout_s: float = 2.0) -> bool:
    """Something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class DaemonSocketProbe(Protocol):
    def answers(self, path: Path) -> bool:
        """Something accepts connections on the Unix socket ``path``."""
        ...

    def listener_pid(self, path: Path) -> int | None:
        """PID of the process that listens on ``path`` (SO_PEERCRED), None when unknown."""
        ...


class UnixSocketProbe:
    def __init__(self, *, timeout_s: float = 2.0) -> None:
        self._timeout = timeout_s

    def _connect(self, path: Path) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            return None
        return sock

    def answers(self, path: Path) -> bool:
        return socket_answers(path, timeout_s=self._timeout)

    def listener_pid(self, path: Path) -> int | None:
        # For a Unix stream socket the peer credentials are those of the process that called
        # listen(): the master nix-daemon (or PID 1 under systemd socket activation).
        sock = self._connect(path)
        if sock is None:
            return None
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        finally:
            sock.close()
        pid, _uid, _gid = struct.unpack("3i", raw)
        return pid or None


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemPaths:
    nix_conf: Path = Path("/etc/nix/nix.conf")
    daemon_socket: Path = Path("/nix/var/nix/daemon-socket/socket")
    systemd_dir: Path = Path("/run/systemd/system")
    store_dir: Path = Path(STORE_DIR)
    proc_dir: Path = Path("/proc")


DEFAULT_SYSTEM_PATHS = SystemPaths()


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonControl:
    """How to restart the daemon: through systemd, or by PID and its own command line."""

    kind: Literal["systemd", "manual"]
    unit: str = "nix-daemon.service"
    argv: tuple[str, ...] = ()  # manual: the command line it was started with


def is_daemon_cmdline(argv: Sequence[str]) -> bool:
    if not argv:
        return False
    prog = Path(argv[0]).name
    return prog == "nix-daemon" or (prog == "nix" and "daemon" in argv[1:])


def daemon_control(
    *,
    runner: CommandRunner,
    probe: DaemonSocketProbe,
    paths: SystemPaths,
    env: Mapping[str, str],
) -> DaemonControl:
    """How to restart the daemon that serves ``paths.daemon_socket``, or NixConfigError saying
    why it cannot be done safely (nothing is changed then)."""
    if paths.systemd_dir.is_dir():
        units = ["nix-daemon.service", "nix-daemon.socket"]
        if runner.run(["systemctl", "is-active", "--quiet", *units], env=env).returncode == 0:
            return DaemonControl(kind="systemd")
    sock = paths.daemon_socket
    pid = probe.listener_pid(sock)
    hint = (
        "Run the daemon under systemd, or add the job user to trusted-users so nix-job "
        "needs no restart."
    )
    if pid is None:
        raise NixConfigError(
            f"cannot tell which process serves {sock}, so the nix-daemon cannot be "
            f"restarted to read new settings; nothing was changed.\n{hint}"
        )
    if pid == 1:
        raise NixConfigError(
            f"the nix-daemon on {sock} is PID 1 (a container's entrypoint or socket "
            f"activation); restarting it would stop the container; nothing was changed.\n{hint}"
        )
    try:
        raw = (paths.proc_dir / str(pid) / "cmdline").read_bytes()
    except OSError as exc:
        raise NixConfigError(
            f"cannot read the command line of the nix-daemon (PID {pid}): {exc}; nothing "
            f"was changed.\n{hint}"
        ) from exc
    argv = tuple(os.fsdecode(part) for part in raw.split(b"\0") if part)
    if not is_daemon_cmdline(argv):
        raise NixConfigError(
            f"the process serving {sock} (PID {pid}: {shlex.join(argv) or '?'}) is not a "
            f"nix-daemon nix-job knows how to restart; nothing was changed.\n{hint}"
        )
    return DaemonControl(kind="manual", argv=argv)
