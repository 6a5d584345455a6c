"""nix.conf settings for one job: render them, deliver them where the Nix that runs the command
reads them (NIX_CONFIG, or /etc/nix/nix.conf plus a daemon restart), verify, and restore.

Never writes a secret to disk: only the netrc *path* travels through configuration.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shlex
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Protocol

from nix_job.errors import NixConfigError
from nix_job.nix_install import CommandRunner, NixInstallation, parse_config, socket_answers

MARK_BEGIN = "# BEGIN nix-job"
MARK_END = "# END nix-job"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_.]*$")
_LINE_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9\-_.]*)\s*=\s*(.*)$")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$")

# Settings that may carry credentials: kept client-side in NIX_CONFIG, never in a file.
SECRET_SETTINGS = frozenset({"access-tokens"})
# Settings a daemon uses and ignores from untrusted clients (daemon.cc, setOptions).
DAEMON_SIDE_SETTINGS = frozenset(
    {
        "substituters",
        "extra-substituters",
        "trusted-public-keys",
        "extra-trusted-public-keys",
        "trusted-substituters",
        "extra-trusted-substituters",
        "netrc-file",
        "require-sigs",
        "post-build-hook",
        "builders",
        "sandbox",
        "sandbox-paths",
        "extra-sandbox-paths",
        "narinfo-cache-negative-ttl",
        "narinfo-cache-positive-ttl",
    }
)
# Settings whose effective value is checked after applying.
VERIFIED_SETTINGS = frozenset(
    {
        "substituters",
        "extra-substituters",
        "trusted-public-keys",
        "extra-trusted-public-keys",
        "netrc-file",
    }
)

Setting = tuple[str, str]
Mode = Literal["env", "system-file", "env-ignored"]


# ---------------------------------------------------------------------------------------------
# Pure rendering


def parse_settings(items: Sequence[Setting | str]) -> list[Setting | str]:
    """Validate ``(name, value)`` pairs and ``name = value`` lines (comments and blank lines
    allowed in line form). Returns pairs, with comments kept as ``str``. Raises NixConfigError
    naming every bad entry."""
    out: list[Setting | str] = []
    problems: list[str] = []
    for item in items:
        if isinstance(item, tuple):
            name, value = item
            if not NAME_RE.match(name):
                problems.append(f"{name!r} is not a nix.conf setting name")
            elif any(c in value for c in "\n\r\0"):
                problems.append(f"the value of {name} contains a line break or NUL byte")
            else:
                out.append((name, value.strip()))
            continue
        if "\0" in item:
            problems.append("a configuration line contains a NUL byte")
            continue
        for raw in item.splitlines():
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                out.append(line)
            elif match := _LINE_RE.match(line):
                out.append((match[1], match[2].strip()))
            else:
                shown = line if len(line) <= 80 else line[:77] + "..."
                problems.append(f"{shown!r} is not a `name = value` setting")
    if problems:
        listed = "\n".join(f"- {p}" for p in problems)
        raise NixConfigError(
            f"{len(problems)} invalid nix.conf setting(s); nothing was applied:\n{listed}\n"
            "Write one `name = value` per line (see `man nix.conf`); `include` is not supported."
        )
    return out


def render_conf(items: Sequence[Setting | str]) -> str:
    """``name = value`` lines (comments kept), newline-terminated; validated."""
    lines = []
    for entry in parse_settings(items):
        lines.append(entry if isinstance(entry, str) else f"{entry[0]} = {entry[1]}".rstrip())
    return "".join(line + "\n" for line in lines)


def append_nix_config(existing: str | None, addition: str) -> str:
    """NIX_CONFIG with ``addition`` after the runner's own value, which is kept as it was."""
    if not existing or not existing.strip():
        return addition
    return existing.rstrip("\n") + "\n" + addition


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockOwner:
    """The nix-job process that wrote a block: its PID and the boot it ran in."""

    pid: int
    boot: str  # /proc/sys/kernel/random/boot_id; "" when unknown


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockHeader:
    run_id: str
    owner: BlockOwner | None  # None: a block of the older format, without owner


def parse_header(line: str) -> BlockHeader | None:
    """The run id and owner of a ``# BEGIN nix-job`` line; None for any other line."""
    stripped = line.strip()
    if not stripped.startswith(MARK_BEGIN):
        return None
    words = stripped[len(MARK_BEGIN) :].split()
    fields = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    pid = fields.get("pid", "")
    owner = (
        BlockOwner(pid=int(pid), boot=fields.get("boot", "").strip("?"))
        if pid.isdecimal()
        else None
    )
    return BlockHeader(run_id=words[0] if words else "?", owner=owner)


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleScan:
    text: str  # the input without the removed nix-job blocks
    run_ids: tuple[str, ...]  # runs whose blocks were removed
    unterminated: bool  # a removed BEGIN without END: everything after it was dropped
    kept: tuple[str, ...] = ()  # runs whose blocks were kept


def strip_blocks(text: str, keep: Callable[[BlockHeader], bool] = lambda _: False) -> StaleScan:
    """Remove every ``# BEGIN nix-job …`` … ``# END nix-job`` block for which ``keep`` is
    false. A BEGIN line inside a block ends that block and starts the next one."""
    out: list[str] = []
    removed: list[str] = []
    kept: list[str] = []
    current: tuple[BlockHeader, bool] | None = None  # the open block, and whether it is kept
    for line in text.splitlines(keepends=True):
        header = parse_header(line)
        if header is not None:
            current = (header, keep(header))
            (kept if current[1] else removed).append(header.run_id)
            if current[1]:
                out.append(line)
        elif current is not None:
            if current[1]:
                out.append(line)
            if line.strip() == MARK_END:
                current = None
        else:
            out.append(line)
    unterminated = current is not None and not current[1]
    return StaleScan(
        text="".join(out), run_ids=tuple(removed), unterminated=unterminated, kept=tuple(kept)
    )


def add_block(text: str, *, run_id: str, body: str, owner: BlockOwner | None = None) -> str:
    """``text`` with a marked block holding ``body`` appended (later lines win in nix.conf)."""
    base = text if not text or text.endswith("\n") else text + "\n"
    who = f" pid={owner.pid} boot={owner.boot or '?'}" if owner is not None else ""
    begin = f"{MARK_BEGIN} {run_id}{who} (temporary: removed when this job ends)\n"
    return base + begin + body + ("" if body.endswith("\n") or not body else "\n") + MARK_END + "\n"


def _boot_id(proc_dir: Path) -> str:
    try:
        return (proc_dir / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def current_owner(proc_dir: Path = Path("/proc")) -> BlockOwner:
    """This process, as the owner of the block it writes."""
    return BlockOwner(pid=os.getpid(), boot=_boot_id(proc_dir))


class OwnerLiveness(Protocol):
    def __call__(self, owner: BlockOwner) -> bool:
        """The nix-job process ``owner`` may still run (True whenever that cannot be ruled out)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcLiveness:
    """Alive unless proven dead: another boot, no such PID, or a PID that is not nix-job now."""

    proc_dir: Path = Path("/proc")

    def __call__(self, owner: BlockOwner) -> bool:
        boot = _boot_id(self.proc_dir)
        if boot and owner.boot and owner.boot != boot:
            return False
        try:
            cmdline = (self.proc_dir / str(owner.pid) / "cmdline").read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            return exc.errno not in (errno.ENOENT, errno.ESRCH)
        return b"nix_job" in cmdline


def verify_settings(settings: Sequence[Setting], effective: Mapping[str, str]) -> list[str]:
    """Why each checked setting is not in effect (empty when all are)."""
    problems: list[str] = []
    for name, value in settings:
        if name not in VERIFIED_SETTINGS:
            continue
        target = name.removeprefix("extra-")
        if target not in effective:
            continue
        now = effective[target]
        if name == "netrc-file":
            ok = now.strip() == value.strip()
        elif name.startswith("extra-"):
            ok = set(value.split()) <= set(now.split())
        else:
            ok = now.split() == value.split()
        if not ok:
            problems.append(
                f"`{name} = {value}` is not in effect: the effective {target} is "
                f"{now or '(empty)'!r}. A later setting replaces it (a plain `{target} =` in "
                f"NIX_CONFIG, ~/.config/nix/nix.conf or NIX_USER_CONF_FILES); use "
                f"`extra-{target}` there instead"
            )
    return problems


# ---------------------------------------------------------------------------------------------
# Daemon seams


class DaemonSocketProbe(Protocol):
    def answers(self, path: Path) -> bool:
        """Something accepts connections on the Unix socket ``path``."""
        ...

    def listener_pid(self, path: Path) -> int | None:
        """PID of the process that listens on ``path`` (SO_PEERCRED), None when unknown."""
        ...


class UnixSocketProbe:
    def __init__(self, *, timeout_s: float = 2.0) -> None:
        self._timeout = timeout_s

    def _connect(self, path: Path) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            return None
        return sock

    def answers(self, path: Path) -> bool:
        return socket_answers(path, timeout_s=self._timeout)

    def listener_pid(self, path: Path) -> int | None:
        # For a Unix stream socket the peer credentials are those of the process that called
        # listen(): the master nix-daemon (or PID 1 under systemd socket activation).
        sock = self._connect(path)
        if sock is None:
            return None
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        finally:
            sock.close()
        pid, _uid, _gid = struct.unpack("3i", raw)
        return pid or None


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemPaths:
    nix_conf: Path = Path("/etc/nix/nix.conf")
    daemon_socket: Path = Path("/nix/var/nix/daemon-socket/socket")
    systemd_dir: Path = Path("/run/systemd/system")
    store_dir: Path = Path("/nix/store")
    proc_dir: Path = Path("/proc")


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonControl:
    """How to restart the daemon: through systemd, or by PID and its own command line."""

    kind: Literal["systemd", "manual"]
    unit: str = "nix-daemon.service"
    argv: tuple[str, ...] = ()  # manual: the command line it was started with


def is_daemon_cmdline(argv: Sequence[str]) -> bool:
    if not argv:
        return False
    prog = Path(argv[0]).name
    return prog == "nix-daemon" or (prog == "nix" and "daemon" in argv[1:])


# ---------------------------------------------------------------------------------------------
# Applying and restoring


class _Privileged:
    """File and daemon operations, as argv through the runner, with sudo unless root."""

    def __init__(
        self,
        *,
        runner: CommandRunner,
        prefix: tuple[str, ...],
        probe: DaemonSocketProbe,
        paths: SystemPaths,
        daemon_env: Mapping[str, str],
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        timeout_s: float,
    ) -> None:
        self.runner = runner
        self.prefix = prefix
        self.probe = probe
        self.paths = paths
        self.daemon_env = dict(daemon_env)
        self.clock = clock
        self.sleep = sleep
        self.timeout_s = timeout_s

    def run(self, argv: Sequence[str], why: str) -> None:
        full = [*self.prefix, *argv]
        done = self.runner.run(full, timeout=120)
        if done.returncode != 0:
            raise NixConfigError(
                f"`{shlex.join(full)}` failed (exit {done.returncode}) while {why}: "
                f"{done.tail(5) or 'no output'}.\nnix-job needs root or passwordless sudo for "
                "this; or add the job user to trusted-users so no system change is needed."
            )

    def install_file(self, src: Path, target: Path, *, mode: int, uid: int, gid: int) -> None:
        staged = target.with_name(f".{target.name}.nix-job")
        why = f"writing {target}"
        self.run(
            ["install", "-m", f"{mode:04o}", "-o", str(uid), "-g", str(gid), str(src), str(staged)],
            why,
        )
        self.run(["mv", "-f", str(staged), str(target)], why)

    def restart(self, control: DaemonControl) -> None:
        sock = self.paths.daemon_socket
        if control.kind == "systemd":
            self.run(["systemctl", "restart", control.unit], "restarting the nix-daemon")
        else:
            pid = self.probe.listener_pid(sock)
            if pid is not None and pid > 1:
                self.run(["kill", "-TERM", str(pid)], "stopping the nix-daemon")
                self.wait(lambda: not self.probe.answers(sock), "the old nix-daemon to stop")
            self.runner.spawn([*self.prefix, *control.argv], env=self.daemon_env)
        self.wait(lambda: self.probe.answers(sock), f"the nix-daemon to answer on {sock}")

    def wait(self, done: Callable[[], bool], what: str) -> None:
        deadline = self.clock() + self.timeout_s
        while not done():
            if self.clock() >= deadline:
                raise NixConfigError(
                    f"timed out after {self.timeout_s:.0f} s waiting for {what}.\nCheck the "
                    "daemon (`systemctl status nix-daemon`, `journalctl -u nix-daemon`, or its "
                    "process) and start it by hand if needed."
                )
            self.sleep(0.1)


class _Restorer:
    """Takes this run's block out of nix.conf and restarts the daemon once more. Idempotent,
    thread-safe. When the file is still what this run wrote, the backup goes back byte for
    byte; when it changed meanwhile (another run's block, an edit by hand), only this run's
    block is removed from the current content."""

    def __init__(
        self,
        *,
        priv: _Privileged,
        target: Path,
        source: Path | None,  # bytes to put back; None: the file did not exist
        written: bytes,  # what this run put in place
        header: BlockHeader,  # this run's block
        mode: int,
        uid: int,
        gid: int,
        control: DaemonControl | None,
        workdir: Path,
        lock: Callable[[], AbstractContextManager[None]],
        log: Callable[[str], None],
    ) -> None:
        self._priv = priv
        self._target = target
        self._source = source
        self._written = written
        self._header = header
        self._mode, self._uid, self._gid = mode, uid, gid
        self._control = control
        self._workdir = workdir
        self._lock_file = lock
        self._log = log
        self._lock = threading.Lock()
        self.done = False

    def _current(self) -> bytes | None:
        """The file as it is now, through the privileged helper when we cannot read it."""
        try:
            return self._target.read_bytes()
        except FileNotFoundError:
            return None
        except PermissionError:
            copy = self._workdir / "nix.conf.now"
            self._priv.run(
                [
                    "install", "-m", "0600", "-o", str(os.getuid()), "-g", str(os.getgid()),
                    str(self._target), str(copy),
                ],
                f"reading {self._target}",
            )  # fmt: skip
            return copy.read_bytes()
        except OSError as exc:
            raise NixConfigError(f"cannot read {self._target}: {exc}") from exc

    def _is_ours(self, header: BlockHeader) -> bool:
        return header == self._header

    def _put_back(self) -> None:
        current = self._current()
        if current == self._written:
            if self._source is None:
                self._priv.run(["rm", "-f", str(self._target)], f"removing {self._target}")
            else:
                self._priv.install_file(
                    self._source, self._target, mode=self._mode, uid=self._uid, gid=self._gid
                )
            return
        if current is None:
            self._log(f"{self._target} was removed during the job; nothing to take out of it")
            return
        scan = strip_blocks(
            current.decode("utf-8", "surrogateescape"), keep=lambda h: not self._is_ours(h)
        )
        if not scan.run_ids:
            self._log(f"{self._target} holds no nix-job block of run {self._header.run_id}")
            return
        self._log(
            f"{self._target} changed during the job (another nix-job run or an edit); "
            f"removing only the block of run {self._header.run_id} and keeping the rest"
        )
        info = self._target.stat()
        edited = self._workdir / "nix.conf.edited"
        edited.write_bytes(scan.text.encode("utf-8", "surrogateescape"))
        self._priv.install_file(
            edited, self._target, mode=info.st_mode & 0o7777, uid=info.st_uid, gid=info.st_gid
        )

    def restore(self) -> None:
        with self._lock:
            if self.done:
                return
            try:
                with self._lock_file():
                    self._put_back()
                    if self._control is not None:
                        self._priv.restart(self._control)
            except NixConfigError as exc:
                raise NixConfigError(
                    f"restoring {self._target} failed: {exc.message}\nThe original is kept at "
                    f"{self._source or '(it did not exist)'}; put it back by hand (keeping other "
                    "nix-job runs' blocks) and restart nix-daemon before the next job."
                ) from exc
            self.done = True
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._log(f"Restored {self._target}")


@contextmanager
def directory_lock(
    directory: Path,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    timeout_s: float,
) -> Iterator[None]:
    """Serialise nix-job runs that change files in ``directory`` (flock on the directory, which
    any user may open and which, unlike the file, is never replaced). Without the directory
    (or permission to open it) there is nothing to share, and no lock is taken."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        deadline = clock() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() >= deadline:
                    raise NixConfigError(
                        f"another nix-job run kept {directory} locked for {timeout_s:.0f} s; "
                        "nothing was changed by this step.\nCheck for a hung nix-job process "
                        "on this machine (it holds the lock until it exits)."
                    ) from None
                sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


class _ConfLock:
    """``directory_lock`` on the nix.conf directory, re-entrant within this process (flock
    locks of two descriptors conflict even in one process)."""

    def __init__(self, open_lock: Callable[[], AbstractContextManager[None]]) -> None:
        self._open_lock = open_lock
        self._mutex = threading.RLock()
        self._depth = 0
        self._held: AbstractContextManager[None] | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                held = self._open_lock()
                held.__enter__()
                self._held = held
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._held is not None:
                    held, self._held = self._held, None
                    held.__exit__(None, None, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedConfig:
    mode: Mode  # env: NIX_CONFIG only; system-file: nix.conf block + daemon restart
    env: Mapping[str, str]  # variables to set for nix-job's Nix calls and the command
    conf_path: Path | None  # the file changed for this job (restored by restore())
    ignored: tuple[str, ...]  # settings the daemon ignores
    stale_runs: tuple[str, ...]  # run ids of stale blocks that were removed
    warnings: tuple[str, ...]
    effective: Mapping[str, str]  # effective values of the checked settings
    seconds: float
    restorer: _Restorer | None = field(default=None, repr=False, compare=False)

    def restore(self) -> None:
        """Undo what apply() changed on disk. Safe to call twice; call it in ``finally``."""
        if self.restorer is not None:
            self.restorer.restore()

    @property
    def restored(self) -> bool:
        return self.restorer is None or self.restorer.done


@dataclass(frozen=True, slots=True, kw_only=True)
class _Delivery:
    mode: Mode
    env_entries: list[Setting | str]
    restorer: _Restorer | None
    ignored: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()


class NixConfigurator:
    """Apply one job's settings where the Nix running the command reads them.

    - No daemon, or a daemon that trusts the user: ``NIX_CONFIG`` (the runner's value first,
      ours appended); nothing on disk.
    - Daemon, untrusted user, root or passwordless sudo: a marked block appended to nix.conf
      (prepared in RUNNER_TEMP, put in place with ``install`` + ``mv``), then a daemon
      restart: ``systemctl restart nix-daemon.service`` when systemd runs it; otherwise the
      listener's PID (SO_PEERCRED) gets SIGTERM and its own command line (/proc/PID/cmdline)
      is started again, detached, through sudo. Limits of the latter: the daemon's original
      environment is not reproduced (it gets PATH and TLS variables only), builds running on
      it are interrupted, and a daemon that is PID 1 is never touched.
    - Daemon, untrusted user, no way to write nix.conf: ``NIX_CONFIG`` anyway, and the
      settings the daemon ignores are named in a warning.
    Access tokens never go to the file. Each block names its owner (run id, PID, boot id):
    blocks of killed jobs (and of the older format, without owner) are removed; a block whose
    owner may still run is kept, so several runs can share one daemon. Changes to the file are
    serialised by a lock on its directory; restore() removes only this run's block when the
    file changed meanwhile.
    """

    def __init__(
        self,
        *,
        runner: CommandRunner,
        temp_dir: Path,
        run_id: str,
        env: Mapping[str, str],
        is_root: bool,
        log: Callable[[str], None],
        sudo: Sequence[str] = ("sudo", "-n"),
        paths: SystemPaths = SystemPaths(),
        probe: DaemonSocketProbe | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        daemon_timeout_s: float = 30.0,
        owner: BlockOwner | None = None,
        liveness: OwnerLiveness | None = None,
    ) -> None:
        if not RUN_ID_RE.match(run_id):
            raise ValueError(f"run id {run_id!r} must be 1-100 of A-Z a-z 0-9 . _ : -")
        self._runner = runner
        self._temp_dir = temp_dir
        self._run_id = run_id
        self._env = dict(env)
        self._is_root = is_root
        self._log = log
        self._sudo = tuple(sudo)
        self._paths = paths
        self._clock = clock
        # SECURITY: a restarted daemon gets PATH (and TLS variables) only; in particular no
        # RUNNER_TRACKING_ID, or the runner would kill it as an orphan when the job ends.
        daemon_env = {
            k: v
            for k, v in env.items()
            if k in ("PATH", "NIX_SSL_CERT_FILE", "SSL_CERT_FILE", "LANG", "TZ")
        }
        self._priv = _Privileged(
            runner=runner,
            prefix=() if is_root else self._sudo,
            probe=probe or UnixSocketProbe(),
            paths=paths,
            daemon_env=daemon_env,
            clock=clock,
            sleep=sleep,
            timeout_s=daemon_timeout_s,
        )
        self._can_sudo: bool | None = None
        self._header = BlockHeader(run_id=run_id, owner=owner or current_owner(paths.proc_dir))
        self._alive = liveness or ProcLiveness(proc_dir=paths.proc_dir)
        # Another run may hold the lock through two daemon restarts (stop, then start).
        self._conf_lock = _ConfLock(
            lambda: directory_lock(
                paths.nix_conf.parent,
                clock=clock,
                sleep=sleep,
                timeout_s=3 * daemon_timeout_s,
            )
        )

    def _keep(self, header: BlockHeader) -> bool:
        """A block that another nix-job run may still need: it names a live owner."""
        return header != self._header and header.owner is not None and self._alive(header.owner)

    def _privileged(self) -> bool:
        if self._is_root:
            return True
        if self._can_sudo is None:
            self._can_sudo = self._runner.run([*self._sudo, "true"], timeout=30).returncode == 0
        return self._can_sudo

    def _target(self) -> Path:
        conf = self._paths.nix_conf
        if not conf.is_symlink():
            return conf
        real = conf.resolve()
        store = self._paths.store_dir
        if real.is_relative_to(store):
            raise NixConfigError(
                f"{conf} is a link into {store} (NixOS or home-manager manage it), so nix-job "
                "cannot add its settings there.\nAdd the runner user to `nix.settings."
                "trusted-users` in the system configuration, then settings go through NIX_CONFIG."
            )
        return real

    def _daemon_control(self) -> DaemonControl:
        if self._paths.systemd_dir.is_dir():
            units = ["nix-daemon.service", "nix-daemon.socket"]
            if self._runner.run(["systemctl", "is-active", "--quiet", *units]).returncode == 0:
                return DaemonControl(kind="systemd")
        sock = self._paths.daemon_socket
        pid = self._priv.probe.listener_pid(sock)
        hint = (
            "Run the daemon under systemd, or add the job user to trusted-users so nix-job "
            "needs no restart."
        )
        if pid is None:
            raise NixConfigError(
                f"cannot tell which process serves {sock}, so the nix-daemon cannot be "
                f"restarted to read new settings; nothing was changed.\n{hint}"
            )
        if pid == 1:
            raise NixConfigError(
                f"the nix-daemon on {sock} is PID 1 (a container's entrypoint or socket "
                f"activation); restarting it would stop the container; nothing was changed.\n{hint}"
            )
        try:
            raw = (self._paths.proc_dir / str(pid) / "cmdline").read_bytes()
        except OSError as exc:
            raise NixConfigError(
                f"cannot read the command line of the nix-daemon (PID {pid}): {exc}; nothing "
                f"was changed.\n{hint}"
            ) from exc
        argv = tuple(os.fsdecode(part) for part in raw.split(b"\0") if part)
        if not is_daemon_cmdline(argv):
            raise NixConfigError(
                f"the process serving {sock} (PID {pid}: {shlex.join(argv) or '?'}) is not a "
                f"nix-daemon nix-job knows how to restart; nothing was changed.\n{hint}"
            )
        return DaemonControl(kind="manual", argv=argv)

    def apply(
        self, lines: Sequence[Setting | str], *, installation: NixInstallation
    ) -> AppliedConfig:
        """Deliver ``lines``. Raises NixConfigError; on error nothing stays changed."""
        start = self._clock()
        entries = parse_settings(lines)
        settings = [e for e in entries if isinstance(e, tuple)]
        shareable_names = [
            e[0] for e in entries if isinstance(e, tuple) and e[0] not in SECRET_SETTINGS
        ]
        warnings: list[str] = []
        target = self._target()
        needs_file = installation.daemon and not installation.trusted and bool(shareable_names)
        with self._conf_lock():
            delivery = self._deliver(target, entries, installation, needs_file, warnings)
        env: dict[str, str] = {}
        if delivery.env_entries:
            env["NIX_CONFIG"] = append_nix_config(
                self._env.get("NIX_CONFIG"), render_conf(delivery.env_entries)
            )
        try:
            effective = self._verify(installation, env, settings, warnings)
        except BaseException:
            if delivery.restorer is not None:
                self._roll_back(delivery.restorer)
            raise
        for warning in warnings:
            self._log(f"warning: {warning}")
        return AppliedConfig(
            mode=delivery.mode,
            env=MappingProxyType(env),
            conf_path=target if delivery.restorer is not None else None,
            ignored=delivery.ignored,
            stale_runs=delivery.stale,
            warnings=tuple(warnings),
            effective=MappingProxyType(effective),
            seconds=self._clock() - start,
            restorer=delivery.restorer,
        )

    def _deliver(
        self,
        target: Path,
        entries: Sequence[Setting | str],
        installation: NixInstallation,
        needs_file: bool,
        warnings: list[str],
    ) -> _Delivery:
        """Write this run's block, or only remove stale ones; under the nix.conf lock."""
        secret = [e for e in entries if isinstance(e, tuple) and e[0] in SECRET_SETTINGS]
        shareable = [e for e in entries if isinstance(e, str) or e[0] not in SECRET_SETTINGS]
        original = self._read(target)
        text = original.decode("utf-8", "surrogateescape") if original else ""
        scan = strip_blocks(text, keep=self._keep) if original else None
        stale = scan.run_ids if scan else ()
        if needs_file and self._privileged():
            restorer = self._write_block(target, original, scan, shareable)
            if stale:
                warnings.append(self._stale_warning(target, scan))
            return _Delivery(
                mode="system-file", env_entries=list(secret), restorer=restorer, stale=stale
            )
        ignored: tuple[str, ...] = ()
        if needs_file:
            names = [e[0] for e in shareable if isinstance(e, tuple)]
            ignored = tuple(n for n in dict.fromkeys(names) if n in DAEMON_SIDE_SETTINGS)
            if ignored:
                warnings.append(
                    f"the daemon ignored: {', '.join(ignored)} (user {installation.user} is "
                    f"not trusted, and nix-job cannot edit {target} without root or "
                    f"passwordless sudo). Add {installation.user} to trusted-users in "
                    f"{target} and restart nix-daemon, or allow passwordless sudo"
                )
        if stale and self._clean_stale(target, original, scan, installation, warnings):
            warnings.append(self._stale_warning(target, scan))
        return _Delivery(
            mode="env-ignored" if needs_file else "env",
            env_entries=list(entries),
            restorer=None,
            ignored=ignored,
            stale=stale,
        )

    @staticmethod
    def _stale_warning(target: Path, scan: StaleScan | None) -> str:
        ids = scan.run_ids if scan else ()
        lost = scan is not None and scan.unterminated
        return (
            f"removed {len(ids)} stale nix-job block(s) from {target} (run {', '.join(ids)}): "
            "a previous job was killed before it could clean up"
            + ("; one block had no end marker, so everything after it was dropped" if lost else "")
        )

    def _read(self, target: Path) -> bytes | None:
        try:
            return target.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise NixConfigError(
                f"cannot read {target}: {exc}; without a backup nix-job will not change it.\n"
                "Make it readable (nix.conf is normally mode 0644) or add the job user to "
                "trusted-users."
            ) from exc

    def _workdir(self) -> Path:
        self._temp_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="nix-job-conf-", dir=self._temp_dir))

    def _write_block(
        self,
        target: Path,
        original: bytes | None,
        scan: StaleScan | None,
        shareable: Sequence[Setting | str],
    ) -> _Restorer:
        control = self._daemon_control()  # before touching anything: may refuse
        work = self._workdir()
        if original is None:
            back: Path | None = None
            mode, uid, gid = 0o644, 0, 0
            if not target.parent.is_dir():
                self._priv.run(["mkdir", "-p", str(target.parent)], f"creating {target.parent}")
            clean_text = ""
        else:
            info = target.stat()
            mode, uid, gid = info.st_mode & 0o7777, info.st_uid, info.st_gid
            back = work / "nix.conf.orig"
            back.write_bytes(original)
            clean_text = scan.text if scan else original.decode("utf-8", "surrogateescape")
            if scan and scan.run_ids:  # restore to the state before the killed job
                back = work / "nix.conf.restore"
                back.write_bytes(clean_text.encode("utf-8", "surrogateescape"))
        new = work / "nix.conf.new"
        written = add_block(
            clean_text, run_id=self._run_id, body=render_conf(shareable), owner=self._header.owner
        ).encode("utf-8", "surrogateescape")
        new.write_bytes(written)
        new.chmod(0o644)
        restorer = _Restorer(
            priv=self._priv,
            target=target,
            source=back,
            written=written,
            header=self._header,
            lock=self._conf_lock,
            mode=mode,
            uid=uid,
            gid=gid,
            control=control,
            workdir=work,
            log=self._log,
        )
        try:
            self._priv.install_file(new, target, mode=mode, uid=uid, gid=gid)
            self._log(f"Wrote nix-job's settings to {target}; restarting the nix-daemon")
            self._priv.restart(control)
        except BaseException:
            self._roll_back(restorer)
            raise
        return restorer

    def _roll_back(self, restorer: _Restorer) -> None:
        """Undo after a failure, without hiding the failure itself."""
        try:
            restorer.restore()
        except NixConfigError as exc:
            self._log(f"warning: {exc.message}")

    def _clean_stale(
        self,
        target: Path,
        original: bytes | None,
        scan: StaleScan | None,
        installation: NixInstallation,
        warnings: list[str],
    ) -> bool:
        """Write ``target`` without stale blocks (and restart the daemon); False if we cannot."""
        if original is None or scan is None:
            return False
        if not self._privileged():
            warnings.append(
                f"{target} holds stale nix-job block(s) (run {', '.join(scan.run_ids)}) that "
                "nix-job cannot remove without root or passwordless sudo; remove the lines "
                "between `# BEGIN nix-job` and `# END nix-job` by hand"
            )
            return False
        control: DaemonControl | None = None
        if installation.daemon:
            try:
                control = self._daemon_control()
            except NixConfigError as exc:
                warnings.append(
                    f"the daemon keeps the stale settings until it restarts: {exc.message}"
                )
        work = self._workdir()
        try:
            info = target.stat()
            clean = work / "nix.conf.clean"
            clean.write_bytes(scan.text.encode("utf-8", "surrogateescape"))
            self._priv.install_file(
                clean, target, mode=info.st_mode & 0o7777, uid=info.st_uid, gid=info.st_gid
            )
            if control is not None:
                self._priv.restart(control)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return True

    def _verify(
        self,
        installation: NixInstallation,
        env: Mapping[str, str],
        settings: Sequence[Setting],
        warnings: list[str],
    ) -> dict[str, str]:
        checked = {n.removeprefix("extra-") for n, _ in settings if n in VERIFIED_SETTINGS}
        if not checked:
            return {}
        done = self._runner.run(
            installation.config_show_argv(), env={**self._env, **env}, timeout=60
        )
        if done.returncode != 0:
            warnings.append(
                f"could not read back the effective Nix configuration: {done.tail(3)}; the "
                "settings were applied but not verified"
            )
            return {}
        try:
            config = parse_config(done.stdout)
        except (ValueError, AttributeError) as exc:
            warnings.append(f"could not parse the effective Nix configuration: {exc}")
            return {}
        warnings.extend(verify_settings(settings, config))
        return {name: config[name] for name in sorted(checked) if name in config}
