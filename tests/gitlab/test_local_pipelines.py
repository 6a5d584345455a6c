"""Local GitLab pipelines with gitlab-ci-local: the infrastructure works (dotenv between jobs,
``spec: inputs``, predefined-variable overrides, exit codes, ``after_script``), and the pure
GitLab gate decides on the variables a pipeline job really gets."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests.gitlab.local import REPO_ROOT, LocalProject, PipelineResult, require_gitlab_ci_local

FAKE_TOKEN = "fake-attic-token.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl"

# A protected default-branch pipeline as gitlab-ci-local simulates it (it defaults to
# GITLAB_CI=false and CI_COMMIT_REF_PROTECTED=false).
PROTECTED_DEFAULT_BRANCH = {"GITLAB_CI": "true", "CI_COMMIT_REF_PROTECTED": "true"}
# A merge request pipeline: GitLab sets no CI_COMMIT_BRANCH there.
MERGE_REQUEST = {
    "CI_PIPELINE_SOURCE": "merge_request_event",
    "CI_MERGE_REQUEST_IID": "7",
    "CI_MERGE_REQUEST_EVENT_TYPE": "detached",
}


def test_missing_tools_skip_locally_and_fail_in_ci() -> None:
    with pytest.raises(pytest.skip.Exception, match=r"need rsync; \./scripts/setup installs"):
        require_gitlab_ci_local(missing=["rsync"], environ={})
    with pytest.raises(pytest.fail.Exception, match="CI=true, so this is a failure"):
        require_gitlab_ci_local(missing=["rsync"], environ={"CI": "true"})
    require_gitlab_ci_local(missing=[], environ={"CI": "true"})  # nothing missing: no-op


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def lines(result: PipelineResult, job: str) -> list[str]:
    return result.job(job).log.splitlines()


def test_a_dotenv_report_reaches_a_later_job_through_needs(tmp_path: Path) -> None:
    project = LocalProject.create(
        tmp_path,
        ci_yml=yml(
            """
            stages: [build, test]
            produce:
              stage: build
              script:
                - echo "GREETING=hello from produce" > build.env
                - echo "built" > result.txt
              artifacts:
                paths: [result.txt]
                reports:
                  dotenv: build.env
            consume:
              stage: test
              needs: [produce]
              script:
                - echo "greeting=$GREETING"
                - cat result.txt
            """
        ),
    )

    result = project.run()

    assert result.returncode == 0, result.output
    assert result.job("produce").status == "passed"
    assert result.job("produce").dotenv("build.env") == "GREETING=hello from produce\n"
    assert result.job("produce").artifact("result.txt").read_text() == "built\n"
    consume = result.job("consume")
    assert (consume.status, consume.exit_code) == ("passed", 0)
    assert "greeting=hello from produce" in lines(result, "consume")
    assert "built" in lines(result, "consume")


GREET_TEMPLATE = yml(
    """
    spec:
      inputs:
        greeting:
          type: string
        times:
          type: number
          default: 1
        stage:
          default: test
    ---
    greet-$[[ inputs.greeting ]]:
      stage: $[[ inputs.stage ]]
      script:
        - echo "greeting=$[[ inputs.greeting ]] times=$[[ inputs.times ]]"
    """
)


@pytest.mark.parametrize(
    "include",
    [
        pytest.param("local: templates/greet.yml", id="include-local"),
        pytest.param(
            "component: $CI_SERVER_FQDN/$CI_PROJECT_PATH/greet@$CI_COMMIT_SHA",
            id="include-component-of-this-project",
        ),
    ],
)
def test_an_included_template_receives_spec_inputs(tmp_path: Path, include: str) -> None:
    project = LocalProject.create(
        tmp_path,
        ci_yml=f"include:\n  - {include}\n    inputs:\n      greeting: hi\n",
        files={"templates/greet.yml": GREET_TEMPLATE},
    )

    from_include = project.run()
    from_cli = project.run(inputs={"times": "3", "stage": "build"})

    assert from_include.returncode == 0, from_include.output
    assert "greeting=hi times=1" in lines(from_include, "greet-hi")
    assert from_cli.returncode == 0, from_cli.output
    assert "greeting=hi times=3" in lines(from_cli, "greet-hi")
    assert "greet-hi starting shell (build)" in from_cli.output


PRINT_VARIABLES = yml(
    """
    show:
      script:
        - echo "source=$CI_PIPELINE_SOURCE"
        - echo "branch=${CI_COMMIT_BRANCH-<unset>}"
        - echo "ref=$CI_COMMIT_REF_NAME"
        - echo "default=$CI_DEFAULT_BRANCH"
        - echo "protected=$CI_COMMIT_REF_PROTECTED"
        - echo "gitlab_ci=$GITLAB_CI"
        - echo "mr_iid=${CI_MERGE_REQUEST_IID-<unset>}"
        - echo "project=$CI_PROJECT_PATH"
        - echo "server=$CI_SERVER_FQDN"
    """
)


def test_predefined_variables_can_simulate_a_merge_request_pipeline(tmp_path: Path) -> None:
    project = LocalProject.create(tmp_path, ci_yml=PRINT_VARIABLES)

    result = project.run(
        variables={**PROTECTED_DEFAULT_BRANCH, **MERGE_REQUEST},
        unset=["CI_COMMIT_BRANCH"],
    )

    assert result.returncode == 0, result.output
    shown = lines(result, "show")
    assert "source=merge_request_event" in shown
    assert "branch=<unset>" in shown
    assert "mr_iid=7" in shown
    assert "gitlab_ci=true" in shown
    assert "protected=true" in shown


def test_the_callers_gcl_and_ci_variables_do_not_leak_into_a_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gitlab-ci-local reads GCL_* variables as options and its jobs inherit its environment;
    the helper passes neither through, so a job sees gitlab-ci-local's own defaults."""
    monkeypatch.setenv("GCL_VARIABLE_CI_PIPELINE_SOURCE", "trigger")
    monkeypatch.setenv("GCL_VARIABLE", "GITLAB_CI=true")
    monkeypatch.setenv("CI_MERGE_REQUEST_IID", "99")
    monkeypatch.setenv("GITLAB_CI", "true")
    project = LocalProject.create(tmp_path, ci_yml=PRINT_VARIABLES)

    result = project.run()

    assert result.returncode == 0, result.output
    assert [line for line in lines(result, "show") if not line.startswith("$ ")] == [
        "source=push",
        "branch=main",
        "ref=main",
        "default=main",
        "protected=false",
        "gitlab_ci=false",
        "mr_iid=<unset>",
        "project=acme/app",
        "server=gitlab.example.com",
    ]


@pytest.fixture(scope="module")
def failing_pipeline(tmp_path_factory: pytest.TempPathFactory) -> PipelineResult:
    project = LocalProject.create(
        tmp_path_factory.mktemp("failing"),
        ci_yml=yml(
            """
            stages: [build, test]
            breaks:
              stage: build
              script:
                - echo "before the failure"
                - exit 3
                - echo "never printed"
              after_script:
                - echo "after_script sees status=$CI_JOB_STATUS"
                - exit 5
            tolerated:
              stage: build
              allow_failure: true
              script:
                - exit 4
            fine:
              stage: build
              script:
                - "true"
            skipped:
              stage: test
              script:
                - echo "not reached"
            """
        ),
    )
    return project.run()


def test_a_failing_job_reports_its_exit_code(failing_pipeline: PipelineResult) -> None:
    result = failing_pipeline

    assert result.returncode == 1
    breaks = result.job("breaks")
    assert (breaks.status, breaks.exit_code) == ("failed", 3)
    assert "never printed" not in breaks.log
    tolerated = result.job("tolerated")
    assert (tolerated.status, tolerated.exit_code) == ("allowed-failure", 4)
    assert (result.job("fine").status, result.job("fine").exit_code) == ("passed", 0)
    assert "skipped" not in result.jobs


def test_after_script_runs_after_a_failed_script(failing_pipeline: PipelineResult) -> None:
    breaks = failing_pipeline.job("breaks")

    log = breaks.log.splitlines()
    assert log.index("after_script sees status=failed") > log.index("before the failure")
    assert breaks.after_script_exit_code == 5
    assert breaks.exit_code == 3  # after_script never changes the job's exit code


GATE_PROBE = yml(
    """
    \"\"\"Decide the publish gate on this job's real variables, as nix-job's CLI will.\"\"\"
    import os
    import time

    from nix_job.core.decision import GateInputs
    from nix_job.frontends.gitlab import output
    from nix_job.frontends.gitlab.gate import decide_publish, read_context

    now = int(time.time())
    token = os.environ.get("ATTIC_TOKEN", "")
    print(output.section_start("nix-job.gate", "Publish gate", timestamp=now, collapsed=True))
    gate = GateInputs(push_cache=True, token_present=bool(token), cache_attached=True)
    decision = decide_publish(read_context(os.environ), gate)
    print("allowed=" + ("true" if decision.allowed else "false"))
    print("reason=" + output.neutralise(decision.reason))
    if decision.notice:
        print(output.notice(decision.notice))
    print(output.section_end("nix-job.gate", timestamp=now))
    report = {
        "NIX_JOB_CACHE_PUSH": "true" if decision.allowed else "false",
        "NIX_JOB_CACHE_PUSH_REASON": decision.reason,
    }
    with open("nix-job.env", "w") as file:
        file.write(output.render_dotenv(report, secrets=[token]))
    """
)

GATE_PIPELINE = yml(
    """
    stages: [gate, after]
    gate:
      stage: gate
      script:
        - '"$NIX_JOB_TEST_PYTHON" probe_gate.py'
      artifacts:
        reports:
          dotenv: nix-job.env
    later:
      stage: after
      needs: [gate]
      script:
        - echo "published=$NIX_JOB_CACHE_PUSH"
        - echo "why=$NIX_JOB_CACHE_PUSH_REASON"
    """
)


@pytest.mark.parametrize(
    ("variables", "unset", "allowed", "reason_has"),
    [
        pytest.param(
            PROTECTED_DEFAULT_BRANCH,
            [],
            True,
            "this push pipeline is on the protected default branch 'main'",
            id="protected-default-branch-push-publishes",
        ),
        pytest.param(
            {**PROTECTED_DEFAULT_BRANCH, **MERGE_REQUEST},
            ["CI_COMMIT_BRANCH"],
            False,
            "this is a merge request !7 pipeline, and merge request pipelines never publish",
            id="merge-request-pipeline-never-publishes",
        ),
        pytest.param(
            {"GITLAB_CI": "true"},
            [],
            False,
            "the default branch 'main' is unprotected in this pipeline",
            id="unprotected-default-branch-does-not-publish",
        ),
        pytest.param(
            {},
            [],
            False,
            "GITLAB_CI is 'false', not 'true'",
            id="gitlab-ci-local-defaults-do-not-publish",
        ),
    ],
)
def test_the_gate_decides_on_the_variables_a_pipeline_job_gets(
    tmp_path: Path,
    variables: dict[str, str],
    unset: list[str],
    allowed: bool,
    reason_has: str,
) -> None:
    project = LocalProject.create(
        tmp_path, ci_yml=GATE_PIPELINE, files={"probe_gate.py": GATE_PROBE}
    )

    result = project.run(
        variables={
            **variables,
            "ATTIC_TOKEN": FAKE_TOKEN,
            "NIX_JOB_TEST_PYTHON": sys.executable,
            "PYTHONPATH": str(REPO_ROOT),
        },
        unset=unset,
    )

    assert result.returncode == 0, result.output
    gate_log = lines(result, "gate")
    flag = "true" if allowed else "false"
    assert f"allowed={flag}" in gate_log
    reason = next(line for line in gate_log if line.startswith("reason="))
    assert reason_has in reason
    # gitlab-ci-local recognised the section markers the output module wrote.
    assert "nix-job.gate_started" in gate_log
    assert any(line.startswith("nix-job.gate took") for line in gate_log)
    # The next job got the decision through the dotenv report.
    later = lines(result, "later")
    assert f"published={flag}" in later
    assert any(reason_has in line for line in later if line.startswith("why="))
    assert FAKE_TOKEN not in result.output
    assert FAKE_TOKEN not in result.job("gate").dotenv("nix-job.env")
