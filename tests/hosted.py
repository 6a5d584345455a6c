"""The GitHub-hosted runner shape for tests: a root nix-daemon serving /nix/store, a non-root
runner user with passwordless sudo, and the action run by that user through the harness.

Needs root. Everything it changes on the machine (user, sudoers file, /etc/nix/nix.conf, the
daemon and its socket file) is put back as it was found. ``python -m tests.hosted`` is the
harness entry run as the user.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pickle
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nix_job.nix.daemon import UnixSocketProbe, is_daemon_cmdline
from nix_job.nix.facts import parse_config
from tests.actionrun import run_nix_job
from tests.harness import ActionResult
from tests.nixenv import require_nix

ROOT = Path(__file__).resolve().parent.parent
RUNNER_USER = "nixjobrunner"
SUDOERS_FILE = Path("/etc/sudoers.d/nix-job-tests")
SUDOERS_MARK = "# nix-job tests: removed when they end"
USER_COMMENT = "nix-job tests runner"  # marks a user the tests created (and so remove)
CONF_MARK = "# nix-job hosted-runner tests"
NIX_CONF = Path("/etc/nix/nix.conf")
DAEMON_SOCKET = Path("/nix/var/nix/daemon-socket/socket")
SOCKET_GROUP = "nix-users"  # Debian's nix-bin: the socket directory is root:nix-users 0770
# A Python the user can run (the dev venv's base interpreter may live under /root) with the
# same minor version as the venv, whose site-packages then serve the harness unchanged.
USER_PYTHON = Path("/usr/bin/python3")
# The daemon's own configuration, written to nix.conf so a restarted daemon keeps it: Debian
# runs builds as root without nixbld users here, and the tests are offline.
DAEMON_SETTINGS = (
    "build-users-group =",
    "sandbox = false",
    "substituters =",
    "narinfo-cache-negative-ttl = 0",
    "experimental-features = nix-command",
)
# Settings nix-job delivers to the daemon; a failure report shows their effective values.
CACHE_SETTINGS = ("substituters", "trusted-public-keys", "netrc-file", "trusted-users")
SYSTEMD_DIR = Path("/run/systemd/system")
SYSTEMD_UNITS = ("nix-daemon.socket", "nix-daemon.service")  # Debian's nix-setup-systemd
DAEMON_START_S = 30.0
HARNESS_TIMEOUT_S = 240.0


class HostedSetupError(AssertionError):
    """The hosted test bed could not be built or torn down; the message says what to fix."""


# ---------------------------------------------------------------------------------------------
# Preconditions


def require_hosted() -> None:
    """Skip unless root (with Nix, nix-daemon, sudo, setpriv and useradd); in CI, fail."""
    require_nix()
    missing = [t for t in ("nix-daemon", "sudo", "setpriv", "useradd", "userdel") if not _which(t)]
    problems = []
    if os.geteuid() != 0:
        problems.append("they must run as root (to start a nix-daemon and create a user)")
    if missing:
        problems.append(f"{', '.join(missing)} must be installed (scripts/setup installs sudo)")
    if not USER_PYTHON.is_file():
        problems.append(f"{USER_PYTHON} must exist: the runner user runs the harness with it")
    elif _python_minor(USER_PYTHON) != sys.version_info[:2]:
        problems.append(
            f"{USER_PYTHON} must be Python {sys.version_info[0]}.{sys.version_info[1]}, like "
            "the dev venv whose packages the runner user's harness imports"
        )
    if not problems:
        return
    message = "The hosted-runner tests cannot run: " + "; ".join(problems) + "."
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} CI=true, so this is a failure, not a skip.")
    pytest.skip(message)


def _which(tool: str) -> str | None:
    return shutil.which(tool, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


def _python_minor(python: Path) -> tuple[int, int]:
    out = subprocess.run(
        [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return (int(out[0]), int(out[1])) if len(out) == 2 else (0, 0)


def _run(argv: Sequence[str], what: str) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise HostedSetupError(
            f"{what} failed: `{' '.join(argv)}` exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


# ---------------------------------------------------------------------------------------------
# The runner user


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerUser:
    name: str
    uid: int
    gid: int
    home: Path

    def chown(self, path: Path) -> Path:
        os.chown(path, self.uid, self.gid)
        return path

    def own_dir(self, path: Path) -> Path:
        """Create ``path`` (0755) owned by the user."""
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
        return self.chown(path)

    def argv(self, *command: str, env: Mapping[str, str]) -> list[str]:
        """``command`` as this user (real and effective ids, its groups), with exactly ``env``.

        setpriv execs in place (no PAM, no fork), so process groups and signals stay as the
        harness set them up, as when the runner service itself runs as this user.
        """
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in env.items()),
            *command,
        ]

    def base_env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }


@contextlib.contextmanager
def runner_user(name: str = RUNNER_USER) -> Iterator[RunnerUser]:
    """The user, created when missing and removed at the end with its home (also when a killed
    run left it behind); a user that existed before is kept. It may use the daemon socket
    (group ``nix-users`` where that group guards it)."""
    created = False
    per_user = [Path("/nix/var/nix", kind, "per-user", name) for kind in ("profiles", "gcroots")]
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        groups = ["-G", SOCKET_GROUP] if _group_exists(SOCKET_GROUP) else []
        options = ["--create-home", "--user-group", "--shell", "/bin/bash"]
        _run(
            ["useradd", *options, "--comment", USER_COMMENT, *groups, name],
            f"creating the runner user {name}",
        )
        created = True
        entry = pwd.getpwnam(name)
    else:
        created = entry.pw_gecos == USER_COMMENT
        if _group_exists(SOCKET_GROUP):
            _run(["usermod", "-a", "-G", SOCKET_GROUP, name], f"adding {name} to {SOCKET_GROUP}")
    user = RunnerUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid, home=Path(entry.pw_dir))
    try:
        yield user
    finally:
        if created:
            _kill_user_processes(user)
            _run(["userdel", "--remove", name], f"removing the runner user {name}")
            for path in per_user:  # Nix makes these for each user that talks to the daemon
                shutil.rmtree(path, ignore_errors=True)


def _group_exists(group: str) -> bool:
    try:
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


def _kill_user_processes(user: RunnerUser) -> None:
    """userdel refuses while the user has processes; a harness killed mid-run may leave some."""
    deadline = time.monotonic() + 10
    while pids := _user_processes(user):
        if time.monotonic() >= deadline:
            raise HostedSetupError(
                f"processes {pids} of {user.name} survived SIGKILL; the user was not removed"
            )
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _user_processes(user: RunnerUser) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == user.uid and _alive(int(entry)):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


@contextlib.contextmanager
def passwordless_sudo(user: RunnerUser, path: Path = SUDOERS_FILE) -> Iterator[Path]:
    """A sudoers.d entry like GitHub's hosted images (``runner ALL=(ALL) NOPASSWD:ALL``)."""
    text = f"{SUDOERS_MARK}\n{user.name} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    if path.exists() and not path.read_text().startswith(SUDOERS_MARK):
        raise HostedSetupError(
            f"{path} exists and is not the tests' own; move it away, then run the tests again."
        )
    staged = path.with_name(".nix-job-tests.tmp")  # sudo ignores names containing a dot
    staged.write_text(text)
    staged.chmod(0o440)
    try:
        _run(["visudo", "-c", "-q", "-f", str(staged)], f"checking {staged}")
        staged.rename(path)
        yield path
    finally:
        staged.unlink(missing_ok=True)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def sudo_suspended(path: Path = SUDOERS_FILE) -> Iterator[None]:
    """Inside the block the user has no sudo (like a self-hosted runner without it)."""
    data = path.read_bytes()
    path.unlink()
    try:
        yield
    finally:
        staged = path.with_name(".nix-job-tests.tmp")
        staged.write_bytes(data)
        staged.chmod(0o440)
        staged.rename(path)


# ---------------------------------------------------------------------------------------------
# /etc/nix/nix.conf and the daemon


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSnapshot:
    """A file's exact bytes, mode and owner (or its absence), to put back."""

    path: Path
    data: bytes | None
    mode: int = 0o644
    uid: int = 0
    gid: int = 0

    @classmethod
    def take(cls, path: Path) -> FileSnapshot:
        try:
            info = path.stat()
        except FileNotFoundError:
            return cls(path=path, data=None)
        return cls(
            path=path,
            data=path.read_bytes(),
            mode=info.st_mode & 0o7777,
            uid=info.st_uid,
            gid=info.st_gid,
        )

    def restore(self) -> None:
        if self.data is None:
            self.path.unlink(missing_ok=True)
            return
        staged = self.path.with_name(f".{self.path.name}.hosted-restore")
        staged.write_bytes(self.data)
        os.chown(staged, self.uid, self.gid)
        staged.chmod(self.mode)
        staged.replace(self.path)


def daemon_conf_text(original: bytes | None, *, trusted_users: Sequence[str]) -> bytes:
    """The machine's nix.conf with the daemon's test settings and ``trusted-users`` after it
    (later lines win)."""
    base = (original or b"").decode()
    if base and not base.endswith("\n"):
        base += "\n"
    lines = [*DAEMON_SETTINGS, f"trusted-users = {' '.join(trusted_users)}"]
    return (base + CONF_MARK + "\n" + "".join(f"{x}\n" for x in lines)).encode()


@dataclass(slots=True, kw_only=True)
class NixDaemon:
    """A root ``nix-daemon`` started by the tests; nix-job may replace it by a restarted one, so
    the one to stop is whichever process listens on the socket (SO_PEERCRED)."""

    log: Path
    socket: Path = DAEMON_SOCKET
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    probe: UnixSocketProbe = field(default_factory=UnixSocketProbe)

    def answers(self) -> bool:
        return self.probe.answers(self.socket)

    def listener(self) -> int | None:
        """PID of the daemon serving the socket, checked to be a nix-daemon."""
        pid = self.probe.listener_pid(self.socket)
        if pid is None:
            return None
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        argv = [os.fsdecode(p) for p in raw.split(b"\0") if p]
        return pid if is_daemon_cmdline(argv) else None

    def start(self) -> int:
        if self.answers():
            raise HostedSetupError(
                f"a process already serves {self.socket} (PID "
                f"{self.probe.listener_pid(self.socket)}); the hosted tests start their own "
                "nix-daemon: stop that one first."
            )
        nix_daemon = _which("nix-daemon") or "nix-daemon"
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [nix_daemon],
                env=env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        self._wait(self.answers, f"the nix-daemon (PID {proc.pid}) to answer on {self.socket}")
        return proc.pid

    def stop(self) -> None:
        """SIGTERM the serving daemon (and any daemon the tests started) and wait for them."""
        ours = [p.pid for p in self.started]
        pids = [p for p in (self.listener(), *ours) if p is not None and _alive(p)]
        for pid in dict.fromkeys(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DAEMON_START_S
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._wait(lambda: not self.answers(), f"the nix-daemon to stop serving {self.socket}")

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DAEMON_START_S
        while not done():
            if time.monotonic() >= deadline:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise HostedSetupError(f"timed out waiting for {what}; daemon log:\n{tail}")
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running and not a zombie (a reaped-later child of ours counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat[stat.rindex(")") + 2 :].startswith("Z"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class HostedRunner:
    """One shape: the daemon as configured for ``trusted`` (or not) and the user to run as."""

    user: RunnerUser
    trusted: bool
    daemon: NixDaemon
    base: Path  # a directory the user owns, for per-test workspaces
    tool_cache: Path  # the action's venv lives here (owned by the user, shared)
    code: UserCode  # the repository and the harness's packages, readable by the user
    nix_conf: FileSnapshot  # nix.conf as the daemon was started with it

    @property
    def variant(self) -> str:
        return "trusted" if self.trusted else "untrusted"

    def workdir(self, name: str) -> Path:
        return self.user.own_dir(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.base)))

    def show_config(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """Effective Nix settings as the user sees them, with no NIX_CONFIG: nix.conf and the
        user's files, i.e. what a daemon started now reads (as root, the same files)."""
        run_env = {**self.user.base_env(), "NIX_REMOTE": "daemon", **(env or {})}
        done = subprocess.run(
            self.user.argv(
                "nix", "show-config", "--json", "--extra-experimental-features", "nix-command",
                env=run_env,
            ),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise HostedSetupError(f"`nix show-config` as {self.user.name} failed: {done.stderr}")
        return parse_config(done.stdout)


@contextlib.contextmanager
def hosted_runner(
    *, trusted: bool, base: Path, tool_cache: Path, code: UserCode, user: RunnerUser
) -> Iterator[HostedRunner]:
    """nix.conf set up for the daemon (with the user in trusted-users or not), the daemon
    started; afterwards the daemon is stopped by PID, nix.conf restored byte for byte, the
    socket file removed if there was none, and a systemd-run daemon started again."""
    conf = FileSnapshot.take(NIX_CONF)
    if conf.data is not None and CONF_MARK.encode() in conf.data:  # left by a killed run
        clean = conf.data[: conf.data.index(CONF_MARK.encode())]
        conf = FileSnapshot(path=NIX_CONF, data=clean, mode=conf.mode, uid=conf.uid, gid=conf.gid)
    socket_existed = DAEMON_SOCKET.exists()
    users = ["root", user.name] if trusted else ["root"]
    daemon = NixDaemon(log=base / f"nix-daemon-{'trusted' if trusted else 'untrusted'}.log")
    paused = pause_systemd_daemon()
    try:
        NIX_CONF.parent.mkdir(parents=True, exist_ok=True)
        FileSnapshot(
            path=NIX_CONF,
            data=daemon_conf_text(conf.data, trusted_users=users),
            mode=conf.mode,
            uid=conf.uid,
            gid=conf.gid,
        ).restore()
        configured = FileSnapshot.take(NIX_CONF)
        daemon.start()
        yield HostedRunner(
            user=user,
            trusted=trusted,
            daemon=daemon,
            base=base,
            tool_cache=tool_cache,
            code=code,
            nix_conf=configured,
        )
    finally:
        try:
            daemon.stop()
        finally:
            conf.restore()
            if not socket_existed:
                DAEMON_SOCKET.unlink(missing_ok=True)
            if paused:
                _run(["systemctl", "start", *paused], "starting the systemd nix-daemon again")


def pause_systemd_daemon() -> tuple[str, ...]:
    """Stop the nix-daemon units systemd runs (apt's nix-bin recommends nix-setup-systemd);
    return those to start again. The tests' own daemon then owns the socket, and nix-job takes
    its restart-by-PID path, as on any host where systemd does not run the daemon."""
    systemctl = _which("systemctl")
    if not SYSTEMD_DIR.is_dir() or systemctl is None:
        return ()
    active = tuple(
        unit
        for unit in SYSTEMD_UNITS
        if subprocess.run([systemctl, "is-active", "--quiet", unit], check=False).returncode == 0
    )
    if active:
        _run([systemctl, "stop", *active], "stopping the systemd nix-daemon for the tests")
    return active


# ---------------------------------------------------------------------------------------------
# Code the user can read


@dataclass(frozen=True, slots=True, kw_only=True)
class UserCode:
    """The repository and the dev venv's packages, where the runner user can read them."""

    repo: Path
    site_packages: tuple[Path, ...]

    @property
    def pythonpath(self) -> str:
        return os.pathsep.join(str(p) for p in (self.repo, *self.site_packages))


_NOT_STAGED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


def stage_code(base: Path) -> UserCode:
    """Hard links (copies across file systems) of the checkout and the venv's packages under
    ``base``: a checkout in a private home (GitHub's /home/runner is 0750 on ubuntu-24.04) is
    out of another user's reach even when its files are world-readable."""
    repo = base / "repo"
    shutil.copytree(ROOT, repo, ignore=_NOT_STAGED, copy_function=_link_or_copy)
    staged = []
    for index, source in enumerate(_venv_site_packages()):
        target = base / f"site-packages-{index}"
        shutil.copytree(source, target, ignore=_NOT_STAGED, copy_function=_link_or_copy)
        staged.append(target)
    for path in (repo, *staged):
        for directory, _dirs, _files in os.walk(path):
            Path(directory).chmod(0o755)
    return UserCode(repo=repo, site_packages=tuple(staged))


def _link_or_copy(source: str, target: str) -> object:
    try:
        os.link(source, target)
    except OSError:
        return shutil.copy2(source, target)
    return target


# ---------------------------------------------------------------------------------------------
# Running the action as the user


def run_action_as_user(
    hosted: HostedRunner,
    *,
    workspace: Path,
    inputs: Mapping[str, str],
    event: str,
    env: Mapping[str, str] | None = None,
    process_env: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
    timeout: float = HARNESS_TIMEOUT_S,
) -> ActionResult:
    """Run the real action.yml through the harness (``tests.actionrun.run_nix_job``), the
    harness itself running as the user, so every step, RUNNER_TEMP and the venv are the
    user's. ``process_env`` adds to the runner-like host environment (NIX_REMOTE=daemon, a
    private XDG_CACHE_HOME)."""
    user = hosted.user
    work = hosted.workdir("harness")
    temp = user.own_dir(work / "tmp")
    cache = user.own_dir(work / "xdg-cache")
    host = {**user.base_env(), "NIX_REMOTE": "daemon", "XDG_CACHE_HOME": str(cache)}
    host.update(process_env or {})
    spec = {
        "workspace": str(workspace),
        "tool_cache": str(hosted.tool_cache),
        "inputs": dict(inputs),
        "event": event,
        "env": dict(env or {}),
        "process_env": host,
        "secrets": list(secrets),
        "timeout": timeout,
    }
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec))
    spec_file.chmod(0o644)
    result_file = work / "result.pickle"
    harness_env = {
        **user.base_env(),
        "TMPDIR": str(temp),
        "PYTHONPATH": hosted.code.pythonpath,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if os.environ.get("HARNESS_VERBOSE") == "1":
        harness_env["HARNESS_VERBOSE"] = "1"
    done = subprocess.run(
        user.argv(
            str(USER_PYTHON), "-m", "tests.hosted", str(spec_file), str(result_file),
            env=harness_env,
        ),
        cwd=str(hosted.code.repo),
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        check=False,
    )  # fmt: skip
    if done.returncode != 0 or not result_file.exists():
        raise HostedSetupError(
            f"the harness run as {user.name} failed (exit {done.returncode}):\n"
            f"{done.stderr[-4000:]}\n{done.stdout[-2000:]}"
        )
    # The file comes from the harness process this function just ran with the repo's code.
    result: ActionResult = pickle.loads(result_file.read_bytes())  # noqa: S301
    return result


def _venv_site_packages() -> list[Path]:
    return [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]


def diagnose(hosted: HostedRunner, result: ActionResult | None = None) -> str:
    """What the daemon ignored, for failure messages: the action's warnings, Nix's "ignoring
    untrusted" lines and the effective cache settings as the user sees them."""
    parts = [f"variant: {hosted.variant} (user {hosted.user.name})"]
    if result is not None:
        for note in result.annotations:
            if note.kind in ("warning", "error"):
                parts.append(f"{note.kind}: {note.message}")
        for line in result.output.splitlines():
            if "ignoring untrusted" in line or "don't know how to build" in line:
                parts.append(f"nix: {line.strip()}")
    try:
        config = hosted.show_config()
        for name in CACHE_SETTINGS:
            parts.append(f"effective {name} = {config.get(name, '(unset)')}")
    except HostedSetupError as exc:
        parts.append(str(exc))
    parts.append(f"daemon listener PID: {hosted.daemon.listener()}")
    if result is not None:
        parts.append("--- action output ---\n" + result.output[-6000:])
    return "\n".join(parts)


def _main(argv: Sequence[str]) -> int:
    """Entry run as the user: read the spec, run the action, pickle the result."""
    spec_file, result_file = (Path(a) for a in argv)
    spec = json.loads(spec_file.read_text())
    result = run_nix_job(
        workspace=Path(spec["workspace"]),
        tool_cache=Path(spec["tool_cache"]),
        inputs=spec["inputs"],
        event=spec["event"],
        env=spec["env"],
        process_env=spec["process_env"],
        secrets=tuple(spec["secrets"]),
        timeout=float(spec["timeout"]),
    )
    result_file.write_bytes(pickle.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
