"""``nix-job watch-store``: upload every new store path of this machine to Attic, as a
long-running service (docs/watch-store.md).

The composition root of the service: reads the command line and the environment it is handed
(never ``os.environ``), checks everything up front, builds the real adapters, installs the
signal handlers and runs ``Service``. Exit codes: 0 after SIGTERM/SIGINT (or ``--help``);
2 for bad configuration, the message naming each flag or variable; 1 when the store cannot
be watched at all. Server errors never end it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from nix_job import __version__
from nix_job.args import USAGE_EXIT, Exit, Parser, UsageError
from nix_job.cache.attic import AtticClient
from nix_job.core.secret import Secret
from nix_job.nix.store import NixStore
from nix_job.process import SubprocessRunner, scrubbed_env
from nix_job.push.exclude import ExcludeMatcher
from nix_job.push.retry import RetryPolicy
from nix_job.push.session import PushSession
from nix_job.push.types import Excluder, PushClient, PushStore
from nix_job.push.watcher import StoreWatcher
from nix_job.service import config as cfg
from nix_job.service import logs
from nix_job.service.credential import Credential, CredentialError
from nix_job.service.journal import Journal, MarkFile, StateLock
from nix_job.service.ledger import Ledger
from nix_job.service.pipeline import Pipeline, ServerHealth
from nix_job.service.scan import recent_entries, registration_times
from nix_job.service.service import Service, Watcher
from nix_job.service.systemd import NOTIFY_ENVS, Notifier

PROG = "nix-job watch-store"
log = logging.getLogger("nix_job.service")
_Handler = Callable[[int, FrameType | None], Any] | int | None
#: Uploads retry connection errors, timeouts and 5xx for as long as it takes (the queue is
#: bounded instead); the wait grows to a minute between attempts.
SERVICE_RETRY = RetryPolicy(
    attempts=sys.maxsize, initial_wait_s=1.0, max_wait_s=60.0, jitter_s=1.0, total_s=math.inf
)
#: systemd's per-service variables no helper process needs.
_PRIVATE_ENVS = (
    *NOTIFY_ENVS,
    "CREDENTIALS_DIRECTORY",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)


def parser() -> Parser:
    p = Parser(
        prog=PROG,
        allow_abbrev=False,  # SECURITY: `--token X` must not become `--token-file X`
        description="Watch the Nix store and upload every new valid path (with its closure) to "
        "an Attic cache, until stopped. The token comes from ATTIC_TOKEN or --token-file, "
        "never from an argument.",
    )
    p.add_argument("--server", help="Attic server URL (default: $ATTIC_SERVER)")
    p.add_argument("--cache", help="Attic cache name (default: $ATTIC_CACHE)")
    p.add_argument("--exclude", metavar="REGEX", help="never upload store paths matching REGEX")
    p.add_argument("--jobs", type=int, default=cfg.DEFAULT_JOBS, help="parallel uploads (4)")
    p.add_argument(
        "--token-file", metavar="PATH", help="file holding the token; re-read when it changes"
    )
    p.add_argument(
        "--state-dir", metavar="DIR", help="journal and mark (default: $STATE_DIRECTORY)"
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=cfg.DEFAULT_STATUS_MINUTES,
        metavar="MINUTES",
        help="log a status line this often; 0: only on SIGUSR1 (10)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=cfg.DEFAULT_SHUTDOWN_S,
        metavar="SECONDS",
        help="on SIGTERM, finish uploads for at most this long, journal the rest (30)",
    )
    p.add_argument(
        "--store-dir",
        metavar="DIR",
        help="the store directory to watch: /nix/store, or ROOT/nix/store of a chroot store",
    )
    p.add_argument(
        "--queue-limit",
        type=int,
        default=cfg.DEFAULT_QUEUE_LIMIT,
        metavar="N",
        help="paths the journal holds at most (100000)",
    )
    p.add_argument(
        "--catch-up-max",
        type=int,
        default=cfg.DEFAULT_CATCH_UP_MAX,
        metavar="N",
        help="at start, queue at most N paths registered while stopped; 0: off (10000)",
    )
    p.add_argument(
        "--catch-up-hours",
        type=float,
        default=cfg.DEFAULT_CATCH_UP_HOURS,
        metavar="H",
        help="catch up only paths registered in the last H hours (168)",
    )
    p.add_argument("--verbose", action="store_true", help="log every batch and attempt")
    return p


def main(argv: list[str], env: Mapping[str, str]) -> int:
    """Run the service; returns the exit code."""
    try:
        args = parser().parse_args(argv)
        config = cfg.resolve(
            cfg.Options(
                server=args.server,
                cache=args.cache,
                exclude=args.exclude,
                jobs=args.jobs,
                token_file=args.token_file,
                state_dir=args.state_dir,
                status_interval=args.status_interval,
                shutdown_timeout=args.shutdown_timeout,
                store_dir=args.store_dir,
                queue_limit=args.queue_limit,
                catch_up_max=args.catch_up_max,
                catch_up_hours=args.catch_up_hours,
            ),
            env,
        )
    except Exit as done:
        return done.status
    except (UsageError, cfg.ConfigError) as exc:
        return _refuse(exc.problems if isinstance(exc, cfg.ConfigError) else [str(exc)])
    credential, problems = _check(config, env)
    if credential is None or problems:
        return _refuse(problems)
    state_dir = Path(config.state_dir).absolute()
    lock = StateLock(state_dir)
    if not lock.acquire():
        return _refuse(
            [
                f"another {PROG} (pid {lock.holder()}) uses the state directory {state_dir}; "
                "give each service its own --state-dir"
            ]
        )
    try:
        return _serve(config, credential, state_dir, env, verbose=args.verbose)
    finally:
        lock.release()


def _refuse(problems: Sequence[str]) -> int:
    for problem in problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    print(f"{PROG}: bad configuration, nothing was started (see --help)", file=sys.stderr)
    return USAGE_EXIT


def _check(
    config: cfg.ServiceConfig, env: Mapping[str, str]
) -> tuple[Credential | None, list[str]]:
    """What only the filesystem can tell: the token, the state directory, the store, Nix."""
    problems: list[str] = []
    credential = None
    try:
        if config.token_file is not None:
            credential = Credential.from_file(Path(config.token_file))
        else:
            credential = Credential(token=Secret(env[cfg.TOKEN_ENV].strip()))
    except CredentialError as exc:
        problems.append(str(exc))
    state_dir = Path(config.state_dir)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".probe-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        problems.append(
            f"the state directory {state_dir} (--state-dir or STATE_DIRECTORY) is not a "
            f"writable directory ({exc.strerror or exc}); under systemd use StateDirectory="
        )
    if not Path(config.store_dir).is_dir():
        problems.append(
            f"the store directory {config.store_dir} (--store-dir) does not exist; is Nix "
            "installed? A chroot store must exist before the service starts"
        )
    for tool in ("nix", "nix-store"):
        if shutil.which(tool, path=env.get("PATH")) is None:
            problems.append(f"`{tool}` is not on PATH; the service needs Nix's command-line tools")
    return credential, problems


class _Connector:
    """The real pieces the pipeline builds sessions from."""

    def __init__(self, config: cfg.ServiceConfig, store: NixStore, env: Mapping[str, str]):
        self._config = config
        self._env = env
        self.store: PushStore = store
        self.logical_store_dir = config.logical_store_dir

    def client(self, token: Secret) -> AtticClient:
        c = self._config
        return AtticClient(
            endpoint=c.server, cache=c.cache, token=token, max_connections=c.jobs + 1
        )

    def excluder(self) -> Excluder | None:
        pattern = self._config.exclude
        return ExcludeMatcher(pattern, env=self._env) if pattern else None

    def session(
        self,
        *,
        client: PushClient,
        store: PushStore,
        upstream: Sequence[str],
        exclude: Excluder | None,
    ) -> PushSession:
        return PushSession(
            store=store,
            client=client,
            upstream_key_names=upstream,
            exclude=exclude,
            jobs=self._config.jobs,
            retry=SERVICE_RETRY,
        )


def helper_env(
    config: cfg.ServiceConfig, env: Mapping[str, str], state_dir: Path
) -> dict[str, str]:
    """The environment of every Nix call and helper: no token, no systemd plumbing, the
    chroot store's NIX_REMOTE, and a writable cache directory (a DynamicUser has no home)."""
    child = {k: v for k, v in scrubbed_env(env).items() if k not in _PRIVATE_ENVS}
    if config.nix_remote:
        child["NIX_REMOTE"] = config.nix_remote
    child.setdefault("XDG_CACHE_HOME", str(state_dir / "cache"))
    return child


def _serve(
    config: cfg.ServiceConfig,
    credential: Credential,
    state_dir: Path,
    env: Mapping[str, str],
    *,
    verbose: bool,
) -> int:
    scrubber = logs.SecretScrubber()
    for token in credential.seen():
        scrubber.add(token)
    logs.configure(sys.stderr, scrubber, verbose=verbose)
    child_env = helper_env(config, env, state_dir)
    # --store-dir is where the files are (a chroot store's differ from its logical paths).
    nix = NixStore(child_env, store_dir=config.logical_store_dir, real_store_dir=config.store_dir)
    store_dir = Path(config.store_dir)
    logical = config.logical_store_dir

    def watcher(on_paths: Callable[[list[str]], None]) -> Watcher:
        return StoreWatcher(
            store_dir=store_dir, logical_store_dir=logical, is_valid=nix.valid, on_paths=on_paths
        )

    runner = SubprocessRunner()

    def registrations(since: float) -> dict[str, int]:
        recent = recent_entries(store_dir, since=since, logical_store_dir=logical)
        return registration_times(
            recent, valid=nix.valid, runner=runner, env=child_env, logical_store_dir=logical
        )

    ledger = Ledger(journal=Journal(state_dir, limit=config.queue_limit), clock=time.monotonic)
    pipeline = Pipeline(
        connector=_Connector(config, nix, child_env),
        credential=credential,
        ledger=ledger,
        health=ServerHealth(time.monotonic),
    )
    service = Service(
        config=config,
        ledger=ledger,
        pipeline=pipeline,
        marks=MarkFile(state_dir),
        watcher_factory=watcher,
        registrations=registrations,
        notifier=Notifier.from_env(env, pid=os.getpid()),
        credential=credential,
        scrubber=scrubber,
    )
    logs.event(log, logging.INFO, "starting", version=__version__, pid=os.getpid())
    stop, status = threading.Event(), threading.Event()
    previous = _install_signals(stop, status)
    try:
        return service.run(stop, status)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _install_signals(stop: threading.Event, status: threading.Event) -> dict[int, _Handler]:
    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def on_status(signum: int, frame: FrameType | None) -> None:
        status.set()

    previous: dict[int, _Handler] = {}
    for signum, handler in (
        (signal.SIGTERM, on_stop),
        (signal.SIGINT, on_stop),
        (signal.SIGUSR1, on_status),
    ):
        previous[signum] = signal.signal(signum, handler)
    return previous
