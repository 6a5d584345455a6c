"""Privileged changes to nix.conf: writes through sudo (or as root), daemon restarts, the lock
that serialises nix-job runs on one machine, and the restore of exactly what this run added."""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from nix_job.core.errors import NixConfigError
from nix_job.nix.daemon import DaemonControl, DaemonSocketProbe, SystemPaths
from nix_job.nix.settings import BlockHeader, strip_blocks
from nix_job.process import CommandRunner

log = logging.getLogger(__name__)

#: The longest a privileged command (sudo install, mv, systemctl) may take.
COMMAND_TIMEOUT_S = 120.0

# ---------------------------------------------------------------------------------------------
# Applying and restoring


class Privileged:
    """File and daemon operations, as argv through the runner, with sudo unless root."""

    def __init__(
        self,
        *,
        runner: CommandRunner,
        prefix: tuple[str, ...],
        probe: DaemonSocketProbe,
        paths: SystemPaths,
        daemon_env: Mapping[str, str],
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        timeout_s: float,
    ) -> None:
        self.runner = runner
        self.prefix = prefix
        self.probe = probe
        self.paths = paths
        self.daemon_env = dict(daemon_env)
        self.clock = clock
        self.sleep = sleep
        self.timeout_s = timeout_s
        self.command_timeout_s = COMMAND_TIMEOUT_S

    @contextmanager
    def bounded(self, budget_s: float | None) -> Iterator[None]:
        """Within the block, no wait and no command takes longer than ``budget_s`` (a
        cancelled run has seconds before the runner kills it)."""
        if budget_s is None:
            yield
            return
        saved = (self.timeout_s, self.command_timeout_s)
        self.timeout_s = min(self.timeout_s, budget_s)
        self.command_timeout_s = min(self.command_timeout_s, budget_s)
        try:
            yield
        finally:
            self.timeout_s, self.command_timeout_s = saved

    def run(self, argv: Sequence[str], why: str) -> None:
        full = [*self.prefix, *argv]
        done = self.runner.run(full, timeout=self.command_timeout_s)
        if done.returncode != 0:
            raise NixConfigError(
                f"`{shlex.join(full)}` failed (exit {done.returncode}) while {why}: "
                f"{done.tail(5) or 'no output'}.\nnix-job needs root or passwordless sudo for "
                "this; or add the job user to trusted-users so no system change is needed."
            )

    def install_file(self, src: Path, target: Path, *, mode: int, uid: int, gid: int) -> None:
        staged = target.with_name(f".{target.name}.nix-job")
        why = f"writing {target}"
        self.run(
            ["install", "-m", f"{mode:04o}", "-o", str(uid), "-g", str(gid), str(src), str(staged)],
            why,
        )
        self.run(["mv", "-f", str(staged), str(target)], why)

    def restart(self, control: DaemonControl) -> None:
        sock = self.paths.daemon_socket
        if control.kind == "systemd":
            self.run(["systemctl", "restart", control.unit], "restarting the nix-daemon")
        else:
            pid = self.probe.listener_pid(sock)
            if pid is not None and pid > 1:
                self.run(["kill", "-TERM", str(pid)], "stopping the nix-daemon")
                self.wait(lambda: not self.probe.answers(sock), "the old nix-daemon to stop")
            self.runner.spawn([*self.prefix, *control.argv], env=self.daemon_env)
        self.wait(lambda: self.probe.answers(sock), f"the nix-daemon to answer on {sock}")

    def wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = self.clock() + self.timeout_s
        while not done():
            if self.clock() >= deadline:
                raise NixConfigError(
                    f"timed out after {self.timeout_s:.0f} s waiting for {what}.\nCheck the "
                    "daemon (`systemctl status nix-daemon`, `journalctl -u nix-daemon`, or its "
                    "process) and start it by hand if needed."
                )
            self.sleep(0.1)


class Restorer:
    """Takes this run's block out of nix.conf and restarts the daemon once more. Idempotent,
    thread-safe. When the file is still what this run wrote, the backup goes back byte for
    byte; when it changed meanwhile (another run's block, an edit by hand), only this run's
    block is removed from the current content."""

    def __init__(
        self,
        *,
        priv: Privileged,
        target: Path,
        source: Path | None,  # bytes to put back; None: the file did not exist
        written: bytes,  # what this run put in place
        header: BlockHeader,  # this run's block
        mode: int,
        uid: int,
        gid: int,
        control: DaemonControl | None,
        workdir: Path,
        lock: Callable[[float | None], AbstractContextManager[None]],
    ) -> None:
        self._priv = priv
        self._target = target
        self._source = source
        self._written = written
        self._header = header
        self._mode, self._uid, self._gid = mode, uid, gid
        self._control = control
        self._workdir = workdir
        self._lock_file = lock
        self._lock = threading.Lock()
        self.done = False

    def _current(self) -> bytes | None:
        """The file as it is now, through the privileged helper when we cannot read it."""
        try:
            return self._target.read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError:
            copy = self._workdir / "nix.conf.now"
            self._priv.run(
                [
                    "install", "-m", "0600", "-o", str(os.getuid()), "-g", str(os.getgid()),
                    str(self._target), str(copy),
                ],
                f"reading {self._target}",
            )  # fmt: skip
            return copy.read_bytes()
        except OSError as exc:
            raise NixConfigError(f"cannot read {self._target}: {exc}") from exc

    def _is_ours(self, header: BlockHeader) -> bool:
        return header == self._header

    def _put_back(self) -> None:
        current = self._current()
        if current == self._written:
            if self._source is None:
                self._priv.run(["rm", "-f", str(self._target)], f"removing {self._target}")
            else:
                self._priv.install_file(
                    self._source, self._target, mode=self._mode, uid=self._uid, gid=self._gid
                )
            return
        if current is None:
            log.info(f"{self._target} was removed during the job; nothing to take out of it")
            return
        scan = strip_blocks(
            current.decode("utf-8", "surrogateescape"), keep=lambda h: not self._is_ours(h)
        )
        if not scan.run_ids:
            log.info(f"{self._target} holds no nix-job block of run {self._header.run_id}")
            return
        log.info(
            f"{self._target} changed during the job (another nix-job run or an edit); "
            f"removing only the block of run {self._header.run_id} and keeping the rest"
        )
        info = self._target.stat()
        edited = self._workdir / "nix.conf.edited"
        edited.write_bytes(scan.text.encode("utf-8", "surrogateescape"))
        self._priv.install_file(
            edited, self._target, mode=info.st_mode & 0o7777, uid=info.st_uid, gid=info.st_gid
        )

    def restore(self, budget_s: float | None = None) -> None:
        """Put nix.conf back; with ``budget_s``, every wait (the lock, the daemon, each sudo
        command) is cut to that many seconds."""
        with self._lock:
            if self.done:
                return
            try:
                with self._priv.bounded(budget_s), self._lock_file(budget_s):
                    self._put_back()
                    if self._control is not None:
                        self._priv.restart(self._control)
            except NixConfigError as exc:
                raise NixConfigError(
                    f"restoring {self._target} failed: {exc.message}\nThe original is kept at "
                    f"{self._source or '(it did not exist)'}; put it back by hand (keeping other "
                    "nix-job runs' blocks) and restart nix-daemon before the next job."
                ) from exc
            self.done = True
            shutil.rmtree(self._workdir, ignore_errors=True)
            log.info(f"Restored {self._target}")


@contextmanager
def directory_lock(
    directory: Path,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    timeout_s: float,
) -> Iterator[None]:
    """Serialise nix-job runs that change files in ``directory`` (flock on the directory, which
    any user may open and which, unlike the file, is never replaced). Without the directory
    (or permission to open it) there is nothing to share, and no lock is taken."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        deadline = clock() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() >= deadline:
                    raise NixConfigError(
                        f"another nix-job run kept {directory} locked for {timeout_s:.0f} s; "
                        "nothing was changed by this step.\nCheck for a hung nix-job process "
                        "on this machine (it holds the lock until it exits)."
                    ) from None
                sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


class ConfLock:
    """``directory_lock`` on the nix.conf directory, re-entrant within this process (flock
    locks of two descriptors conflict even in one process)."""

    def __init__(self, open_lock: Callable[[float | None], AbstractContextManager[None]]) -> None:
        self._open_lock = open_lock
        self._mutex = threading.RLock()
        self._depth = 0
        self._held: AbstractContextManager[None] | None = None

    @contextmanager
    def __call__(self, timeout_s: float | None = None) -> Iterator[None]:
        """The lock (re-entered when this thread holds it); ``timeout_s`` bounds the wait."""
        with self._mutex:
            if self._depth == 0:
                held = self._open_lock(timeout_s)
                held.__enter__()
                self._held = held
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._held is not None:
                    held, self._held = self._held, None
                    held.__exit__(None, None, None)
