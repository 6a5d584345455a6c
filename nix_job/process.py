"""The one seam that starts helper processes: argv only, stdin closed, one result type.

Every Nix CLI call, sudo, systemctl and installer run goes through a ``CommandRunner``; the
user's command is not a helper process (see ``nix_job.command``).
"""

from __future__ import annotations

import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

_OUTPUT_TAIL_LINES = 40

# SECURITY: the one deny-list for every process nix-job starts (helpers and the user's command):
# nix-job's own inputs (NIX_JOB_*, the GitHub token and GitLab's ID token among them), the
# INPUT_* variables act sets for composite steps (nektos/act#2874), the Attic token, and GitHub's
# ID-token request pair: its token is the job's system access token (actions/runner
# ScriptHandler.cs), which nix-job takes for the token exchange; a command that requests ID
# tokens itself runs in a step of its own (the runner gives every step its own copy). Other
# ACTIONS_* variables are the runner's to give: every other step of the job gets them too.
SCRUBBED_PREFIXES = ("NIX_JOB_", "INPUT_")
SCRUBBED_NAMES = frozenset(
    {"ATTIC_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_URL"}
)


def scrubbed_env(base: Mapping[str, str], add: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` without nix-job's inputs and secrets (``SCRUBBED_*``), plus ``add``."""
    env = {
        k: v
        for k, v in base.items()
        if k not in SCRUBBED_NAMES and not k.startswith(SCRUBBED_PREFIXES)
    }
    env.update(add or {})
    return env


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str  # with ``on_line``: the last lines of the merged output
    stderr: str

    def tail(self, lines: int = 15) -> str:
        text = (self.stderr.strip() + "\n" + self.stdout.strip()).strip()
        return "\n".join(text.splitlines()[-lines:])


class CommandRunner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> ProcessResult:
        """Run ``argv`` (never through a shell), stdin closed. A missing program gives 127.

        With ``on_line``, stdout and stderr are merged and every line is passed on as it comes.
        """
        ...

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        """Start ``argv`` detached (own session, no stdio), do not wait; return its pid."""
        ...


class SubprocessRunner:
    """The real ``CommandRunner``: argv lists only, text decoded with surrogateescape."""

    def __init__(self) -> None:
        # Detached children are kept referenced: Popen warns when collected while running.
        self._detached: list[subprocess.Popen[bytes]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> ProcessResult:
        args = tuple(argv)
        try:
            if on_line is None:
                done = subprocess.run(
                    args,
                    env=None if env is None else dict(env),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    errors="surrogateescape",
                    timeout=timeout,
                    check=False,
                )
                return ProcessResult(
                    argv=args, returncode=done.returncode, stdout=done.stdout, stderr=done.stderr
                )
            return self._stream(args, env, timeout, on_line)
        except FileNotFoundError as exc:
            return ProcessResult(argv=args, returncode=127, stdout="", stderr=str(exc))
        except subprocess.TimeoutExpired:
            return ProcessResult(
                argv=args, returncode=124, stdout="", stderr=f"timed out after {timeout} s"
            )

    @staticmethod
    def _stream(
        args: tuple[str, ...],
        env: Mapping[str, str] | None,
        timeout: float | None,
        on_line: Callable[[str], None],
    ) -> ProcessResult:
        tail: deque[str] = deque(maxlen=_OUTPUT_TAIL_LINES)
        with subprocess.Popen(
            args,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="surrogateescape",
        ) as proc:
            timer = threading.Timer(timeout, proc.kill) if timeout is not None else None
            if timer is not None:
                timer.start()
            try:
                assert proc.stdout is not None  # noqa: S101 (PIPE was requested)
                for line in proc.stdout:
                    text = line.rstrip("\n")
                    tail.append(text)
                    on_line(text)
                code = proc.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        return ProcessResult(argv=args, returncode=code, stdout="\n".join(tail), stderr="")

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        proc = subprocess.Popen(
            tuple(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._detached = [p for p in self._detached if p.poll() is None]
        self._detached.append(proc)
        return proc.pid
