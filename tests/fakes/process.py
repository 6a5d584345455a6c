"""Fake helper-process runners: scripted answers, or a machine whose file commands really run."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nix_job.process import ProcessResult, SubprocessRunner

Handler = Callable[[tuple[str, ...]], ProcessResult | None]


@dataclass
class FakeRunner:
    """Records every call; the first handler that returns a result answers, else exit 127."""

    handlers: list[Handler] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    spawned: list[tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> ProcessResult:
        args = tuple(argv)
        self.calls.append(args)
        for handler in self.handlers:
            result = handler(args)
            if result is not None:
                if on_line is not None:
                    for line in result.stdout.splitlines():
                        on_line(line)
                return result
        return ProcessResult(argv=args, returncode=127, stdout="", stderr="not scripted")

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        self.spawned.append((tuple(argv), dict(env)))
        return 4242


def ok(args: tuple[str, ...], stdout: str = "", code: int = 0) -> ProcessResult:
    return ProcessResult(argv=args, returncode=code, stdout=stdout, stderr="")


def answer(match: Callable[[tuple[str, ...]], bool], stdout: str = "", code: int = 0) -> Handler:
    def handler(args: tuple[str, ...]) -> ProcessResult | None:
        return ok(args, stdout, code) if match(args) else None

    return handler


SUDO = ("sudo", "-n")


@dataclass
class FakeProbe:
    answering: bool = True
    pid: int | None = 4242
    silent_after_restart: int = 0  # how many probes stay unanswered after a (re)start
    probes: int = 0

    def answers(self, path: Path) -> bool:
        self.probes += 1
        if self.silent_after_restart > 0:
            self.silent_after_restart -= 1
            return False
        return self.answering

    def listener_pid(self, path: Path) -> int | None:
        return self.pid if self.answering else None


@dataclass
class SystemFake:
    """Records every command. File commands (install, mv, rm, mkdir) and Nix calls really run
    (after the sudo prefix is checked and removed); daemon and sudo commands are scripted."""

    probe: FakeProbe
    sudo_ok: bool = True
    systemd_active: bool = True
    restart_silence: int = 0
    show_config: Callable[[], str] | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)
    timeouts: list[float | None] = field(default_factory=list)
    spawned: list[tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=list)
    real: SubprocessRunner = field(default_factory=SubprocessRunner)

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> ProcessResult:
        args = tuple(argv)
        self.calls.append(args)
        self.timeouts.append(timeout)
        bare = args[2:] if args[:2] == SUDO else args
        if args == (*SUDO, "true"):
            return ProcessResult(
                argv=args, returncode=0 if self.sudo_ok else 1, stdout="", stderr=""
            )
        if bare[:2] == ("systemctl", "is-active"):
            return ProcessResult(
                argv=args, returncode=0 if self.systemd_active else 3, stdout="", stderr=""
            )
        if bare[:2] == ("systemctl", "restart"):
            self.probe.silent_after_restart = self.restart_silence
            return ProcessResult(argv=args, returncode=0, stdout="", stderr="")
        if bare[:1] == ("kill",):
            self.probe.answering = False
            return ProcessResult(argv=args, returncode=0, stdout="", stderr="")
        if bare[:1] in (("install",), ("mv",), ("rm",), ("mkdir",)):
            return self.real.run(bare, env=env, timeout=timeout)
        if Path(bare[0]).name == "nix" and self.show_config is not None:
            return ProcessResult(argv=args, returncode=0, stdout=self.show_config(), stderr="")
        if Path(bare[0]).name == "nix":
            return self.real.run(bare, env=env, timeout=timeout)
        return ProcessResult(argv=args, returncode=127, stdout="", stderr="not scripted")

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        self.spawned.append((tuple(argv), dict(env)))
        self.probe.answering = True
        self.probe.pid = 5000 + len(self.spawned)
        self.probe.silent_after_restart = self.restart_silence
        return self.probe.pid

    def daemon_calls(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if ("systemctl" in c and "restart" in c) or "kill" in c]
