"""Run ``.gitlab-ci.yml`` pipelines on this machine with the pinned gitlab-ci-local.

``LocalProject.create`` makes a scratch Git project that looks like a GitLab checkout (an
``origin`` remote and ``origin/HEAD`` naming the default branch); ``run`` starts gitlab-ci-local
in it with a controlled environment and returns each job's status, exit code, log and
artifacts. ``require_gitlab_ci_local()`` skips without gitlab-ci-local (or Node.js, or rsync),
except in CI (``CI=true``) where it fails.

What gitlab-ci-local 4.73.0 does, read in its source (firecow/gitlab-ci-local, ``src/``):
jobs run in a bash shell executor, each in ``.gitlab-ci-local/builds/<job>`` (with
``--shell-isolation``, a copy of the tracked files); logs go to ``.gitlab-ci-local/output/
<job>.log``; artifacts to ``.gitlab-ci-local/artifacts/<job>/``, dotenv reports under
``.gitlab-ci-reports/dotenv/`` there. Environment variables named ``GCL_*`` are read as its
options (``GCL_VARIABLE_<NAME>`` as ``--variable``), and a job inherits gitlab-ci-local's own
environment, so both are controlled here.

Not simulated: protected-variable delivery (every job gets every variable), cancel and timeout,
the Docker and Kubernetes executors, ``GITLAB_ENV``, and GitLab's dotenv parser (gitlab-ci-local
uses the npm ``dotenv`` package, which unquotes values and drops `` #`` comments, and has no
size or count limit). Its defaults: ``GITLAB_CI=false``, ``CI_PIPELINE_SOURCE=push``,
``CI_COMMIT_REF_PROTECTED=false``; section markers appear in its logs as ``<name>_started``
and ``<name> took <n>ms``.

Images: there is no container engine here, so every job runs in the shell executor
(``--force-shell-executor``). gitlab-ci-local still sets ``CI_PROJECT_DIR`` to ``/builds/<path>``
for a job that names an image (``src/job.ts``, ``_predefinedVariables``), so a job that needs
its real project directory (the nix-job component writes its reports there) is given an empty
image, which GitLab's schema refuses and the run here lets through (``--ignore-schema-paths``).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GCL_DIR = REPO_ROOT / "tools" / "gitlab-ci-local"
GCL_BIN = GCL_DIR / "node_modules" / ".bin" / "gitlab-ci-local"
GCL_VERSION = "4.73.0"
STATE_DIR = ".gitlab-ci-local"
CACHE_DIR = "cache"  # under STATE_DIR: what `cache:` saved, by key
EMPTY_IMAGE_RULE = "#/definitions/image/oneOf/0/minLength"
REMOTE_URL = "https://gitlab.example.com/acme/app.git"
DEFAULT_TIMEOUT_S = 120.0

JobStatus = Literal["passed", "failed", "allowed-failure"]

# Lines gitlab-ci-local prints (--no-color, --max-job-name-padding 0), src/job.ts and
# src/commander.ts: "<job> finished in 19 ms  FAIL 3 ", "... WARN 4 ", "... WARN 5  after_script",
# and in the summary " PASS  <job>".
_EXITED = re.compile(
    r"^(?P<job>\S+) finished in .*?\s(?P<kind>FAIL|WARN) (?P<code>\d+)\s*"
    r"(?P<after>after_script)?\s*$",
    re.MULTILINE,
)
_PASSED = re.compile(r"^ PASS\s+(?P<job>\S+)\s*$", re.MULTILINE)


def missing_tools() -> list[str]:
    """What the local pipelines need and this machine lacks; empty when all is there."""
    missing = [tool for tool in ("node", "git", "bash", "rsync") if shutil.which(tool) is None]
    if not GCL_BIN.exists():
        missing.append(f"gitlab-ci-local ({GCL_BIN.relative_to(REPO_ROOT)})")
    elif not missing and _installed_version() != GCL_VERSION:
        missing.append(f"gitlab-ci-local {GCL_VERSION} (found {_installed_version()!r})")
    return missing


@functools.cache
def _installed_version() -> str:
    proc = subprocess.run(
        [str(GCL_BIN), "--version"],
        env=_base_env(Path("/nonexistent")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.stdout.strip()


def require_gitlab_ci_local(
    *, missing: list[str] | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Skip the calling test without gitlab-ci-local and its tools; in CI (``CI=true``) fail,
    so local pipeline tests can never be skipped silently where they are supposed to run.

    ``missing`` and ``environ`` default to ``missing_tools()`` and ``os.environ``.
    """
    missing = missing_tools() if missing is None else missing
    if not missing:
        return
    message = (
        f"local GitLab pipelines need {', '.join(missing)}; ./scripts/setup installs rsync "
        "from apt and gitlab-ci-local from tools/gitlab-ci-local/package-lock.json"
    )
    environ = os.environ if environ is None else environ
    if environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip")
    pytest.skip(message)


def _base_env(home: Path) -> dict[str, str]:
    """A small environment: nothing named ``GCL_*``, ``CI_*`` or ``GITLAB_*`` from the caller
    (gitlab-ci-local reads the first as options and its jobs inherit the rest)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # also hides ~/.gitlab-ci-local/{.env,variables.yml}
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "GIT_CONFIG_NOSYSTEM": "1",
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    """One job that started. ``exit_code`` is its script's (0 when passed)."""

    name: str
    status: JobStatus
    exit_code: int
    after_script_exit_code: int
    log: str  # what the job printed, one line each, as gitlab-ci-local recorded it
    artifacts_dir: Path  # .gitlab-ci-local/artifacts/<job>; absent when it saved none

    def dotenv(self, filename: str) -> str:
        """The text of the job's ``artifacts:reports:dotenv`` file ``filename``."""
        return (self.artifacts_dir / ".gitlab-ci-reports" / "dotenv" / filename).read_text()

    def artifact(self, relative: str) -> Path:
        """A file the job saved under ``artifacts:paths``."""
        return self.artifacts_dir / relative


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineResult:
    returncode: int
    output: str  # gitlab-ci-local's stdout and stderr, interleaved
    argv: tuple[str, ...]
    jobs: Mapping[str, JobResult]

    def job(self, name: str) -> JobResult:
        """The job ``name``; fails the test with gitlab-ci-local's output when it did not run."""
        if name not in self.jobs:
            raise AssertionError(
                f"job {name!r} did not run (ran: {sorted(self.jobs)}); "
                f"gitlab-ci-local said:\n{self.output[-6000:]}"
            )
        return self.jobs[name]


def _git(root: Path, env: Mapping[str, str], *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=root, env=dict(env), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout.strip()


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalProject:
    """A scratch GitLab-like project: ``root`` is the work tree, ``home`` the tools' HOME."""

    root: Path
    home: Path
    default_branch: str
    remote_url: str

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        ci_yml: str,
        files: Mapping[str, str] | None = None,
        default_branch: str = "main",
        remote_url: str = REMOTE_URL,
    ) -> LocalProject:
        """Write ``.gitlab-ci.yml`` and ``files`` (relative paths, e.g. ``templates/x.yml``),
        commit them on ``default_branch``, and point ``origin`` and ``origin/HEAD`` at it.

        Calls ``require_gitlab_ci_local()`` first, so every test that makes one is guarded."""
        require_gitlab_ci_local()
        root, home = directory / "project", directory / "home"
        root.mkdir(parents=True)
        home.mkdir(parents=True)
        project = cls(root=root, home=home, default_branch=default_branch, remote_url=remote_url)
        env = project.env()
        _git(root, env, "init", "--quiet", f"--initial-branch={default_branch}")
        _git(root, env, "config", "user.name", "Test Author")
        _git(root, env, "config", "user.email", "author@example.com")
        _git(root, env, "config", "commit.gpgsign", "false")
        _git(root, env, "remote", "add", "origin", remote_url)
        project.commit({".gitlab-ci.yml": ci_yml, **(files or {})}, message="initial")
        return project

    def env(self) -> dict[str, str]:
        return _base_env(self.home)

    def commit(self, files: Mapping[str, str], *, message: str = "change") -> str:
        """Write and commit ``files``; ``origin/<default>`` follows (gitlab-ci-local resolves
        ``include: component`` of this project only at HEAD). Returns the commit SHA."""
        for relative, text in files.items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        env = self.env()
        _git(self.root, env, "add", "--all")
        _git(self.root, env, "commit", "--quiet", "--allow-empty", "--message", message)
        sha = _git(self.root, env, "rev-parse", "HEAD")
        remote_ref = f"refs/remotes/origin/{self.default_branch}"
        _git(self.root, env, "update-ref", remote_ref, sha)
        _git(self.root, env, "symbolic-ref", "refs/remotes/origin/HEAD", remote_ref)
        return sha

    def run(
        self,
        *jobs: str,
        variables: Mapping[str, str] | None = None,
        unset: Iterable[str] = (),
        inputs: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        keep_cache: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> PipelineResult:
        """Run the pipeline (or only ``jobs``, with what they need) and collect the results.

        ``variables`` become ``--variable NAME=VALUE`` (they override predefined variables such
        as ``GITLAB_CI`` or ``CI_PIPELINE_SOURCE``), ``unset`` ``--unset-variable NAME``, and
        ``inputs`` ``--input NAME=VALUE`` for ``spec: inputs`` of included files (the value is
        read as JSON when it parses: ``true`` is a boolean, ``'""'`` the empty string).
        ``env`` is added to gitlab-ci-local's own environment, which every job inherits: what a
        runner's environment gives its jobs. ``keep_cache`` keeps what earlier runs saved with
        ``cache:`` (the rest of the state is always cleared).
        """
        variables = dict(variables or {})
        argv = [
            str(GCL_BIN),
            "--no-color",
            "--max-job-name-padding=0",
            "--shell-isolation",  # each job in its own copy of the tracked files, as on GitLab
            "--no-artifacts-to-source",
            "--force-shell-executor",
            f"--ignore-schema-paths={EMPTY_IMAGE_RULE}",
        ]
        if variables:
            argv.append("--ignore-predefined-vars=" + ",".join(variables))
        for name, value in variables.items():
            argv += ["--variable", f"{name}={value}"]
        for name in unset:
            argv += ["--unset-variable", name]
        for name, value in (inputs or {}).items():
            argv += ["--input", f"{name}={value}"]
        if jobs:
            argv += [*jobs, "--needs"]

        self._clear_state(keep_cache=keep_cache)  # no logs or artifacts of earlier runs
        environ = {**self.env(), **(env or {})}
        returncode, output = _run_in_own_group(argv, cwd=self.root, env=environ, timeout=timeout)
        return PipelineResult(
            returncode=returncode,
            output=output,
            argv=tuple(argv),
            jobs=self._jobs(output),
        )

    def _clear_state(self, *, keep_cache: bool) -> None:
        state = self.root / STATE_DIR
        if not state.is_dir():
            return
        for entry in state.iterdir():
            if keep_cache and entry.name == CACHE_DIR:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _jobs(self, output: str) -> dict[str, JobResult]:
        state = self.root / STATE_DIR
        logs = state / "output"
        names = sorted(path.stem for path in logs.glob("*.log")) if logs.is_dir() else []
        exits: dict[str, tuple[str, int]] = {}
        after: dict[str, int] = {}
        for match in _EXITED.finditer(output):
            if match["after"]:
                after[match["job"]] = int(match["code"])
            else:
                exits[match["job"]] = (match["kind"], int(match["code"]))
        passed = {match["job"] for match in _PASSED.finditer(output)}
        results: dict[str, JobResult] = {}
        for name in names:
            status: JobStatus
            if name in exits:
                kind, code = exits[name]
                status = "failed" if kind == "FAIL" else "allowed-failure"
            elif name in passed:
                status, code = "passed", 0
            else:
                raise AssertionError(f"no status for job {name!r} in gitlab-ci-local's output")
            results[name] = JobResult(
                name=name,
                status=status,
                exit_code=code,
                after_script_exit_code=after.get(name, 0),
                log=(logs / f"{name}.log").read_text(errors="replace"),
                artifacts_dir=state / "artifacts" / name,
            )
        return results


def _run_in_own_group(
    argv: list[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> tuple[int, str]:
    """Run ``argv`` in its own process group; on timeout end the whole group (its jobs too)."""
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            raise AssertionError(
                f"gitlab-ci-local did not finish within {timeout} s:\n{output[-6000:]}"
            ) from None
    return proc.returncode, output
