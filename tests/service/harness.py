"""Helpers for the watch-store tests: the service as a real process, a chroot Nix store to add
paths to, waiting for conditions, reading logfmt lines."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from nix_job.core.secret import Secret
from tests.attic_double.server import AtticDouble
from tests.nixenv import NixEnv

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 60.0  # upper bound for "eventually", never a timing assertion


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_line(line: str) -> dict[str, str]:
    """One logfmt line → fields (quoted values are JSON strings)."""
    fields: dict[str, str] = {}
    rest = line.strip()
    while rest:
        key, _, rest = rest.partition("=")
        if rest.startswith('"'):
            decoder = json.JSONDecoder()
            value, end = decoder.raw_decode(rest)
            fields[key] = str(value)
            rest = rest[end:].lstrip()
        else:
            value, _, rest = rest.partition(" ")
            fields[key] = value
    return fields


class ChrootStore:
    """A chroot Nix store of its own (no other test or developer touches it), reached with
    NIX_REMOTE=<root>; paths are added with ``nix-store --add``, which takes the same lock,
    register, unlock route as a substitution."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "chroot"
        self.store_dir = self.root / "nix" / "store"
        self.store_dir.mkdir(parents=True)
        self.nix = NixEnv.create(tmp / "nixenv", remote=str(self.root))
        self._files = tmp / "files"
        self._files.mkdir()

    def add(self, name: str = "blob", size: int = 100) -> str:
        tag = uuid.uuid4().hex
        source = self._files / f"{name}-{tag[:8]}"
        source.write_bytes((tag * (size // len(tag) + 1)).encode()[:size])
        return self.nix.text(["nix-store", "--add", str(source)])

    def dump(self, path: str) -> bytes:
        physical = str(self.store_dir) + path.removeprefix("/nix/store")
        return self.nix.run(["nix-store", "--dump", physical]).stdout


class ServiceProcess:
    """``python -m nix_job watch-store`` started for real; stderr and stdout go to one file."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.argv = [sys.executable, "-m", "nix_job", "watch-store", *argv]
        self.log = log
        with log.open("ab") as out:
            out.write(f"### {shlex.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, str]]:
        found = []
        for line in self.text().splitlines():
            if f" event={name} " in f"{line} " and line.startswith("ts="):
                found.append(parse_line(line))
        return found

    def wait_for_event(self, name: str, count: int = 1, timeout: float = WAIT_S) -> None:
        def seen() -> bool:
            assert self.proc.poll() is None, f"the service exited early:\n{self.text()}"
            return len(self.events(name)) >= count

        wait_until(seen, timeout, f"{count} × event={name}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, float]:
        """Send ``signum``; the exit code and how long the process took to exit."""
        began = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def service_env(
    nix: NixEnv, double: AtticDouble, *, cache: str = "demo", **extra: str
) -> dict[str, str]:
    env = nix.env()
    env.update(ATTIC_SERVER=double.url, ATTIC_CACHE=cache, PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def uploads_per_path(double: AtticDouble) -> dict[str, int]:
    """Successful upload-path requests per store path."""
    counts: dict[str, int] = {}
    for request in double.upload_requests():
        if request.status == 200 and request.metadata is not None:
            path = str(request.metadata["store_path"])
            counts[path] = counts.get(path, 0) + 1
    return counts


def assert_no_secret(text: str, *tokens: str) -> None:
    for token in tokens:
        for form in Secret(token).derived_forms():
            assert form not in text, "a form of the token reached the output"
