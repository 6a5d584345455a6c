"""The nix-job component (templates/nix-job.yml) in real pipelines: gitlab-ci-local, real Nix
(isolated per test, offline) and the Attic double on 127.0.0.1.

A protected default-branch push publishes while the build runs and hands its outputs to a later
job; merge requests (same project, fork, merge train, spoofed), tags, trigger and child
pipelines, an unprotected default branch and a feature branch read the cache and never send a
write request, push token or not; a failing command fails the job with its exit code; the
command reaches nix-job as written; the token is found nowhere. The install path: the
repository's own .gitlab-ci.yml installs this checkout through the component, and a cached
environment is reused only while its stamp matches.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.attic_double import AtticDouble
from tests.e2e.test_reliability_support import leaks_in_tree, netrc_files, secret_forms
from tests.gitlab.component import (
    CACHE,
    JOB,
    PROTECTED_PUSH,
    build_wheel,
    copy_repository,
    create_project,
    dotenv,
    nix_job_shim,
    pipeline_yml,
    repository_files,
    runner_env,
)
from tests.gitlab.local import REPO_ROOT, LocalProject, PipelineResult, require_gitlab_ci_local
from tests.nixenv import NixEnv, require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nix_job_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as server:
        server.create_cache(CACHE)  # private: reads need a token
        yield server


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_gitlab_ci_local()
    require_nix()
    return NixEnv.create(tmp_path / "nix")


def cached_path(nix: NixEnv, double: AtticDouble, directory: Path, cache: str = CACHE) -> str:
    """A store path that only the cache has: built, uploaded to the double, deleted here."""
    (path,) = write_derivations(directory, count=1).build(nix)
    double.put_path(cache, store_path=path, nar=nix.dump(path))
    nix.run(["nix-store", "--delete", path])
    return path


def leaks(token: str, result: PipelineResult, *roots: Path) -> list[str]:
    """Where any form of ``token`` shows up: gitlab-ci-local's output, or a file under
    ``roots`` (the scratch project with its logs, artifacts, build directories and cache; the
    runner's HOME and TMPDIR)."""
    forms = secret_forms(token)
    found = [f"output: {name}" for name, form in forms.items() if form.decode() in result.output]
    for root in roots:
        found += leaks_in_tree(root, forms)
    return found


# --- publishing ----------------------------------------------------------------------------------


def test_a_protected_default_branch_push_publishes_while_the_build_runs(
    tmp_path: Path, nix: NixEnv, double: AtticDouble, shim: Path
) -> None:
    drv = write_derivations(tmp_path / "src", count=3, chain=True, sleep_s=1.0)
    outputs = drv.out_paths(nix)
    marks = tmp_path / "marks"
    marks.mkdir()
    token = double.make_token({CACHE: "rw"})
    project = create_project(
        tmp_path,
        pipeline_yml(
            {
                "source": "",
                "command": f"nix-build {drv.file} -A d2\ndate +%s.%N > {marks}/build-ended",
                "push-cache": True,
            },
            more={
                "stages": ["build", "test"],
                "outputs": {
                    "stage": "test",
                    "needs": [JOB],
                    "script": [
                        'echo "published=$NIX_JOB_CACHE_PUSH exit=$NIX_JOB_EXIT_CODE"',
                        'echo "pushed=$NIX_JOB_PATHS_PUSHED failed=$NIX_JOB_PATHS_FAILED"',
                    ],
                },
            },
        ),
    )

    # The cache comes from the runner's environment, as runner pods export it.
    env = runner_env(project, nix, path_first=shim, ATTIC_SERVER=double.url, ATTIC_CACHE=CACHE)
    result = project.run(variables={**PROTECTED_PUSH, "ATTIC_TOKEN": token}, env=env)

    job = result.job(JOB)
    assert (job.status, result.returncode) == ("passed", 0), result.output[-6000:]
    report = dotenv(job)
    assert report["NIX_JOB_CACHE_PUSH"] == "true", report
    assert "protected default branch 'main'" in report["NIX_JOB_CACHE_PUSH_REASON"]
    # The double holds each output, with the NAR Nix itself dumps (it checked hash and size).
    for path in outputs.values():
        stored = double.get_object(CACHE, path)
        assert stored is not None, f"{path} was not published:\n{job.log}"
        assert stored.nar == nix.dump(path)
    build_ended = float((marks / "build-ended").read_text())
    first_upload = min(r.ended_at for r in double.upload_requests() if r.status == 200)
    assert first_upload < build_ended, "nothing was uploaded while the build was running"
    # The dotenv report reached the later job; the summary was kept as an artifact.
    later = result.job("outputs").log.splitlines()
    assert "published=true exit=0" in later
    assert f"pushed={report['NIX_JOB_PATHS_PUSHED']} failed=0" in later
    assert int(report["NIX_JOB_PATHS_PUSHED"]) >= 3
    assert "Pushed during build" in job.artifact("nix-job-summary.md").read_text()
    assert leaks(token, result, tmp_path) == []
    assert netrc_files(nix.root / "tmp") == []


# --- never publishing ----------------------------------------------------------------------------

MERGE_REQUEST = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "merge_request_event",
    "CI_MERGE_REQUEST_IID": "7",
    "CI_MERGE_REQUEST_EVENT_TYPE": "merged_result",
    "CI_MERGE_REQUEST_PROJECT_ID": "100",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "100",
    "CI_MERGE_REQUEST_PROJECT_PATH": "acme/app",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": "acme/app",
    "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
    "CI_COMMIT_REF_NAME": "feature",
    # protect_merge_request_pipelines can mark an MR pipeline between protected refs protected.
    "CI_COMMIT_REF_PROTECTED": "true",
}
FORK = {
    "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "200",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": "someone/app",
}
NOT_A_BRANCH = ("CI_COMMIT_BRANCH",)  # GitLab sets none in merge request and tag pipelines


@dataclass(frozen=True, slots=True)
class Case:
    variables: dict[str, str]  # predefined variables of the pipeline (over gitlab-ci-local's)
    unset: tuple[str, ...]  # predefined variables the pipeline does not have
    reason: str  # what NIX_JOB_CACHE_PUSH_REASON says


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            Case(MERGE_REQUEST, NOT_A_BRANCH, "this is a merge request !7 pipeline"),
            id="same-project-merge-request",
        ),
        pytest.param(
            Case(
                {**MERGE_REQUEST, **FORK},
                NOT_A_BRANCH,
                "builds code from a fork (project 'someone/app', not 'acme/app')",
            ),
            id="fork-merge-request",
        ),
        pytest.param(
            Case(
                {**MERGE_REQUEST, "CI_MERGE_REQUEST_EVENT_TYPE": "merge_train"},
                NOT_A_BRANCH,
                "this is a merge train pipeline",
            ),
            id="merge-train",
        ),
        pytest.param(
            # Merge request variables on what claims to be a protected default-branch push.
            Case(
                {**PROTECTED_PUSH, "CI_MERGE_REQUEST_IID": "7", "CI_COMMIT_BRANCH": "main"},
                (),
                "carries merge request variables (CI_MERGE_REQUEST_IID is set)",
            ),
            id="spoofed-merge-request",
        ),
        pytest.param(
            Case(
                {**PROTECTED_PUSH, "CI_COMMIT_TAG": "v1.0.0", "CI_COMMIT_REF_NAME": "v1.0.0"},
                NOT_A_BRANCH,
                "builds tag 'v1.0.0', and tag pipelines do not publish",
            ),
            id="tag",
        ),
        pytest.param(
            Case(
                {**PROTECTED_PUSH, "CI_PIPELINE_SOURCE": "trigger"},
                (),
                "trigger pipelines never publish",
            ),
            id="trigger",
        ),
        pytest.param(
            Case(
                {**PROTECTED_PUSH, "CI_PIPELINE_SOURCE": "parent_pipeline"},
                (),
                "parent_pipeline pipelines never publish",
            ),
            id="parent-pipeline-child",
        ),
        pytest.param(
            Case(
                {**PROTECTED_PUSH, "CI_COMMIT_REF_PROTECTED": "false"},
                (),
                "the default branch 'main' is unprotected in this pipeline",
            ),
            id="unprotected-default-branch",
        ),
        pytest.param(
            Case(
                {**PROTECTED_PUSH, "CI_COMMIT_BRANCH": "feature", "CI_COMMIT_REF_NAME": "feature"},
                (),
                "is on branch 'feature', not the default branch 'main'",
            ),
            id="feature-branch",
        ),
    ],
)
def test_pipelines_that_must_not_publish_read_the_cache_and_never_write(
    tmp_path: Path,
    nix: NixEnv,
    double: AtticDouble,
    shim: Path,
    case: Case,
) -> None:
    path = cached_path(nix, double, tmp_path / "src")
    built = write_derivations(tmp_path / "new", count=1)
    token = double.make_token({CACHE: "rw"})  # a push token, where it should never be
    project = create_project(
        tmp_path,
        pipeline_yml(
            {
                "source": "",
                "command": f"nix-store --realise {path}\nnix-build {built.file}",
                "attic-server": double.url,
                "attic-cache": CACHE,
                "push-cache": True,
            }
        ),
    )

    result = project.run(
        variables={**case.variables, "ATTIC_TOKEN": token},
        unset=case.unset,
        env=runner_env(project, nix, path_first=shim),
    )

    job = result.job(JOB)
    assert (job.status, result.returncode) == ("passed", 0), result.output[-6000:]
    assert double.write_requests() == [], "a pipeline that must not publish sent a write request"
    assert f"copying path '{path}'" in job.log, "the cache was not read"
    report = dotenv(job)
    assert report["NIX_JOB_CACHE_PUSH"] == "false", report
    assert case.reason in report["NIX_JOB_CACHE_PUSH_REASON"]
    assert leaks(token, result, tmp_path) == []
    assert netrc_files(nix.root / "tmp") == []


# --- the command ---------------------------------------------------------------------------------


def test_a_failing_command_fails_the_job_with_its_exit_code(
    tmp_path: Path, nix: NixEnv, shim: Path
) -> None:
    project = create_project(
        tmp_path,
        pipeline_yml({"source": "", "attic-enabled": False, "command": "echo before\nexit 7"}),
    )

    result = project.run(variables=PROTECTED_PUSH, env=runner_env(project, nix, path_first=shim))

    job = result.job(JOB)
    assert (job.status, job.exit_code) == ("failed", 7), result.output[-6000:]
    assert "before" in job.log.splitlines()
    assert dotenv(job)["NIX_JOB_EXIT_CODE"] == "7"
    assert job.artifact("nix-job-summary.md").is_file()


# Each line tests a way GitLab or the shell could change the text on its way to bash.
COMMAND = textwrap.dedent(
    """\
    echo "job=$CI_JOB_NAME" 'literal=$HOME' 'escaped=$$'
    echo 'colon: and # hash' "quotes \\" ' inside"
    echo '$[[ not.an.input ]]' ${CI_JOB_STAGE}
    nix show-config | grep '^connect-timeout'
    """
)


def test_the_command_and_extra_conf_reach_nix_job_as_written(
    tmp_path: Path, nix: NixEnv, shim: Path
) -> None:
    project = create_project(
        tmp_path,
        pipeline_yml(
            {
                "source": "",
                "attic-enabled": False,
                "command": COMMAND,
                "extra-conf": "# a comment line\nconnect-timeout = 7\n",
            }
        ),
    )

    result = project.run(variables=PROTECTED_PUSH, env=runner_env(project, nix, path_first=shim))

    job = result.job(JOB)
    assert job.status == "passed", result.output[-6000:]
    lines = job.log.splitlines()
    # bash expanded $CI_JOB_NAME when the command ran; nothing expanded anything before.
    assert "job=nix-job literal=$HOME escaped=$$" in lines
    assert "colon: and # hash quotes \" ' inside" in lines
    assert "$[[ not.an.input ]] build" in lines
    assert "connect-timeout = 7" in lines


# --- installing nix-job --------------------------------------------------------------------------


def test_the_repository_pipeline_installs_this_checkout_and_publishes(
    tmp_path: Path, nix: NixEnv, double: AtticDouble
) -> None:
    """The repository's .gitlab-ci.yml: the component at this commit installs nix-job from the
    project directory with pip and the hash-pinned lock, builds, publishes, and the next job
    reads the dotenv report."""
    token = double.make_token({CACHE: "rw"})
    files = repository_files()
    project = LocalProject.create(tmp_path, ci_yml=files.pop(".gitlab-ci.yml"), files=files)

    result = project.run(
        variables={**PROTECTED_PUSH, "ATTIC_TOKEN": token},
        inputs={"image": '""'},
        env=runner_env(project, nix, ATTIC_SERVER=double.url, ATTIC_CACHE=CACHE),
        timeout=600,
    )

    job = result.job("nix-job-selftest")
    assert (job.status, result.returncode) == ("passed", 0), result.output[-8000:]
    assert "nix-job: installing " in job.log
    assert "nix-job 1.0.0" in job.log.splitlines()
    assert dotenv(job)["NIX_JOB_CACHE_PUSH"] == "true"
    assert any("nix-job-selftest-second" in o.store_path for o in double.objects(CACHE))
    assert result.job("selftest-outputs").status == "passed"
    assert "release" not in result.jobs  # tag pipelines only
    assert leaks(token, result, tmp_path) == []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_gitlab_ci_local()
    source = copy_repository(tmp_path_factory.mktemp("checkout"))
    return build_wheel(source, tmp_path_factory.mktemp("wheel"))


def test_the_cached_environment_is_reused_only_while_its_stamp_matches(
    tmp_path: Path, nix: NixEnv, wheel: Path
) -> None:
    project = create_project(
        tmp_path,
        pipeline_yml({"source": str(wheel), "attic-enabled": False, "command": "nix --version"}),
    )
    env = runner_env(project, nix)

    def run() -> str:
        result = project.run(variables=PROTECTED_PUSH, env=env, keep_cache=True, timeout=600)
        job = result.job(JOB)
        assert job.status == "passed", result.output[-8000:]
        assert "nix (Nix) 2.8.0" in job.log.splitlines()
        return job.log

    assert f"nix-job: installing {wheel} with its hash-pinned runtime lock" in run()
    assert f"nix-job: reusing the cached environment for {wheel}" in run()
    # A lock changed in the cache: the environment is not trusted and is installed afresh.
    (lock,) = (project.root / ".gitlab-ci-local" / "cache").rglob("nix_job/runtime-lock.txt")
    lock.write_text(lock.read_text() + "# changed\n")
    assert f"nix-job: installing {wheel} with its hash-pinned runtime lock" in run()


def test_without_python_the_job_fails_and_says_what_to_do(tmp_path: Path, nix: NixEnv) -> None:
    project = create_project(tmp_path, pipeline_yml({"attic-enabled": False}))

    result = project.run(
        variables={**PROTECTED_PUSH, "NIX_JOB_PYTHON": str(tmp_path / "no-such-python")},
        env=runner_env(project, nix),
    )

    job = result.job(JOB)
    assert (job.status, job.exit_code) == ("failed", 1), result.output[-6000:]
    assert "no python3 >= 3.11 found" in job.log
    assert "use an image with Python 3.11 or newer (the image input)" in job.log
    assert "nix-job run" not in job.log  # the job stopped before its script


# --- the documented pipeline ---------------------------------------------------------------------


def documented_pipeline() -> dict[str, Any]:
    """The complete .gitlab-ci.yml of docs/gitlab.md."""
    text = (REPO_ROOT / "docs" / "gitlab.md").read_text()
    found = re.search(r"```yaml\n(# \.gitlab-ci\.yml\nworkflow:.*?)```", text, re.DOTALL)
    assert found, "docs/gitlab.md has no complete .gitlab-ci.yml"
    config: dict[str, Any] = yaml.safe_load(found[1])
    return config


def test_the_documented_pipeline_hands_merge_requests_the_pull_token_only(
    tmp_path: Path, nix: NixEnv, double: AtticDouble, shim: Path
) -> None:
    """docs/gitlab.md's pipeline, with the component included locally: a merge request reads
    the private cache with ATTIC_PULL_TOKEN; a protected push, which also gets the protected
    ATTIC_TOKEN (a project variable, which outranks the job's `ATTIC_TOKEN: $ATTIC_PULL_TOKEN`;
    gitlab-ci-local ranks --variable over job variables too), publishes with the push token."""
    config = documented_pipeline()
    (include,) = config["include"]
    assert include["component"].startswith("$CI_SERVER_FQDN/")
    cache = include["inputs"]["attic-cache"]
    double.create_cache(cache)
    path = cached_path(nix, double, tmp_path / "src", cache)
    built = write_derivations(tmp_path / "new", count=1)
    config["include"] = [
        {
            "local": "templates/nix-job.yml",
            "inputs": {
                **include["inputs"],
                "image": "",
                "source": "",
                "attic-server": double.url,
                "command": f"nix-store --realise {path}\nnix-build {built.file}",
            },
        }
    ]
    project = create_project(tmp_path, yaml.safe_dump(config, sort_keys=False, width=1000))
    env = runner_env(project, nix, path_first=shim)
    pull = double.make_token({cache: "r"}, sub="pull-token")
    push = double.make_token({cache: "rw"}, sub="push-token")

    merge_request = project.run(
        variables={**MERGE_REQUEST, "ATTIC_PULL_TOKEN": pull}, unset=NOT_A_BRANCH, env=env
    )

    assert merge_request.job(JOB).status == "passed", merge_request.output[-6000:]
    assert f"copying path '{path}'" in merge_request.job(JOB).log
    assert {r.subject for r in double.requests if r.auth_scheme} == {"pull-token"}
    assert double.write_requests() == []
    assert "exit 0, published false" in merge_request.job("show-outputs").log

    double.clear_requests()
    push_run = project.run(
        variables={**PROTECTED_PUSH, "ATTIC_TOKEN": push, "ATTIC_PULL_TOKEN": pull}, env=env
    )

    assert push_run.job(JOB).status == "passed", push_run.output[-6000:]
    assert double.upload_requests(), push_run.job(JOB).log
    assert {r.subject for r in double.requests if r.auth_scheme} == {"push-token"}
    assert "exit 0, published true" in push_run.job("show-outputs").log
