"""Fake adapters for the run lifecycle (``nix_job.adapters.Adapters``): no Nix, no network, no
process; every call is recorded in one ordered list of events, so tests can assert what ran,
what did not, and in which order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nix_job.adapters import Adapters, PublisherRequest
from nix_job.cache.attic import CacheConfig, UploadResult
from nix_job.cache.target import CacheTarget
from nix_job.cache.token_source import StaticToken, TokenSource
from nix_job.command import Cancellation, CommandExit
from nix_job.core.errors import NixJobError
from nix_job.core.problem import Problem
from nix_job.core.secret import Secret
from nix_job.core.token_grant import Grant
from nix_job.nix.facts import InstallRequest, NixInstallation
from nix_job.nix.install import Bootstrap
from nix_job.nix.path_info import PathInfo
from nix_job.nix.settings import Mode, Setting
from nix_job.push.publisher import Outcome
from nix_job.push.report import PushReport

KEY = "demo:vlsd7ZHIXNnKXEQShVnd7erE8zcuSKrBWRpV6zTibnA="


@dataclass
class Recorder:
    """What the fakes saw, in order: ``events`` names the calls, the rest keeps arguments."""

    events: list[str] = field(default_factory=list)
    settings: list[Setting] = field(default_factory=list)
    command_env: dict[str, str] = field(default_factory=dict)
    command_cwd: Path | None = None
    publisher_requests: list[PublisherRequest] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    # Called from inside the command, the drain and the restore (e.g. to look at the netrc).
    during_command: Callable[[], None] | None = None
    during_finish: Callable[[], None] | None = None
    during_restore: Callable[[], None] | None = None
    restore_budgets: list[float | None] = field(default_factory=list)
    # What the Attic client asks for its token (ATTIC_TOKEN, or the exchange's renewing one).
    token_source: TokenSource | None = None
    exchanged: list[tuple[str, str, str]] = field(default_factory=list)  # (url, id token, cache)


def installation() -> NixInstallation:
    return NixInstallation(
        nix=Path("/nix/bin/nix"),
        bin_dir=Path("/nix/bin"),
        version="2.8.0",
        version_line="nix (Nix) 2.8.0",
        on_path=True,
        store="local",
        daemon=False,
        daemon_reason="the store is 'local'",
        user="runner",
        trusted=True,
        trust_reason="no daemon",
    )


@dataclass
class FakeApplied:
    recorder: Recorder
    mode: Mode = "env"
    env: Mapping[str, str] = field(default_factory=lambda: {"NIX_CONFIG": "x = y\n"})
    conf_path: Path | None = None
    problems: tuple[Problem, ...] = ()

    def restore(self, budget_s: float | None = None) -> None:
        self.recorder.events.append("restore")
        self.recorder.restore_budgets.append(budget_s)
        if self.recorder.during_restore is not None:
            self.recorder.during_restore()


@dataclass
class FakeAtticClient:
    recorder: Recorder
    cache: str
    config: CacheConfig | Exception

    def cache_config(self) -> CacheConfig:
        self.recorder.events.append("cache-config")
        if isinstance(self.config, Exception):
            raise self.config
        return self.config

    def missing_paths(self, hashes: Iterable[str]) -> set[str]:
        raise AssertionError("the fake publisher never asks the fake client")

    def upload(self, info: PathInfo, nar_chunks: Iterable[bytes]) -> UploadResult:
        raise AssertionError("the fake publisher never uploads through the fake client")

    def close(self) -> None:
        self.recorder.events.append("attic-close")


@dataclass
class FakePublisher:
    recorder: Recorder
    report: PushReport

    def start(self) -> None:
        self.recorder.events.append("publisher-start")

    def finish(
        self, *, roots: list[str], timeout_s: float, cancelled: Callable[[], bool]
    ) -> Outcome:
        del timeout_s, cancelled
        self.recorder.events.append("publisher-finish")
        if self.recorder.during_finish is not None:
            self.recorder.during_finish()
        self.recorder.roots = roots
        return Outcome(report=self.report, watcher_problem=None)

    def close(self) -> None:
        self.recorder.events.append("publisher-close")


@dataclass
class FakeExchange:
    """A token exchange: hands out ``grants`` in turn (the last one again and again), or raises
    an exception among them."""

    recorder: Recorder
    url: str
    grants: list[Grant | NixJobError]

    def exchange(self, id_token: Secret, *, cache: str) -> Grant:
        self.recorder.events.append("exchange")
        self.recorder.exchanged.append((self.url, id_token.reveal(), cache))
        answer = self.grants.pop(0) if len(self.grants) > 1 else self.grants[0]
        if isinstance(answer, NixJobError):
            raise answer
        return answer

    def close(self) -> None:
        self.recorder.events.append("exchange-close")


def fake_adapters(
    recorder: Recorder,
    *,
    exit_code: int = 0,
    config: CacheConfig | Exception | None = None,
    push: PushReport | None = None,
    cancel_in: str | None = None,
    cancellation: Cancellation | None = None,
    grants: list[Grant | NixJobError] | None = None,
) -> Adapters:
    """Adapters that record into ``recorder``. ``cancel_in`` names the call ("bootstrap",
    "command") during which ``cancellation`` is triggered, as a runner's signal would."""
    cache_config = config or CacheConfig(
        substituter_endpoint=None, public_key=KEY, is_public=True, store_dir="/nix/store"
    )

    def maybe_cancel(where: str) -> None:
        if cancel_in == where and cancellation is not None:
            cancellation.trigger()

    def bootstrap(request: InstallRequest, work: Path, env: Mapping[str, str]) -> Bootstrap:
        del request, work, env
        recorder.events.append("bootstrap")
        maybe_cancel("bootstrap")
        return Bootstrap(
            installation=installation(),
            installed=False,
            path_env="/nix/bin:/usr/bin:/bin",
            path_for_later_steps=None,
            problems=(),
        )

    def configure(settings: list[Setting], nix: NixInstallation, **kwargs: Any) -> FakeApplied:
        del nix, kwargs
        recorder.events.append("configure")
        recorder.settings = list(settings)
        return FakeApplied(recorder=recorder)

    def attic(
        target: CacheTarget, token: Secret | TokenSource | None, connections: int
    ) -> FakeAtticClient:
        del connections
        recorder.events.append("attic")
        source = StaticToken(token) if token is None or isinstance(token, Secret) else token
        recorder.token_source = source
        return FakeAtticClient(recorder=recorder, cache=target.cache, config=cache_config)

    def publisher(request: PublisherRequest) -> FakePublisher:
        recorder.events.append("publisher")
        recorder.publisher_requests.append(request)
        return FakePublisher(recorder=recorder, report=push or PushReport())

    def command(
        script: str,
        *,
        cwd: Path,
        env: Mapping[str, str],
        script_dir: Path,
        cancellation: Cancellation,
    ) -> CommandExit:
        del script, script_dir
        recorder.events.append("command")
        recorder.command_env = dict(env)
        recorder.command_cwd = cwd
        if recorder.during_command is not None:
            recorder.during_command()
        maybe_cancel("command")
        if cancellation.cancelled:
            return CommandExit(exit_code=cancellation.exit_code, seconds=0.0, cancelled=True)
        return CommandExit(exit_code=exit_code, seconds=0.0, cancelled=False)

    def exchange(url: str) -> FakeExchange:
        if grants is None:
            raise AssertionError("the run asked a token exchange it was not given")
        return FakeExchange(recorder=recorder, url=url, grants=list(grants))

    return Adapters(
        bootstrap=bootstrap,
        configure=configure,
        attic=attic,
        exchange=exchange,
        publisher=publisher,
        command=command,
    )
