"""Running the user's command: bash with ``-eo pipefail``, live output, forwarded signals.

Also owns cancellation: SIGINT/SIGTERM set a flag that every phase can read, and are passed on
to the command's process group while it runs. The caller builds the command's environment with
``nix_job.process.scrubbed_env``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

BASH_ARGV = ("bash", "--noprofile", "--norc", "-eo", "pipefail")

# The runner sends SIGTERM 7.5 s after SIGINT and SIGKILL 2.5 s later; a command still alive
# this long after a cancellation is killed, early enough that nix-job can still drain briefly
# and clean up before its own SIGKILL (else the command's group would outlive the job).
KILL_AFTER_S = 4.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandExit:
    exit_code: int
    seconds: float
    cancelled: bool


def exit_code_of(returncode: int) -> int:
    """Popen's negative return code for a signal becomes the shell convention 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class Cancellation:
    """SIGINT/SIGTERM handling for the whole run. Install once, from the main thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signum = signum
        self._event.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

    def trigger(self, signum: int = signal.SIGTERM) -> None:
        """Cancel as if ``signum`` had arrived (for callers that detect other reasons to stop)."""
        self._handle(signum, None)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def attach(self, child: subprocess.Popen[bytes] | None) -> None:
        with self._lock:
            self._child = child

    @property
    def exit_code(self) -> int:
        """The conventional exit code of a cancelled run (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + (self.signum or signal.SIGTERM)


def run_command(
    script: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    script_dir: Path,
    cancellation: Cancellation,
    kill_after: float = KILL_AFTER_S,
) -> CommandExit:
    """Run ``script`` with bash in ``cwd``; output goes straight to our stdout and stderr.

    The script is written to a file (as the runner does) so it is never pasted into argv or a
    template. The command runs in its own process group; signals we receive are forwarded to
    it, and if it is still alive ``kill_after`` seconds after a cancellation, it is killed.
    """
    script_dir.mkdir(parents=True, exist_ok=True)
    path = script_dir / "command.sh"
    path.write_text(script if script.endswith("\n") else script + "\n")
    started = time.monotonic()
    if cancellation.cancelled:
        return CommandExit(exit_code=cancellation.exit_code, seconds=0.0, cancelled=True)
    child = subprocess.Popen(
        [*BASH_ARGV, str(path)],
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
    )
    cancellation.attach(child)
    try:
        while True:
            try:
                returncode = child.wait(timeout=0.2 if not cancellation.cancelled else kill_after)
                break
            except subprocess.TimeoutExpired:
                if cancellation.cancelled and child.poll() is None:
                    _kill_group(child)
                    returncode = child.wait()
                    break
    finally:
        cancellation.attach(None)
        _kill_group(child)  # nothing the command started outlives it
    return CommandExit(
        exit_code=exit_code_of(returncode),
        seconds=time.monotonic() - started,
        cancelled=cancellation.cancelled,
    )


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
