"""Deliver one job's nix.conf settings where the Nix that runs the command reads them
(NIX_CONFIG, or a marked block in /etc/nix/nix.conf plus a daemon restart), verify, restore."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from nix_job.core.errors import NixConfigError
from nix_job.core.problem import Problem
from nix_job.nix.daemon import (
    DEFAULT_SYSTEM_PATHS,
    DaemonControl,
    DaemonSocketProbe,
    OwnerLiveness,
    ProcLiveness,
    SystemPaths,
    UnixSocketProbe,
    current_owner,
    daemon_control,
)
from nix_job.nix.facts import NixInstallation, parse_config
from nix_job.nix.settings import (
    RUN_ID_RE,
    VERIFIED_SETTINGS,
    BlockHeader,
    BlockOwner,
    DeliveryPlan,
    Mode,
    Setting,
    StaleScan,
    add_block,
    append_nix_config,
    parse_settings,
    plan_delivery,
    render_conf,
    requires_system_file,
    strip_blocks,
    verify_settings,
)
from nix_job.nix.system_file import ConfLock, Privileged, Restorer, directory_lock
from nix_job.process import CommandRunner

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppliedConfig:
    mode: Mode  # env: NIX_CONFIG only; system-file: nix.conf block + daemon restart
    env: Mapping[str, str]  # variables to set for nix-job's Nix calls and the command
    conf_path: Path | None  # the file changed for this job (restored by restore())
    ignored: tuple[str, ...]  # settings the daemon ignores
    problems: tuple[Problem, ...]
    restorer: Restorer | None = field(default=None, repr=False, compare=False)

    def restore(self, budget_s: float | None = None) -> None:
        """Undo what apply() changed on disk. Safe to call twice; call it in ``finally``.
        ``budget_s`` bounds every wait (a cancelled run)."""
        if self.restorer is not None:
            self.restorer.restore(budget_s)


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
        sudo: Sequence[str] = ("sudo", "-n"),
        paths: SystemPaths = DEFAULT_SYSTEM_PATHS,
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
        self._sudo = tuple(sudo)
        self._paths = paths
        # SECURITY: a restarted daemon gets PATH (and TLS variables) only; in particular no
        # RUNNER_TRACKING_ID, or the runner would kill it as an orphan when the job ends.
        daemon_env = {
            k: v
            for k, v in env.items()
            if k in ("PATH", "NIX_SSL_CERT_FILE", "SSL_CERT_FILE", "LANG", "TZ")
        }
        self._priv = Privileged(
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
        self._conf_lock = ConfLock(
            lambda timeout_s: directory_lock(
                paths.nix_conf.parent,
                clock=clock,
                sleep=sleep,
                timeout_s=3 * daemon_timeout_s if timeout_s is None else timeout_s,
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
        return daemon_control(
            runner=self._runner, probe=self._priv.probe, paths=self._paths, env=self._env
        )

    def apply(
        self, settings: Sequence[Setting | str], *, installation: NixInstallation
    ) -> AppliedConfig:
        """Deliver ``settings`` (pairs, or ``name = value`` lines; comments are dropped).
        Raises NixConfigError; on error nothing stays changed."""
        pairs = [e for e in parse_settings(settings) if isinstance(e, tuple)]
        warnings: list[str] = []
        target = self._target()
        file_needed = requires_system_file(
            daemon=installation.daemon, trusted=installation.trusted, settings=pairs
        )
        plan = plan_delivery(
            daemon=installation.daemon,
            trusted=installation.trusted,
            privileged=file_needed and self._privileged(),
            settings=pairs,
        )
        with self._conf_lock():
            restorer = self._deliver(target, plan, installation, warnings)
        env: dict[str, str] = {}
        if plan.env_settings:
            env["NIX_CONFIG"] = append_nix_config(
                self._env.get("NIX_CONFIG"), render_conf(plan.env_settings)
            )
        try:
            self._verify(installation, env, pairs, warnings)
        except BaseException:
            if restorer is not None:
                self._roll_back(restorer)
            raise
        return AppliedConfig(
            mode=plan.mode,
            env=MappingProxyType(env),
            conf_path=target if restorer is not None else None,
            ignored=plan.ignored,
            problems=tuple(Problem.warning("nix-job: Nix configuration", w) for w in warnings),
            restorer=restorer,
        )

    def _deliver(
        self,
        target: Path,
        plan: DeliveryPlan,
        installation: NixInstallation,
        warnings: list[str],
    ) -> Restorer | None:
        """Write this run's block, or only remove stale ones; under the nix.conf lock."""
        original = self._read(target)
        text = original.decode("utf-8", "surrogateescape") if original else ""
        scan = strip_blocks(text, keep=self._keep) if original else None
        stale = scan.run_ids if scan else ()
        if plan.mode == "system-file":
            restorer = self._write_block(target, original, scan, plan.file_settings)
            if stale:
                warnings.append(self._stale_warning(target, scan))
            return restorer
        if plan.ignored:
            warnings.append(
                f"the daemon ignored: {', '.join(plan.ignored)} (user {installation.user} is "
                f"not trusted, and nix-job cannot edit {target} without root or "
                f"passwordless sudo). Add {installation.user} to trusted-users in "
                f"{target} and restart nix-daemon, or allow passwordless sudo"
            )
        if stale and self._clean_stale(target, original, scan, installation, warnings):
            warnings.append(self._stale_warning(target, scan))
        return None

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
        shareable: Sequence[Setting],
    ) -> Restorer:
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
        restorer = Restorer(
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
        )
        try:
            self._priv.install_file(new, target, mode=mode, uid=uid, gid=gid)
            log.info(f"Wrote nix-job's settings to {target}; restarting the nix-daemon")
            self._priv.restart(control)
        except BaseException:
            self._roll_back(restorer)
            raise
        return restorer

    def _roll_back(self, restorer: Restorer) -> None:
        """Undo after a failure, without hiding the failure itself."""
        try:
            restorer.restore()
        except NixConfigError as exc:
            log.warning("%s", exc.message)

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
    ) -> None:
        if not any(name in VERIFIED_SETTINGS for name, _ in settings):
            return
        done = self._runner.run(
            installation.config_show_argv(), env={**self._env, **env}, timeout=60
        )
        if done.returncode != 0:
            warnings.append(
                f"could not read back the effective Nix configuration: {done.tail(3)}; the "
                "settings were applied but not verified"
            )
            return
        try:
            config = parse_config(done.stdout)
        except (ValueError, AttributeError) as exc:
            warnings.append(f"could not parse the effective Nix configuration: {exc}")
            return
        warnings.extend(verify_settings(settings, config))
