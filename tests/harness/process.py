"""One step's child process: its own process group, merged stdout/stderr read line by line,
a harness timeout (SIGKILL the group) and the runner's cancellation sequence
(SIGINT, then SIGTERM after 7.5 s, then SIGKILL after 2.5 s more), with configurable delays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

POLL_S = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """Cancel the run the way GitHub does when someone presses "Cancel workflow".

    The countdown starts when the targeted step starts, or, if given, when ``when_output``
    accepts a raw output line of that step or ``when_set`` is set (whichever comes first).
    After ``after_s`` more seconds the step gets SIGINT, ``sigterm_after_s`` later SIGTERM, and
    ``sigkill_after_s`` after that the whole group gets SIGKILL. Later steps then run only if
    their ``if:`` calls ``always()`` or ``cancelled()``.

    ``target``: ``"group"`` signals the step's whole process group. The real runner signals only
    the step's entry process (the shell; actions/runner#1309 quotes the docs), so a script must
    ``exec`` its main program for that program to see the signal: use ``"leader"`` to check that.
    """

    step: str | None = None  # step id (or name); None: the first step that runs
    after_s: float = 0.0
    when_output: Callable[[str], bool] | None = None
    when_set: threading.Event | None = None
    sigterm_after_s: float = 7.5
    sigkill_after_s: float = 2.5
    target: Literal["group", "leader"] = "group"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessOutcome:
    exit_code: int
    signals_sent: tuple[str, ...]
    cancelled: bool
    timed_out: bool
    leftover_processes: tuple[str, ...]
    pipe_left_open: bool


def group_members(pgid: int) -> list[str]:
    """Live (non-zombie) processes in a process group, as ``"pid cmdline"``; Linux /proc."""
    members: list[str] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            state, pgrp = fields[0], int(fields[2])
            if pgrp != pgid or state == "Z":
                continue
            cmdline = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        members.append(f"{entry} {cmdline.decode(errors='replace').strip()}")
    return members


def kill_group(pgid: int, *, wait_s: float = 5.0) -> None:
    """SIGKILL a process group and wait until none of its members is still alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    give_up = time.monotonic() + wait_s
    while group_members(pgid) and time.monotonic() < give_up:
        time.sleep(POLL_S)


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    on_line: Callable[[str], None],
    deadline: float | None,
    cancel: Cancel | None,
) -> ProcessOutcome:
    """Run ``argv`` in a new session; feed every output line to ``on_line`` (reader thread).

    ``deadline`` is a ``time.monotonic()`` instant after which the group is killed. Processes
    still in the group when the leader exits are recorded, then killed (the real runner would
    leave them running until the job ends).
    """
    proc = subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    stream = proc.stdout
    matched = threading.Event()
    predicate = cancel.when_output if cancel is not None else None

    def read() -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if predicate is not None and not matched.is_set() and predicate(line):
                matched.set()
            on_line(line)

    reader = threading.Thread(target=read, name=f"harness-reader-{proc.pid}", daemon=True)
    reader.start()

    sent: list[str] = []
    timed_out = False
    started = time.monotonic()
    trigger_at: float | None = None
    waits_for_trigger = cancel is not None and (
        cancel.when_output is not None or cancel.when_set is not None
    )
    if cancel is not None and not waits_for_trigger:
        trigger_at = started

    def send(sig: signal.Signals, *, whole_group: bool) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if whole_group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        sent.append(sig.name)

    while proc.poll() is None:
        now = time.monotonic()
        if cancel is not None and trigger_at is None:
            external = cancel.when_set is not None and cancel.when_set.is_set()
            if matched.is_set() or external:
                trigger_at = now
        if cancel is not None and trigger_at is not None:
            elapsed = now - trigger_at
            group = cancel.target == "group"
            if elapsed >= cancel.after_s and "SIGINT" not in sent:
                send(signal.SIGINT, whole_group=group)
            term_at = cancel.after_s + cancel.sigterm_after_s
            if elapsed >= term_at and "SIGTERM" not in sent:
                send(signal.SIGTERM, whole_group=group)
            if elapsed >= term_at + cancel.sigkill_after_s and "SIGKILL" not in sent:
                send(signal.SIGKILL, whole_group=True)
        if deadline is not None and now >= deadline and not timed_out:
            timed_out = True
            send(signal.SIGKILL, whole_group=True)
        time.sleep(POLL_S)
    exit_code = proc.returncode

    leftovers = tuple(group_members(proc.pid))
    if leftovers:
        kill_group(proc.pid)
    reader.join(timeout=5.0)
    pipe_left_open = reader.is_alive()
    if not pipe_left_open:
        stream.close()
    return ProcessOutcome(
        exit_code=exit_code,
        signals_sent=tuple(sent),
        cancelled="SIGINT" in sent,
        timed_out=timed_out,
        leftover_processes=leftovers,
        pipe_left_open=pipe_left_open,
    )
