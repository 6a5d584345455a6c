"""Finding Nix: PATH or the profile directories, its version, configuration, store and trust."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from nix_job.core.errors import NixInstallError
from nix_job.nix.daemon import socket_answers
from nix_job.nix.facts import (
    DEFAULT_HOST_PATHS,
    HostPaths,
    NixInstallation,
    UserIdentity,
    config_show_argv,
    decide_store_mode,
    decide_trust,
    default_profile_bins,
    parse_config,
    parse_version,
    user_matches,
    version_tuple,
)
from nix_job.process import CommandRunner


def find_nix(path_env: str, locations: Sequence[Path]) -> tuple[Path, bool] | None:
    """The first executable `nix` on PATH, else in ``locations``; and whether PATH had it."""
    for entry in path_env.split(os.pathsep):
        if entry:
            candidate = Path(entry) / "nix"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate, True
    for location in locations:
        candidate = location / "nix"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate, False
    return None


def detect_nix(
    *,
    path_env: str,
    env: Mapping[str, str],
    runner: CommandRunner,
    extra_locations: Sequence[Path] | None = None,
    user: UserIdentity | None = None,
    host: HostPaths = DEFAULT_HOST_PATHS,
    answers: Callable[[Path], bool] = socket_answers,
) -> NixInstallation | None:
    """Find Nix and describe how nix-job's settings can reach it; None when Nix is absent.

    ``env`` is the environment Nix commands run with (NIX_REMOTE, NIX_CONFIG, HOME matter);
    its PATH is replaced by ``path_env``. ``extra_locations`` default to the profile bins.
    """
    who = user or UserIdentity.current()
    home = Path(env.get("HOME") or pwd_home(who))
    locations = default_profile_bins(home) if extra_locations is None else extra_locations
    found = find_nix(path_env, locations)
    if found is None:
        return None
    nix, on_path = found
    run_env = {**env, "PATH": path_env if on_path else f"{nix.parent}{os.pathsep}{path_env}"}
    warnings: list[str] = []

    got = runner.run([str(nix), "--version"], env=run_env, timeout=60)
    if got.returncode != 0:
        raise NixInstallError(
            f"`{nix} --version` failed (exit {got.returncode}): {got.tail(5)}\n"
            "The Nix installation looks broken; repair or reinstall it, or remove it from PATH "
            "so nix-job can install one (`nix-installer`)."
        )
    try:
        version = parse_version(got.stdout)
    except ValueError as exc:
        raise NixInstallError(
            f"could not read the Nix version from `{nix} --version`: {exc}.\n"
            "Check that this `nix` really is Nix."
        ) from exc

    show_argv = config_show_argv(nix, version)
    shown = runner.run(show_argv, env=run_env, timeout=60)
    config: dict[str, str] = {}
    if shown.returncode == 0:
        try:
            config = parse_config(shown.stdout)
        except (ValueError, AttributeError) as exc:
            warnings.append(f"could not parse the Nix configuration ({exc}); assuming defaults")
    else:
        warnings.append(
            f"`nix {' '.join(show_argv[1:-3])}` failed ({shown.tail(3)}); assuming the default "
            "configuration"
        )

    store = config.get("store") or env.get("NIX_REMOTE") or "auto"
    state_ok = os.access(host.state_dir, os.R_OK | os.W_OK)
    daemon, daemon_reason = decide_store_mode(
        store=store, state_dir_writable=state_ok, socket_exists=host.daemon_socket.exists()
    )

    if daemon and host.daemon_socket.exists() and not answers(host.daemon_socket):
        warnings.append(
            f"the daemon socket {host.daemon_socket} exists but nothing answers on it: start "
            "the daemon (`sudo systemctl start nix-daemon`, or run `nix-daemon` as root)"
        )
    daemon_says: bool | None = None
    if daemon and who.uid != 0:
        daemon_says = _daemon_reported_trust(runner, nix, version, run_env)
    trusted_users = config.get("trusted-users", "root").split()
    trusted, trust_reason = decide_trust(
        daemon=daemon, user=who, trusted_users=trusted_users, daemon_says=daemon_says
    )
    allowed_users = config.get("allowed-users", "*").split()
    if daemon and not trusted and user_matches(who, allowed_users) is None:
        warnings.append(
            f"user {who.name} is neither in trusted-users nor in allowed-users "
            f"({' '.join(allowed_users)}): the daemon will refuse its connections; add the user "
            "(or one of its groups as @group) to allowed-users in /etc/nix/nix.conf"
        )

    return NixInstallation(
        nix=nix,
        bin_dir=nix.parent,
        version=version,
        version_line=got.stdout.strip().splitlines()[0],
        on_path=on_path,
        store=store,
        daemon=daemon,
        daemon_reason=daemon_reason,
        user=who.name,
        trusted=trusted,
        trust_reason=trust_reason,
        config=MappingProxyType(config),
        warnings=tuple(warnings),
    )


def pwd_home(user: UserIdentity) -> str:
    try:
        return pwd.getpwuid(user.uid).pw_dir
    except KeyError:
        return "/"


def _daemon_reported_trust(
    runner: CommandRunner, nix: Path, version: str, env: Mapping[str, str]
) -> bool | None:
    """Newer Nix reports `"trusted"` in `nix store info --json`; older Nix cannot say."""
    sub = ("store", "info") if version_tuple(version) >= (2, 19, 0) else ("store", "ping")
    got = runner.run(
        [
            str(nix),
            *sub,
            "--store",
            "daemon",
            "--json",
            "--extra-experimental-features",
            "nix-command",
        ],
        env=env,
        timeout=30,
    )
    if got.returncode != 0:
        return None
    try:
        data = json.loads(got.stdout)
    except ValueError:
        return None
    value = data.get("trusted") if isinstance(data, dict) else None
    if isinstance(value, bool | int):
        return bool(value)
    return None
