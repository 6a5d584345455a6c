"""Nix bootstrap: reuse the Nix that is there, or download and run a pinned installer.

Finding Nix skips only the install, never the configuration (that is ``nix_job.nix.configurator``'s
job, which always runs afterwards).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import tenacity

from nix_job.core.errors import NixInstallError
from nix_job.core.problem import Problem
from nix_job.nix.detect import detect_nix, pwd_home
from nix_job.nix.facts import (
    DEFAULT_HOST_PATHS,
    HostPaths,
    InstallRequest,
    NixInstallation,
    UserIdentity,
    default_profile_bins,
    installer_conf,
    plan_install,
    version_tuple,
)
from nix_job.process import CommandRunner, scrubbed_env

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bootstrap:
    installation: NixInstallation
    installed: bool  # nix-job ran an installer
    path_env: str  # PATH for this process and its children (Nix's bin dir included)
    path_for_later_steps: Path | None  # Nix's bin dir for later steps of the job; None: PATH had it
    problems: tuple[Problem, ...]


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
        log.info(f"downloading {url} failed ({_describe(exc)}); retrying")

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
        locations: Sequence[Path] | None = None,
        host: HostPaths = DEFAULT_HOST_PATHS,
        user: UserIdentity | None = None,
        download_attempts: int = 5,
        download_wait: tenacity.wait.wait_base | None = None,
        install_timeout_s: float = 900.0,
    ) -> None:
        self._runner = runner
        self._http = http
        self._temp_dir = temp_dir
        self._env = dict(env)
        self._host = host
        self._user = user or UserIdentity.current()
        home = Path(env.get("HOME") or pwd_home(self._user))
        self._locations = tuple(default_profile_bins(home) if locations is None else locations)
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
        path_env = self._env.get("PATH", os.defpath)
        warnings: list[str] = []
        found = self._detect(path_env)
        installed_from: str | None = None
        if found is not None:
            log.info(
                f"Using {found.version_line} at {found.nix} ({found.daemon_reason}; "
                f"{found.trust_reason})"
            )
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
            log.info(f"Installed {found.version_line} at {found.nix}")
        warnings.extend(found.warnings)
        if found.on_path:
            new_path, path_for_later_steps = path_env, None
        else:
            new_path = f"{found.bin_dir}{os.pathsep}{path_env}" if path_env else str(found.bin_dir)
            path_for_later_steps = found.bin_dir
        return Bootstrap(
            installation=found,
            installed=installed_from is not None,
            path_env=new_path,
            path_for_later_steps=path_for_later_steps,
            problems=tuple(Problem.warning("nix-job: Nix", w) for w in warnings),
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
            log.info(f"Downloading the {plan.installer} Nix installer from {plan.url}")
            digest = download(
                self._http,
                plan.url,
                script,
                attempts=self._attempts,
                wait=self._wait,
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
            log.info(f"Running the {plan.installer} installer, {mode}")
            sh = shutil.which("sh", path=self._env.get("PATH")) or "/bin/sh"
            done = self._runner.run(
                [sh, str(script), *plan.args],
                env=self._installer_env(),
                timeout=self._install_timeout,
                on_line=_installer_line,
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
        env = scrubbed_env(self._env)
        # The upstream scripts use $USER and $HOME; minimal containers may lack them.
        env.setdefault("USER", self._user.name)
        env.setdefault("HOME", pwd_home(self._user))
        return env


def _installer_line(line: str) -> None:
    log.info("%s", line, extra={"raw": True})
