"""The GitLab front end: sections and problems in the log, the gate from CI_* variables, the
dotenv report and the summary in the project directory, and never a secret in any of them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from nix_job.core.decision import GateInputs
from nix_job.core.problem import Problem
from nix_job.core.report import RunReport
from nix_job.core.secret import Secret
from nix_job.frontends.gitlab.frontend import DOTENV_FILE, SUMMARY_FILE, GitLabFrontend

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.gitlab-front-end-signature"
PROTECTED_PUSH = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "push",
    "CI_DEFAULT_BRANCH": "main",
    "CI_COMMIT_BRANCH": "main",
    "CI_COMMIT_REF_NAME": "main",
    "CI_COMMIT_REF_PROTECTED": "true",
    "CI_JOB_ID": "4242",
}


def frontend(tmp_path: Path, **extra: str) -> tuple[GitLabFrontend, io.StringIO]:
    stream = io.StringIO()
    env = {**PROTECTED_PUSH, "CI_PROJECT_DIR": str(tmp_path), **extra}
    return GitLabFrontend(env, stream=stream), stream


def test_the_context_comes_from_the_job(tmp_path: Path) -> None:
    front, _ = frontend(tmp_path)
    assert front.context.workspace == tmp_path
    assert front.context.run_id == "gitlab-4242"


def test_the_gate_reads_the_jobs_variables(tmp_path: Path) -> None:
    gate = GateInputs(push_cache=True, token_present=True, cache_attached=True)
    allowed, _ = frontend(tmp_path)
    assert allowed.decide(gate).allowed
    merge_request, _ = frontend(tmp_path, CI_PIPELINE_SOURCE="merge_request_event")
    assert not merge_request.decide(gate).allowed


def test_sections_fold_and_problems_stand_out(tmp_path: Path) -> None:
    front, stream = frontend(tmp_path)
    with front.section("nix-job: Nix"):
        front.log("inside")
    front.report(Problem.warning("nix-job: uploads incomplete", "2 of 5 failed"))
    text = stream.getvalue()
    assert "section_start:" in text
    assert "section_end:" in text
    assert "[collapsed=true]" in text
    assert "\x1b[" in text.splitlines()[-1]  # a coloured line
    assert "uploads incomplete: 2 of 5 failed" in text


def test_no_form_of_a_masked_secret_is_printed_or_written(tmp_path: Path) -> None:
    front, stream = frontend(tmp_path)
    front.mask(Secret(TOKEN))
    forms = [TOKEN, base64.b64encode(f":{TOKEN}".encode()).decode()]
    front.log(f"server said: {TOKEN}")
    front.report(Problem.warning("x", f"Bearer {TOKEN}"))
    with front.section(f"title {TOKEN}"):
        pass
    front.finish(
        RunReport(
            command=f"echo {TOKEN}",
            working_directory=".",
            attic_enabled=True,
            exit_code=0,
            publish_reason=f"odd reason {forms[1]}",
        )
    )
    written = stream.getvalue()
    written += (tmp_path / DOTENV_FILE).read_text() + (tmp_path / SUMMARY_FILE).read_text()
    for form in forms:
        assert form not in written


def test_the_dotenv_report_has_one_line_per_output(tmp_path: Path) -> None:
    front, _ = frontend(tmp_path)
    front.finish(
        RunReport(
            command="true",
            working_directory=".",
            attic_enabled=True,
            exit_code=3,
            publish_allowed=True,
            publish_reason="a reason\nwith a line break",
        )
    )
    lines = (tmp_path / DOTENV_FILE).read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert values["NIX_JOB_EXIT_CODE"] == "3"
    assert values["NIX_JOB_CACHE_PUSH"] == "true"
    assert values["NIX_JOB_CACHE_PUSH_REASON"] == "a reason with a line break"
    assert set(values) == {
        "NIX_JOB_EXIT_CODE",
        "NIX_JOB_CACHE_PUSH",
        "NIX_JOB_CACHE_PUSH_REASON",
        "NIX_JOB_PATHS_PUSHED",
        "NIX_JOB_PATHS_FAILED",
        "NIX_JOB_COMMAND_SECONDS",
        "NIX_JOB_BOOTSTRAP_SECONDS",
    }
