"""The I/O the run lifecycle uses, behind small protocols, with the real implementations.

``nix_job.run`` receives an ``Adapters`` value; the entrypoint passes ``Adapters()`` (the real
ones), and the lifecycle's fast tests pass fakes (``tests/fakes.py``). Nothing here decides
anything: each factory only builds an adapter from what the lifecycle already decided.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from nix_job.cache.attic import AtticClient, CacheConfig
from nix_job.cache.credentials import TokenExchange
from nix_job.cache.exchange_client import ExchangeClient
from nix_job.cache.target import CacheTarget
from nix_job.cache.token_source import TokenSource
from nix_job.command import Cancellation, CommandExit, run_command
from nix_job.core.problem import Problem
from nix_job.core.secret import Secret
from nix_job.nix.configurator import NixConfigurator
from nix_job.nix.facts import InstallRequest, NixInstallation
from nix_job.nix.install import Bootstrap, NixBootstrapper
from nix_job.nix.settings import Mode, Setting
from nix_job.nix.store import NixStore
from nix_job.process import SubprocessRunner
from nix_job.push.exclude import ExcludeMatcher
from nix_job.push.plan import PushPolicy
from nix_job.push.publisher import Outcome, Publisher
from nix_job.push.types import PushClient


class Attic(PushClient, Protocol):
    """The Attic client as the lifecycle uses it (``nix_job.cache.attic.AtticClient``): the
    cache config for reads and the gate, the push API for the publisher."""

    @property
    def cache(self) -> str: ...

    def cache_config(self) -> CacheConfig: ...


class Applied(Protocol):
    """Settings delivered to Nix (``nix_job.nix.configurator.AppliedConfig``)."""

    @property
    def mode(self) -> Mode: ...

    @property
    def env(self) -> Mapping[str, str]: ...

    @property
    def conf_path(self) -> Path | None: ...

    @property
    def problems(self) -> tuple[Problem, ...]: ...

    def restore(self, budget_s: float | None = None) -> None: ...


class PublishingRun(Protocol):
    """The watcher and push session around the command (``nix_job.push.publisher``)."""

    def start(self) -> None: ...

    def finish(
        self, *, roots: list[str], timeout_s: float, cancelled: Callable[[], bool]
    ) -> Outcome: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PublisherRequest:
    """What the lifecycle decided a publishing run needs."""

    attic: Attic
    store_env: Mapping[str, str]
    upstream_key_names: tuple[str, ...]
    exclude: str | None
    policy: PushPolicy
    jobs: int
    cancel_grace_s: float


def bootstrap_nix(request: InstallRequest, work: Path, env: Mapping[str, str]) -> Bootstrap:
    """Find Nix or install it (``work`` holds the installer while it runs)."""
    with httpx.Client(follow_redirects=True) as http:
        return NixBootstrapper(runner=SubprocessRunner(), http=http, temp_dir=work, env=env).ensure(
            request
        )


def configure_nix(
    settings: list[Setting],
    installation: NixInstallation,
    *,
    work: Path,
    run_id: str,
    env: Mapping[str, str],
) -> Applied:
    """Deliver ``settings`` where the Nix that runs the command reads them."""
    configurator = NixConfigurator(
        runner=SubprocessRunner(),
        temp_dir=work,
        run_id=run_id,
        env=env,
        is_root=os.geteuid() == 0,
    )
    return configurator.apply(settings, installation=installation)


def attic_client(
    target: CacheTarget, token: Secret | TokenSource | None, connections: int
) -> AtticClient:
    return AtticClient(
        endpoint=target.server, cache=target.cache, token=token, max_connections=connections
    )


def token_exchange(url: str) -> TokenExchange:
    return ExchangeClient(url=url)


def publisher(request: PublisherRequest) -> PublishingRun:
    return Publisher(
        client=request.attic,
        store=NixStore(request.store_env),
        upstream_key_names=request.upstream_key_names,
        exclude=ExcludeMatcher(request.exclude, env=request.store_env) if request.exclude else None,
        policy=request.policy,
        jobs=request.jobs,
        cancel_grace_s=request.cancel_grace_s,
    )


def command(
    script: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    script_dir: Path,
    cancellation: Cancellation,
) -> CommandExit:
    return run_command(script, cwd=cwd, env=env, script_dir=script_dir, cancellation=cancellation)


@dataclass(frozen=True, slots=True, kw_only=True)
class Adapters:
    bootstrap: Callable[[InstallRequest, Path, Mapping[str, str]], Bootstrap] = bootstrap_nix
    configure: Callable[..., Applied] = configure_nix
    attic: Callable[[CacheTarget, Secret | TokenSource | None, int], Attic] = attic_client
    exchange: Callable[[str], TokenExchange] = token_exchange
    publisher: Callable[[PublisherRequest], PublishingRun] = publisher
    command: Callable[..., CommandExit] = command
