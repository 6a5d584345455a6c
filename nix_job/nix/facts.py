"""What nix-job knows about a Nix installation, and the install plan. Pure.

Versions, the effective configuration, whether a daemon serves the store and trusts the user,
and which installer to run with which arguments.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from nix_job.core.inputs import Inputs, Installer

# Installed when Nix is missing and `nix-version` is empty. 2.31.x predates the netrc-file
# regression of Nix 2.35 (NixOS/nix#15408) and the path-info JSON v2 change of 2.33.
DEFAULT_NIX_VERSION = "2.31.2"
UPSTREAM_URL = "https://releases.nixos.org/nix/nix-{version}/install"
DETERMINATE_URL = "https://install.determinate.systems/nix"
# With `determinate`, `nix-version` names the installer's release tag (Determinate Nix version).
DETERMINATE_TAG_URL = "https://install.determinate.systems/nix/tag/v{version}"

DAEMON_SOCKET = Path("/nix/var/nix/daemon-socket/socket")
STATE_DIR = Path("/nix/var/nix")
SYSTEMD_DIR = Path("/run/systemd/system")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?\S*")


def default_profile_bins(home: Path) -> tuple[Path, ...]:
    """Where installers put ``nix`` (non-login shells miss them: cachix/install-nix-action#98)."""
    return (
        Path("/nix/var/nix/profiles/default/bin"),
        home / ".nix-profile" / "bin",
        Path("/run/current-system/sw/bin"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class UserIdentity:
    name: str
    uid: int
    groups: tuple[str, ...]  # primary and supplementary group names

    @classmethod
    def current(cls) -> UserIdentity:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:  # containers running an arbitrary uid
            name = str(uid)
        names: list[str] = []
        for gid in dict.fromkeys([os.getegid(), *os.getgroups()]):
            try:
                names.append(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
        return cls(name=name, uid=uid, groups=tuple(names))


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPaths:
    """Machine locations, injectable so tests never depend on the real host."""

    state_dir: Path = STATE_DIR
    daemon_socket: Path = DAEMON_SOCKET
    systemd_dir: Path = SYSTEMD_DIR


DEFAULT_HOST_PATHS = HostPaths()


@dataclass(frozen=True, slots=True, kw_only=True)
class NixInstallation:
    nix: Path  # the nix executable
    bin_dir: Path  # its directory: what goes on PATH
    version: str  # e.g. "2.8.0" (Determinate: the Nix version, not the installer's)
    version_line: str  # `nix --version` as printed
    on_path: bool  # False: found in a profile directory that PATH lacks
    store: str  # effective `store` setting (NIX_REMOTE is its default)
    daemon: bool  # a nix-daemon serves the store (settings then need a trusted user)
    daemon_reason: str
    user: str
    trusted: bool  # nix-job's client settings take effect
    trust_reason: str
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return version_tuple(self.version)

    def config_show_argv(self) -> tuple[str, ...]:
        return config_show_argv(self.nix, self.version)


def config_show_argv(nix: Path, version: str) -> tuple[str, ...]:
    """`nix show-config` (before 2.20) or `nix config show` (2.20 on), as JSON."""
    sub = ("config", "show") if version_tuple(version) >= (2, 20, 0) else ("show-config",)
    return (str(nix), *sub, "--json", "--extra-experimental-features", "nix-command")


def version_tuple(version: str) -> tuple[int, int, int]:
    match = _VERSION_RE.match(version)
    if not match:
        return (0, 0, 0)
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def parse_version(output: str) -> str:
    """The Nix version from `nix --version`: "nix (Nix) 2.8.0", "nix (Determinate Nix 3.8.2)
    2.30.1", "nix (Lix, like Nix) 2.91.1". Raises ValueError when there is none."""
    line = output.strip().splitlines()[0] if output.strip() else ""
    tokens = line.rsplit(")", 1)[-1].split() or line.split()
    for token in reversed(tokens):
        if _VERSION_RE.fullmatch(token):
            return token
    raise ValueError(f"no version in `nix --version` output {output.strip()[:120]!r}")


def parse_config(output: str) -> dict[str, str]:
    """Effective settings from `nix show-config --json` / `nix config show --json` (values as
    ``{"value": …}`` objects or plain), or from the plain ``name = value`` form."""
    text = output.strip()
    result: dict[str, str] = {}
    if text.startswith("{"):
        data = json.loads(text)
        for name, raw in data.items():
            value = raw["value"] if isinstance(raw, dict) and "value" in raw else raw
            result[str(name)] = _config_value_text(value)
        return result
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip():
            result[name.strip()] = value.strip()
    return result


def _config_value_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


def decide_store_mode(
    *, store: str, state_dir_writable: bool, socket_exists: bool
) -> tuple[bool, str]:
    """Whether a daemon serves the store, by the rule Nix itself follows (store-api.cc, "auto").

    ``store`` is the effective `store` setting, whose default is NIX_REMOTE, else "auto".
    "auto": a state dir we can read and write means the local store; else an existing daemon
    socket means the daemon; else Nix falls back to a local (or per-user chroot) store.
    """
    uri = store.strip()
    if uri == "daemon" or uri.startswith("unix://"):
        return True, f"the store is {uri!r}: the nix-daemon serves it"
    if uri == "local" or uri.startswith(("local?", "/")):
        return False, f"the store is {uri!r}: nix-job uses it directly, no daemon"
    if uri not in ("", "auto"):
        return False, (
            f"the store is {uri!r}, neither local nor the local daemon: nix-job's settings "
            "reach only the client"
        )
    if state_dir_writable:
        return False, "store 'auto' and the Nix state directory is writable: local store, no daemon"
    if socket_exists:
        return True, "store 'auto', state directory not writable, daemon socket present: daemon"
    return False, "store 'auto', state directory not writable and no daemon socket"


def decide_trust(
    *,
    daemon: bool,
    user: UserIdentity,
    trusted_users: Sequence[str],
    daemon_says: bool | None = None,
) -> tuple[bool, str]:
    """Whether the daemon honours this user's client settings (substituters, keys, netrc)."""
    if not daemon:
        return True, "no daemon: settings apply directly to the store"
    if user.uid == 0:
        return True, "root is always trusted by the daemon"
    if daemon_says is not None:
        verdict = "trusts" if daemon_says else "does not trust"
        return daemon_says, f"the daemon reports it {verdict} user {user.name}"
    if match := user_matches(user, trusted_users):
        return True, f"user {user.name} is in trusted-users ({match})"
    listed = " ".join(trusted_users) or "(empty)"
    return False, f"user {user.name} is not trusted (trusted-users = {listed})"


def user_matches(user: UserIdentity, entries: Iterable[str]) -> str | None:
    """The trusted-users/allowed-users entry matching ``user`` (`*`, name, `@group`), or None."""
    for entry in entries:
        if entry in ("*", user.name):
            return entry
        if entry.startswith("@") and entry[1:] in user.groups:
            return entry
    return None


# ---------------------------------------------------------------------------------------------
# Installation


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallRequest:
    installer: Installer
    version: str | None = None
    url: str | None = None
    sha256: str | None = None  # lowercase hex

    @classmethod
    def from_inputs(cls, inputs: Inputs) -> InstallRequest:
        return cls(
            installer=inputs.nix_installer,
            version=inputs.nix_version,
            url=inputs.nix_installer_url,
            sha256=inputs.nix_installer_sha256,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallPlan:
    installer: Literal["upstream", "determinate"]
    url: str
    multi_user: bool
    args: tuple[str, ...]  # after `sh <script>`


def plan_install(
    request: InstallRequest, *, systemd: bool, conf_file: Path, conf_text: str
) -> InstallPlan:
    """Which installer, URL and arguments. Pure. `auto` installs upstream Nix."""
    if request.installer == "none":
        raise ValueError("nix-installer none never installs")
    kind: Literal["upstream", "determinate"] = (
        "determinate" if request.installer == "determinate" else "upstream"
    )
    if kind == "upstream":
        url = request.url or UPSTREAM_URL.format(version=request.version or DEFAULT_NIX_VERSION)
        args: tuple[str, ...] = (
            "--daemon" if systemd else "--no-daemon",
            "--yes",
            "--no-channel-add",
            "--nix-extra-conf-file",
            str(conf_file),
        )
    else:
        url = request.url or (
            DETERMINATE_TAG_URL.format(version=request.version)
            if request.version
            else DETERMINATE_URL
        )
        args = ("install", "linux", "--no-confirm", "--init", "systemd" if systemd else "none")
        if conf_text.strip():
            args += ("--extra-conf", conf_text)
    return InstallPlan(installer=kind, url=url, multi_user=systemd, args=args)


def installer_conf(user: str) -> str:
    """nix.conf lines handed to a fresh install (install-nix-action's defaults).

    The job user becomes trusted so later per-job settings reach the daemon through NIX_CONFIG,
    with no daemon restart. It already has sudo wherever an installer can run.
    """
    users = "root" if user == "root" else f"root {user}"
    return f"experimental-features = nix-command flakes\ntrusted-users = {users}\n"
