"""Secrets leave nix-job's process environment before anything else runs.

``/proc/<pid>/environ`` shows the environment a process was started with, to the same user and
to root, for as long as it runs: the user's command could read ``ATTIC_TOKEN`` from its parent
(nix-job) even though its own environment is scrubbed. So at start-up nix-job execs itself again
with the secrets removed from the environment and handed over on a pipe (an inherited file
descriptor whose number is the only trace), and it makes itself non-dumpable so that processes
of the same non-root user cannot read its memory either. Used only by the entrypoint.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from collections.abc import Iterable, Mapping

#: The inherited descriptor the secrets arrive on after the re-exec.
SECRETS_FD_ENV = "NIX_JOB_INTERNAL_SECRETS_FD"
#: A pipe holds 64 KiB before a writer blocks; secrets are far smaller (an Attic JWT ~1 KiB).
MAX_SECRETS_BYTES = 32 * 1024
_PR_SET_DUMPABLE = 4  # <linux/prctl.h>


class HandoffError(Exception):
    """The secrets could not be handed over; the message names the variable, never a value."""


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def receive(env: dict[str, str]) -> dict[str, str] | None:
    """After the re-exec: the secrets from the inherited pipe (the marker variable is removed
    from ``env``); None when this process was not started by ``reexec``."""
    marker = env.pop(SECRETS_FD_ENV, None)
    if marker is None:
        return None
    try:
        data = json.loads(_read_all(int(marker)))
    except (OSError, ValueError) as exc:
        raise HandoffError(
            f"the secrets handed over on descriptor {marker!r} could not be read "
            f"({type(exc).__name__}); {SECRETS_FD_ENV} is internal to nix-job, do not set it"
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise HandoffError("the secrets handed over are not a JSON object of strings")
    return data


def reexec(env: Mapping[str, str], names: Iterable[str]) -> None:
    """Exec this interpreter again, with its original command line (``sys.orig_argv``: the
    same options, script or module and arguments), without the variables ``names`` in its
    environment, which it receives on a pipe instead. Returns only when none of them is set
    (nothing to hide); raises HandoffError when they cannot be sent."""
    secrets = {name: env[name] for name in names if env.get(name)}
    if not secrets:
        return
    data = json.dumps(secrets).encode()
    if len(data) > MAX_SECRETS_BYTES:
        raise HandoffError(
            f"{', '.join(sorted(secrets))} hold more than {MAX_SECRETS_BYTES} bytes; a token is "
            "about one kilobyte: check what the variable is set to"
        )
    read_end, write_end = os.pipe()
    os.write(write_end, data)  # fits in the pipe's buffer: never blocks
    os.close(write_end)
    os.set_inheritable(read_end, True)
    clean = {k: v for k, v in env.items() if k not in secrets}
    clean[SECRETS_FD_ENV] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], clean)  # noqa: S606


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``: processes of the same non-root user can no longer read
    this one's memory or ``/proc/<pid>/environ`` (root with CAP_SYS_PTRACE still can).
    Linux only; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
