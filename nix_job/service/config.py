"""``nix-job watch-store`` configuration: command-line values and the environment to one checked
value. Pure.

Every problem is reported at once, each naming its flag or variable; the shell turns them into
exit code 2. What needs the filesystem (reading the token file, creating the state directory,
finding the store directory) is checked by the shell, not here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from nix_job.core.nixhash import STORE_DIR
from nix_job.core.urls import url_problem, with_slash
from nix_job.core.values import CACHE_NAME_RE, pattern_problem

DEFAULT_JOBS = 4
MAX_JOBS = 64
DEFAULT_STATUS_MINUTES = 10.0
DEFAULT_SHUTDOWN_S = 30.0
MAX_SHUTDOWN_S = 3600.0
#: Paths seen but not yet confirmed uploaded that the journal holds (about 100 bytes each).
DEFAULT_QUEUE_LIMIT = 100_000
MIN_QUEUE_LIMIT = 100
MAX_QUEUE_LIMIT = 10_000_000
#: At most this many paths are caught up at start; the newest win.
DEFAULT_CATCH_UP_MAX = 10_000
#: Paths registered longer ago than this before a start are not caught up.
DEFAULT_CATCH_UP_HOURS = 168.0

TOKEN_ENV = "ATTIC_TOKEN"  # noqa: S105 - the variable's name, not a value


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The raw command-line values (None: not given)."""

    server: str | None = None
    cache: str | None = None
    exclude: str | None = None
    jobs: int = DEFAULT_JOBS
    token_file: str | None = None
    state_dir: str | None = None
    status_interval: float = DEFAULT_STATUS_MINUTES  # minutes
    shutdown_timeout: float = DEFAULT_SHUTDOWN_S
    store_dir: str | None = None
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    catch_up_max: int = DEFAULT_CATCH_UP_MAX
    catch_up_hours: float = DEFAULT_CATCH_UP_HOURS


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """Everything the service runs with, checked."""

    server: str  # ends in "/"
    cache: str
    exclude: str | None
    jobs: int
    token_file: str | None  # None: the token comes from ATTIC_TOKEN
    state_dir: str
    status_interval_s: float  # 0: only on SIGUSR1
    shutdown_timeout_s: float
    store_dir: str  # the physical directory watched
    logical_store_dir: str  # what store paths are called (/nix/store)
    nix_remote: str | None  # NIX_REMOTE for every Nix call; None: Nix's default store
    queue_limit: int
    catch_up_max: int  # 0: no catch-up
    catch_up_window_s: float


class ConfigError(Exception):
    """Bad configuration; ``problems`` name each flag or variable and what to do."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def resolve(options: Options, env: Mapping[str, str]) -> ServiceConfig:
    """Check ``options`` against ``env`` (``ATTIC_SERVER``, ``ATTIC_CACHE``, ``ATTIC_TOKEN``,
    ``STATE_DIRECTORY``, ``NIX_REMOTE``); raise ConfigError listing every problem."""
    problems: list[str] = []
    server = _server(options.server or env.get("ATTIC_SERVER", ""), problems)
    cache = _cache(options.cache or env.get("ATTIC_CACHE", ""), problems)
    exclude = None
    if options.exclude:
        if why := pattern_problem(options.exclude):
            problems.append(f"--exclude {options.exclude!r} {why}")
        else:
            exclude = options.exclude
    if not 1 <= options.jobs <= MAX_JOBS:
        problems.append(f"--jobs must be between 1 and {MAX_JOBS}, not {options.jobs}")
    token_file = _token_file(options.token_file, env, problems)
    state_dir = _state_dir(options.state_dir, env, problems)
    if not (math.isfinite(options.status_interval) and options.status_interval >= 0):
        problems.append(
            f"--status-interval must be 0 (only on SIGUSR1) or a number of minutes, "
            f"not {options.status_interval}"
        )
    if not (0 < options.shutdown_timeout <= MAX_SHUTDOWN_S):
        problems.append(
            f"--shutdown-timeout must be more than 0 and at most {MAX_SHUTDOWN_S:g} seconds, "
            f"not {options.shutdown_timeout}; keep it below the unit's TimeoutStopSec="
        )
    store_dir, nix_remote = _store(options.store_dir, env.get("NIX_REMOTE") or None, problems)
    if not MIN_QUEUE_LIMIT <= options.queue_limit <= MAX_QUEUE_LIMIT:
        problems.append(
            f"--queue-limit must be between {MIN_QUEUE_LIMIT} and {MAX_QUEUE_LIMIT}, "
            f"not {options.queue_limit}"
        )
    if options.catch_up_max < 0:
        problems.append(f"--catch-up-max must be 0 (off) or more, not {options.catch_up_max}")
    if not (math.isfinite(options.catch_up_hours) and options.catch_up_hours >= 0):
        problems.append(f"--catch-up-hours must be 0 or more, not {options.catch_up_hours}")
    if problems:
        raise ConfigError(problems)
    return ServiceConfig(
        server=server,
        cache=cache,
        exclude=exclude,
        jobs=options.jobs,
        token_file=token_file,
        state_dir=state_dir,
        status_interval_s=options.status_interval * 60.0,
        shutdown_timeout_s=options.shutdown_timeout,
        store_dir=store_dir,
        logical_store_dir=STORE_DIR,
        nix_remote=nix_remote,
        queue_limit=options.queue_limit,
        catch_up_max=options.catch_up_max,
        catch_up_window_s=options.catch_up_hours * 3600.0,
    )


def _server(value: str, problems: list[str]) -> str:
    value = value.strip()
    if not value:
        problems.append("no Attic server: pass --server URL or set ATTIC_SERVER")
        return ""
    if why := url_problem(value):
        # SECURITY: the URL is not echoed; it may hold a credential.
        problems.append(
            f"--server/ATTIC_SERVER {why}; give the Attic server's root URL, e.g. "
            "https://cache.example.com/ (not the substituter URL ending in the cache name)"
        )
        return ""
    return with_slash(value)


def _cache(value: str, problems: list[str]) -> str:
    value = value.strip()
    if not value:
        problems.append("no cache: pass --cache NAME or set ATTIC_CACHE")
    elif not CACHE_NAME_RE.match(value):
        problems.append(
            f"--cache/ATTIC_CACHE {value!r} is not a valid Attic cache name: 1-50 characters "
            "of A-Z a-z 0-9 - _ +, starting with a letter or digit"
        )
    return value


def _token_file(value: str | None, env: Mapping[str, str], problems: list[str]) -> str | None:
    in_env = bool(env.get(TOKEN_ENV, "").strip())
    if value is not None and not value.strip():
        problems.append("--token-file is empty; give the path of a file holding the Attic token")
        return None
    if value and in_env:
        problems.append(
            f"both {TOKEN_ENV} and --token-file are set; use one (--token-file can be "
            "rotated without a restart)"
        )
    elif not value and not in_env:
        problems.append(
            f"no Attic token: pass --token-file PATH (under systemd: LoadCredential= and "
            f'--token-file "${{CREDENTIALS_DIRECTORY}}/attic-token") or set {TOKEN_ENV}; the '
            "token needs push ('w') and pull ('r') permission on the cache"
        )
    return value or None


def _state_dir(value: str | None, env: Mapping[str, str], problems: list[str]) -> str:
    if value is not None:
        if not value.strip():
            problems.append("--state-dir is empty; give a directory the service may write")
        return value
    # systemd joins several StateDirectory= entries with ":" (systemd.exec(5)); use the first.
    from_systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if from_systemd:
        return from_systemd
    problems.append(
        "no state directory: pass --state-dir DIR or run under systemd with StateDirectory= "
        "(which sets STATE_DIRECTORY); the journal of paths not yet uploaded lives there"
    )
    return ""


def _store(
    value: str | None, nix_remote: str | None, problems: list[str]
) -> tuple[str, str | None]:
    """The physical store directory, and the NIX_REMOTE that reaches the same store.

    A chroot store (``store = /srv/b`` in nix.conf, zhaofengli/attic#323) keeps its paths in
    ``/srv/b/nix/store`` under their logical names ``/nix/store/...``; Nix reaches it as
    store ``/srv/b``. When ``--store-dir`` names such a directory and NIX_REMOTE is unset, the
    service sets NIX_REMOTE to the chroot root for its Nix calls.
    """
    physical = (value or STORE_DIR).rstrip("/") or "/"
    if physical == STORE_DIR:
        return physical, nix_remote
    if not physical.startswith("/") or not physical.endswith(STORE_DIR):
        problems.append(
            f"--store-dir {value!r} must be an absolute path: {STORE_DIR} or the "
            f"ROOT{STORE_DIR} directory of a chroot store"
        )
        return physical, nix_remote
    root = physical[: -len(STORE_DIR)]
    if nix_remote is None:
        return physical, root
    if nix_remote.startswith("/") and nix_remote.rstrip("/") != root:
        problems.append(
            f"NIX_REMOTE={nix_remote!r} and --store-dir {value!r} name different stores; "
            f"unset NIX_REMOTE (the service then uses {root!r}) or make them agree"
        )
    return physical, nix_remote
