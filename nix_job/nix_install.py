"""Nix bootstrap: find an existing Nix (PATH or profile dirs) or install a pinned one.

Owns the ``CommandRunner`` seam. Finding Nix skips only the install, never the configuration
(that is ``nix_conf``'s job, which always runs afterwards).
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol

import httpx
import tenacity

from nix_job.errors import NixInstallError
from nix_job.inputs import Inputs, Installer

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

# Variables the installer never needs and must never see (the token above all).
_SECRET_ENV_PREFIXES = ("NIX_JOB_", "ATTIC_", "INPUT_", "ACTIONS_")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?\S*")
_OUTPUT_TAIL_LINES = 40


def default_profile_bins(home: Path) -> tuple[Path, ...]:
    """Where installers put ``nix`` (non-login shells miss them: cachix/install-nix-action#98)."""
    return (
        Path("/nix/var/nix/profiles/default/bin"),
        home / ".nix-profile" / "bin",
        Path("/run/current-system/sw/bin"),
    )


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str  # with ``on_line``: the last lines of the merged output
    stderr: str

    def tail(self, lines: int = 15) -> str:
        text = (self.stderr.strip() + "\n" + self.stdout.strip()).strip()
        return "\n".join(text.splitlines()[-lines:])


class CommandRunner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> CommandResult:
        """Run ``argv`` (never through a shell), stdin closed. A missing program gives 127.

        With ``on_line``, stdout and stderr are merged and every line is passed on as it comes.
        """
        ...

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        """Start ``argv`` detached (own session, no stdio), do not wait; return its pid."""
        ...


class SubprocessRunner:
    """The real ``CommandRunner``: argv lists only, text decoded with surrogateescape."""

    def __init__(self) -> None:
        # Detached children are kept referenced: Popen warns when collected while running.
        self._detached: list[subprocess.Popen[bytes]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> CommandResult:
        args = tuple(argv)
        try:
            if on_line is None:
                done = subprocess.run(
                    args,
                    env=None if env is None else dict(env),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    errors="surrogateescape",
                    timeout=timeout,
                    check=False,
                )
                return CommandResult(
                    argv=args, returncode=done.returncode, stdout=done.stdout, stderr=done.stderr
                )
            return self._stream(args, env, timeout, on_line)
        except FileNotFoundError as exc:
            return CommandResult(argv=args, returncode=127, stdout="", stderr=str(exc))
        except subprocess.TimeoutExpired:
            return CommandResult(
                argv=args, returncode=124, stdout="", stderr=f"timed out after {timeout} s"
            )

    @staticmethod
    def _stream(
        args: tuple[str, ...],
        env: Mapping[str, str] | None,
        timeout: float | None,
        on_line: Callable[[str], None],
    ) -> CommandResult:
        tail: deque[str] = deque(maxlen=_OUTPUT_TAIL_LINES)
        with subprocess.Popen(
            args,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="surrogateescape",
        ) as proc:
            timer = threading.Timer(timeout, proc.kill) if timeout is not None else None
            if timer is not None:
                timer.start()
            try:
                assert proc.stdout is not None  # noqa: S101 (PIPE was requested)
                for line in proc.stdout:
                    text = line.rstrip("\n")
                    tail.append(text)
                    on_line(text)
                code = proc.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        return CommandResult(argv=args, returncode=code, stdout="\n".join(tail), stderr="")

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str]) -> int:
        proc = subprocess.Popen(
            tuple(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._detached = [p for p in self._detached if p.poll() is None]
        self._detached.append(proc)
        return proc.pid


# ---------------------------------------------------------------------------------------------
# Detection


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


def socket_answers(path: Path, *, timeout_s: float = 2.0) -> bool:
    """Something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


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
    host: HostPaths = HostPaths(),
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Bootstrap:
    installation: NixInstallation
    installed: bool  # nix-job ran an installer
    installer_url: str | None
    path_env: str  # PATH for this process and its children (Nix's bin dir included)
    github_path: Path | None  # add to GITHUB_PATH for later steps; None when PATH had Nix
    seconds: float  # detection + installation
    warnings: tuple[str, ...]


class _ServerError(Exception):
    """A 5xx answer: worth another attempt."""


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _ServerError)


DOWNLOAD_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


def download(
    http: httpx.Client,
    url: str,
    dest: Path,
    *,
    attempts: int = 5,
    wait: tenacity.wait.wait_base | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> str:
    """Stream ``url`` into ``dest``; return its SHA-256 (hex). Connection errors and 5xx are
    retried with backoff, 4xx never. Raises NixInstallError; ``dest`` is gone on failure."""

    def attempt() -> str:
        digest = hashlib.sha256()
        with http.stream("GET", url, timeout=DOWNLOAD_TIMEOUT, follow_redirects=True) as resp:
            if resp.status_code >= 500:
                raise _ServerError(f"HTTP {resp.status_code}")
            if resp.status_code >= 400:
                raise NixInstallError(
                    f"downloading the Nix installer from {url} failed: HTTP {resp.status_code} "
                    f"{resp.reason_phrase}.\nCheck `nix-installer-url` and `nix-version` (does "
                    "that release exist?); a 4xx is not retried."
                )
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes():
                    digest.update(chunk)
                    out.write(chunk)
        return digest.hexdigest()

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log(f"downloading {url} failed ({_describe(exc)}); retrying")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_transient),
        stop=tenacity.stop_after_attempt(attempts),
        wait=wait if wait is not None else tenacity.wait_exponential_jitter(initial=1, max=10),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except NixInstallError:
        dest.unlink(missing_ok=True)
        raise
    except (httpx.HTTPError, _ServerError, OSError) as exc:
        dest.unlink(missing_ok=True)
        raise NixInstallError(
            f"downloading the Nix installer from {url} failed after {attempts} attempts: "
            f"{_describe(exc)}.\nCheck the runner's network access to that host, or mirror "
            "the installer and set `nix-installer-url` (with `nix-installer-sha256`)."
        ) from exc


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class NixBootstrapper:
    """Reuse the Nix that is there, or install one; then say how to put it on PATH."""

    def __init__(
        self,
        *,
        runner: CommandRunner,
        http: httpx.Client,
        temp_dir: Path,
        env: Mapping[str, str],
        log: Callable[[str], None],
        locations: Sequence[Path] | None = None,
        host: HostPaths = HostPaths(),
        user: UserIdentity | None = None,
        clock: Callable[[], float] = time.monotonic,
        download_attempts: int = 5,
        download_wait: tenacity.wait.wait_base | None = None,
        install_timeout_s: float = 900.0,
    ) -> None:
        self._runner = runner
        self._http = http
        self._temp_dir = temp_dir
        self._env = dict(env)
        self._log = log
        self._host = host
        self._user = user or UserIdentity.current()
        home = Path(env.get("HOME") or pwd_home(self._user))
        self._locations = tuple(default_profile_bins(home) if locations is None else locations)
        self._clock = clock
        self._attempts = download_attempts
        self._wait = download_wait
        self._install_timeout = install_timeout_s

    def _detect(self, path_env: str) -> NixInstallation | None:
        return detect_nix(
            path_env=path_env,
            env=self._env,
            runner=self._runner,
            extra_locations=self._locations,
            user=self._user,
            host=self._host,
        )

    def ensure(self, request: InstallRequest, *, conf_text: str | None = None) -> Bootstrap:
        """Find Nix, else install it per ``request``; ``conf_text`` goes to the installer
        (default ``installer_conf(user)``). Raises NixInstallError."""
        start = self._clock()
        path_env = self._env.get("PATH", os.defpath)
        warnings: list[str] = []
        found = self._detect(path_env)
        installed_from: str | None = None
        if found is not None:
            self._log(f"Using {found.version_line} at {found.nix} ({found.daemon_reason})")
            if request.version and version_tuple(request.version) != found.version_tuple:
                warnings.append(
                    f"nix-version {request.version} was asked for, but {found.version_line} is "
                    f"already installed at {found.nix}; nix-job uses it and installs nothing"
                )
        elif request.installer == "none":
            where = ", ".join(str(p) for p in self._locations)
            raise NixInstallError(
                f"Nix is not installed: no `nix` on PATH nor in {where}, and nix-installer is "
                "`none`.\nPreinstall Nix on the runner (and make sure its bin directory is on "
                "PATH or in a default profile), or set `nix-installer: auto` (or `upstream` / "
                "`determinate`) so nix-job installs it."
            )
        else:
            text = installer_conf(self._user.name) if conf_text is None else conf_text
            installed_from = self._install(request, text)
            found = self._detect(path_env)
            if found is None:
                where = ", ".join(str(p) for p in self._locations)
                raise NixInstallError(
                    f"the Nix installer from {installed_from} finished, but no `nix` appeared "
                    f"on PATH or in the profile directories {where}.\nRead the installer output "
                    "in the log; on a non-standard layout put Nix on PATH yourself and use "
                    "`nix-installer: none`."
                )
            self._log(f"Installed {found.version_line} at {found.nix}")
        warnings.extend(found.warnings)
        if found.on_path:
            new_path, github_path = path_env, None
        else:
            new_path = f"{found.bin_dir}{os.pathsep}{path_env}" if path_env else str(found.bin_dir)
            github_path = found.bin_dir
        return Bootstrap(
            installation=found,
            installed=installed_from is not None,
            installer_url=installed_from,
            path_env=new_path,
            github_path=github_path,
            seconds=self._clock() - start,
            warnings=tuple(warnings),
        )

    def _install(self, request: InstallRequest, conf_text: str) -> str:
        self._temp_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="nix-job-install-", dir=self._temp_dir))
        try:
            conf_file = work / "nix.conf"
            conf_file.write_text(conf_text, encoding="utf-8")
            plan = plan_install(
                request,
                systemd=self._host.systemd_dir.is_dir(),
                conf_file=conf_file,
                conf_text=conf_text,
            )
            script = work / "install.sh"
            self._log(f"Downloading the {plan.installer} Nix installer from {plan.url}")
            digest = download(
                self._http,
                plan.url,
                script,
                attempts=self._attempts,
                wait=self._wait,
                log=self._log,
            )
            if request.sha256 is not None and digest != request.sha256:
                raise NixInstallError(
                    f"the Nix installer downloaded from {plan.url} has SHA-256 {digest}, but "
                    f"nix-installer-sha256 is {request.sha256}; nothing was run.\nThe file "
                    "changed upstream or was tampered with: check the URL and update the pinned "
                    "checksum only once you trust the new file."
                )
            head = script.read_bytes()[:2]
            if head != b"#!":
                raise NixInstallError(
                    f"the file downloaded from {plan.url} is not an installer script (it starts "
                    f"with {head!r}, not '#!'; an HTML error page or a truncated download?); "
                    "nothing was run.\nCheck `nix-installer-url`, or pin `nix-installer-sha256`."
                )
            mode = "multi-user (daemon)" if plan.multi_user else "single-user (no daemon)"
            self._log(f"Running the {plan.installer} installer, {mode}")
            sh = shutil.which("sh", path=self._env.get("PATH")) or "/bin/sh"
            done = self._runner.run(
                [sh, str(script), *plan.args],
                env=self._installer_env(),
                timeout=self._install_timeout,
                on_line=self._log,
            )
            if done.returncode != 0:
                raise NixInstallError(
                    f"the {plan.installer} Nix installer ({plan.url}) exited with code "
                    f"{done.returncode}. Last output:\n{done.tail(15)}\nIt may have changed the "
                    "machine partly: read its log above, uninstall leftovers (/nix, "
                    "/etc/nix, nixbld users) or preinstall Nix and use `nix-installer: none`."
                )
            return plan.url
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _installer_env(self) -> dict[str, str]:
        env = {k: v for k, v in self._env.items() if not k.startswith(_SECRET_ENV_PREFIXES)}
        # The upstream scripts use $USER and $HOME; minimal containers may lack them.
        env.setdefault("USER", self._user.name)
        env.setdefault("HOME", pwd_home(self._user))
        return env
