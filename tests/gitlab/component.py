"""The nix-job component (templates/nix-job.yml) in scratch GitLab projects under gitlab-ci-local.

``pipeline_yml`` writes a ``.gitlab-ci.yml`` that includes the component with ``include: local:``
and the given inputs; ``runner_env`` is what a runner's environment gives every job (an
isolated, offline Nix; optionally ``ATTIC_SERVER``/``ATTIC_CACHE``, as runner pods export them);
``nix_job_shim`` puts a ``nix-job`` on PATH that runs this checkout with ``python -I
runtime/start.py`` (no pip), for the component's ``source: ""`` (use the nix-job on PATH), so
most tests skip the install; the tests of the install path set a real ``source``.

Variables a pipeline gets come from ``LocalProject.run(variables=...)`` (``--variable``): the
predefined ones a pipeline source would set, and ``ATTIC_TOKEN`` as a CI/CD variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from tests.gitlab.local import REPO_ROOT, JobResult, LocalProject
from tests.nixenv import NixEnv

TEMPLATE = REPO_ROOT / "templates" / "nix-job.yml"
JOB = "nix-job"  # the component's default job name
CACHE = "team"

# gitlab-ci-local's defaults with the variables a protected default-branch push pipeline has
# (it defaults to GITLAB_CI=false and CI_COMMIT_REF_PROTECTED=false).
PROTECTED_PUSH = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "push",
    "CI_COMMIT_REF_PROTECTED": "true",
}


def pipeline_yml(inputs: Mapping[str, object], *, more: Mapping[str, object] | None = None) -> str:
    """A ``.gitlab-ci.yml`` including the component with ``inputs`` (as YAML values: booleans
    and numbers stay typed), plus the jobs and keywords in ``more``.

    The image is empty: gitlab-ci-local would give a job with an image ``/builds/...`` as its
    ``CI_PROJECT_DIR`` (see tests/gitlab/local.py)."""
    config: dict[str, object] = {
        "include": [{"local": "templates/nix-job.yml", "inputs": {"image": "", **inputs}}],
        **(more or {}),
    }
    return yaml.safe_dump(config, sort_keys=False, width=1000)


def create_project(directory: Path, ci_yml: str) -> LocalProject:
    """A scratch project with the component at ``templates/nix-job.yml``."""
    return LocalProject.create(
        directory, ci_yml=ci_yml, files={"templates/nix-job.yml": TEMPLATE.read_text()}
    )


def nix_job_shim(directory: Path) -> Path:
    """A directory whose ``nix-job`` runs this checkout without any install."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "nix-job"
    start = REPO_ROOT / "runtime" / "start.py"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I "{start}" "$@"\n')
    shim.chmod(0o755)
    return directory


def runner_env(
    project: LocalProject, nix: NixEnv, *, path_first: Path | None = None, **extra: str
) -> dict[str, str]:
    """The runner's environment: the project's, with ``nix``'s isolated offline Nix (HOME,
    XDG dirs, TMPDIR, NIX_CONFIG, NIX_REMOTE), ``path_first`` before PATH, and ``extra``."""
    env = nix.env(project.env())
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def dotenv(job: JobResult) -> dict[str, str]:
    """The job's ``nix-job.env`` report as GitLab reads it: one ``KEY=value`` a line."""
    pairs = (line.split("=", 1) for line in job.dotenv("nix-job.env").splitlines() if line)
    return {key: value for key, value in pairs}


def repository_files() -> dict[str, str]:
    """This checkout's files as they are (tracked and new, not ignored), relative path → text."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    files: dict[str, str] = {}
    for relative in filter(None, listed.split("\0")):
        path = REPO_ROOT / relative
        if path.is_file() and not path.is_symlink():
            files[relative] = path.read_text()
    return files


def copy_repository(target: Path) -> Path:
    """A copy of this checkout (its files as ``repository_files`` lists them): a directory
    ``pip install`` accepts."""
    for relative, text in repository_files().items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return target


def build_wheel(source: Path, target: Path) -> Path:
    """``pip wheel --no-deps`` of ``source`` (flit_core comes from the package index)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--wheel-dir",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = target.glob("nix_job-*.whl")
    return wheel
