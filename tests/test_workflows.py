"""The repository's own workflows: CI habits (pins, permissions, timeouts, no expressions in
scripts) and the self-test jobs that run `uses: ./` on real runners, checked structurally.

Each rule is a small function returning what breaks it; each is shown to catch a bad snippet,
then applied to the real files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.yml"))
ACTION_FILE = ROOT / "action.yml"
ACTION_INPUTS = set(yaml.safe_load(ACTION_FILE.read_text())["inputs"])

SHA_PIN = re.compile(
    r"^\s*(?:-\s+)?uses:\s*(?P<action>[^\s@#]+)@(?P<ref>\S+)(?:\s+#\s*(?P<comment>.*))?$"
)
FULL_SHA = re.compile(r"[0-9a-f]{40}")
VERSION_COMMENT = re.compile(r"v\d+\.\d+\.\d+\b")
GRANT = re.compile(r"^\s*[a-z-]+:\s*(?:read|write)\b(?P<rest>.*)$")
LOCAL_PREFIXES = ("./", "$/", "docker://")


def _load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def _triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    """``on:`` (YAML 1.1 reads the bare key as True)."""
    raw = workflow.get("on", workflow.get(True))  # type: ignore[call-overload]
    if isinstance(raw, str):
        return {raw: None}
    if isinstance(raw, list):
        return dict.fromkeys(raw)
    assert isinstance(raw, dict), f"unreadable triggers: {raw!r}"
    return raw


def _steps(workflow: dict[str, Any]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    for job_id, job in workflow.get("jobs", {}).items():
        for index, step in enumerate(job.get("steps", [])):
            yield job_id, index, step


def _step(job: dict[str, Any], step_id: str) -> tuple[int, dict[str, Any]]:
    for index, step in enumerate(job["steps"]):
        if step.get("id") == step_id:
            return index, step
    raise AssertionError(f"no step with id {step_id!r}")


# ---------------------------------------------------------------------------------------------
# Rules: each returns what breaks it (empty when the file follows it).


def jobs_without_timeout(workflow: dict[str, Any]) -> list[str]:
    """Jobs with steps and no timeout-minutes (reusable-workflow calls cannot set one)."""
    return [
        job_id
        for job_id, job in workflow.get("jobs", {}).items()
        if "uses" not in job and "timeout-minutes" not in job
    ]


def default_permissions_problem(workflow: dict[str, Any]) -> str | None:
    if "permissions" not in workflow:
        return "no top-level permissions: every job gets the repository's default token"
    if workflow["permissions"] != {}:
        return f"top-level permissions are {workflow['permissions']!r}, not {{}}"
    return None


def grants_without_reason(text: str) -> list[str]:
    """``name: read|write`` lines with no ``# reason`` comment."""
    return [
        line.strip()
        for line in text.splitlines()
        if (match := GRANT.match(line)) and "#" not in match["rest"]
    ]


def unpinned_uses(text: str) -> list[str]:
    """Remote ``uses:`` not pinned to a full commit SHA with a ``# vX.Y.Z`` comment."""
    bad = []
    for line in text.splitlines():
        stripped = line.strip().removeprefix("- ").strip()
        if not stripped.startswith("uses:"):
            continue
        target = stripped.removeprefix("uses:").strip()
        if target.startswith(LOCAL_PREFIXES):
            continue
        match = SHA_PIN.match(line)
        if (
            match is None
            or not FULL_SHA.fullmatch(match["ref"])
            or not VERSION_COMMENT.match(match["comment"] or "")
        ):
            bad.append(stripped)
    return bad


def persisting_checkouts(workflow: dict[str, Any]) -> list[str]:
    return [
        f"{job_id} step {index}"
        for job_id, index, step in _steps(workflow)
        if str(step.get("uses", "")).startswith("actions/checkout@")
        and (step.get("with") or {}).get("persist-credentials") is not False
    ]


def expressions_in_run(workflow: dict[str, Any]) -> list[str]:
    return [
        f"{job_id} step {index}"
        for job_id, index, step in _steps(workflow)
        if "${{" in str(step.get("run", ""))
    ]


def undeclared_local_inputs(workflow: dict[str, Any], declared: set[str]) -> list[str]:
    """Inputs given to ``uses: ./`` that action.yml does not declare (the runner only warns)."""
    return [
        f"{job_id} step {index}: {name}"
        for job_id, index, step in _steps(workflow)
        if step.get("uses") == "./"
        for name in (step.get("with") or {})
        if name not in declared
    ]


# ---------------------------------------------------------------------------------------------
# The rules catch what they are for.

BAD_WORKFLOW = """
on: push
permissions:
  contents: write
jobs:
  build:
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@v5
      - uses: actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8
        with:
          persist-credentials: "false"
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # latest
      - uses: ./
        with:
          push-cache: "true"
          attic-token: oops
      - run: echo "${{ github.event.pull_request.title }}"
  call:
    uses: ./.github/workflows/other.yml
"""


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        pytest.param(jobs_without_timeout, ["build"], id="timeout"),
        pytest.param(
            default_permissions_problem,
            "top-level permissions are {'contents': 'write'}, not {}",
            id="top-level-permissions",
        ),
        pytest.param(
            persisting_checkouts, ["build step 0", "build step 1"], id="persist-credentials"
        ),
        pytest.param(expressions_in_run, ["build step 4"], id="expression-in-run"),
        pytest.param(
            lambda wf: undeclared_local_inputs(wf, ACTION_INPUTS),
            ["build step 3: attic-token"],
            id="undeclared-input",
        ),
    ],
)
def test_rule_catches_a_bad_workflow(rule: Any, expected: object) -> None:
    assert rule(yaml.safe_load(BAD_WORKFLOW)) == expected


def test_pin_rule_catches_tags_short_refs_and_missing_version_comments() -> None:
    assert unpinned_uses(BAD_WORKFLOW) == [
        "uses: actions/checkout@v5",
        "uses: actions/checkout@08c6903cd8c0fde910a37f88322edcfb5dd907a8",
        "uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # latest",
    ]


def test_grant_rule_catches_a_grant_without_a_reason() -> None:
    assert grants_without_reason(BAD_WORKFLOW) == ["contents: write", "contents: read"]


def test_missing_top_level_permissions_is_named() -> None:
    assert default_permissions_problem({"jobs": {}}) is not None


# ---------------------------------------------------------------------------------------------
# Every workflow follows them.

WORKFLOW_PARAMS = [pytest.param(path, id=path.name) for path in WORKFLOWS]


def test_the_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "selftest.yml"}


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_workflow_grants_nothing_by_default(path: Path) -> None:
    assert default_permissions_problem(_load(path)) is None


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_every_job_grant_says_why(path: Path) -> None:
    assert grants_without_reason(path.read_text()) == []


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_every_job_has_a_timeout(path: Path) -> None:
    assert jobs_without_timeout(_load(path)) == []


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_concurrency_cancels_superseded_runs(path: Path) -> None:
    concurrency = _load(path)["concurrency"]
    assert concurrency["cancel-in-progress"] is True
    assert "${{ github.ref }}" in concurrency["group"]


@pytest.mark.parametrize("path", [*WORKFLOW_PARAMS, pytest.param(ACTION_FILE, id="action.yml")])
def test_remote_actions_are_pinned_by_commit_with_a_version_comment(path: Path) -> None:
    assert unpinned_uses(path.read_text()) == []


def test_each_pinned_action_has_one_commit_and_version_everywhere() -> None:
    seen: dict[str, set[tuple[str, str]]] = {}
    for path in [*WORKFLOWS, ACTION_FILE]:
        for line in path.read_text().splitlines():
            match = SHA_PIN.match(line)
            if match and not match["action"].startswith(LOCAL_PREFIXES):
                seen.setdefault(match["action"], set()).add(
                    (match["ref"], (match["comment"] or "").strip())
                )
    assert "actions/checkout" in seen
    assert {action: pins for action, pins in seen.items() if len(pins) > 1} == {}


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_checkouts_do_not_persist_credentials(path: Path) -> None:
    assert persisting_checkouts(_load(path)) == []


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_no_expression_inside_any_run_body(path: Path) -> None:
    assert expressions_in_run(_load(path)) == []


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_local_action_gets_only_declared_inputs(path: Path) -> None:
    assert undeclared_local_inputs(_load(path), ACTION_INPUTS) == []


@pytest.mark.parametrize("path", WORKFLOW_PARAMS)
def test_no_workflow_passes_every_secret(path: Path) -> None:
    jobs = _load(path)["jobs"]
    assert [job_id for job_id, job in jobs.items() if job.get("secrets") == "inherit"] == []


# ---------------------------------------------------------------------------------------------
# ci.yml

CI = _load(WORKFLOW_DIR / "ci.yml")
SELFTEST = _load(WORKFLOW_DIR / "selftest.yml")


def test_ci_runs_on_pushes_to_main_and_pull_requests() -> None:
    triggers = _triggers(CI)
    assert triggers["push"] == {"branches": ["main"]}
    assert "pull_request" in triggers


def test_ci_runs_the_project_test_command_on_ubuntu() -> None:
    job = CI["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-24.04"
    runs = " ".join(str(step.get("run", "")) for step in job["steps"])
    assert "./.ci/run" in runs or "./scripts/test" in runs


def test_ci_calls_the_selftest_with_the_secrets_it_declares() -> None:
    job = CI["jobs"]["selftest"]
    assert job["uses"] == "./.github/workflows/selftest.yml"
    declared = set(_triggers(SELFTEST)["workflow_call"]["secrets"])
    assert set(job["secrets"]) == declared
    for name, value in job["secrets"].items():
        assert value == f"${{{{ secrets.{name} }}}}", name


def test_all_green_needs_every_other_job_and_always_runs() -> None:
    jobs = CI["jobs"]
    aggregator = jobs["all-green"]
    assert set(aggregator["needs"]) == set(jobs) - {"all-green"}
    assert aggregator["if"] == "always()"
    (step,) = aggregator["steps"]
    assert step["uses"].startswith("re-actors/alls-green@")
    assert step["with"]["jobs"] == "${{ toJSON(needs) }}"


# ---------------------------------------------------------------------------------------------
# selftest.yml

SELFTEST_JOBS = SELFTEST["jobs"]


def test_selftest_is_reusable_and_manual_only() -> None:
    """ci.yml calls it on pushes and pull requests; its own triggers would run it twice."""
    assert set(_triggers(SELFTEST)) == {"workflow_call", "workflow_dispatch"}


def test_selftest_concurrency_group_differs_from_the_callers() -> None:
    """A called workflow sharing its caller's concurrency group deadlocks."""
    assert (
        SELFTEST["concurrency"]["group"].split("$")[0] != CI["concurrency"]["group"].split("$")[0]
    )


@pytest.mark.parametrize(
    "job_id",
    [
        pytest.param(job_id, id=job_id)
        for job_id in (
            "pull-request-read-only",
            "raw-nix",
            "bad-input-fails",
            "twice-in-one-job",
            "hostile-environment",
            "publish-to-attic-double",
            "trusted-push-real-cache",
        )
    ],
)
def test_selftest_job_runs_the_checked_out_action_on_ubuntu(job_id: str) -> None:
    job = SELFTEST_JOBS[job_id]
    runners = job["strategy"]["matrix"]["os"] if "strategy" in job else [job["runs-on"]]
    assert all(str(r).startswith("ubuntu-") for r in runners)
    assert any(step.get("uses") == "./" for step in job["steps"])


@pytest.mark.parametrize(
    ("job_id", "step_id", "inputs"),
    [
        pytest.param("pull-request-read-only", "nix", {"push-cache": "true"}, id="pr-push-cache"),
        pytest.param("raw-nix", "nix", {"attic-enabled": "false"}, id="raw-nix-opt-out"),
        pytest.param("bad-input-fails", "nix", {"push-cache": "maybe"}, id="bad-boolean"),
        pytest.param("publish-to-attic-double", "nix", {"push-cache": "true"}, id="double"),
        pytest.param("trusted-push-real-cache", "nix", {"push-cache": "true"}, id="real-cache"),
    ],
)
def test_selftest_step_inputs(job_id: str, step_id: str, inputs: dict[str, str]) -> None:
    _, step = _step(SELFTEST_JOBS[job_id], step_id)
    assert step["uses"] == "./"
    assert {k: step["with"].get(k) for k in inputs} == inputs


@pytest.mark.parametrize(
    ("job_id", "step_id", "result", "expected"),
    [
        pytest.param(
            "pull-request-read-only", "nix", "outputs.cache-push", "false", id="pr-no-push"
        ),
        pytest.param("pull-request-read-only", "nix", "outputs.exit-code", "0", id="pr-exit"),
        pytest.param("raw-nix", "nix", "outputs.exit-code", "0", id="raw-nix-exit"),
        pytest.param("bad-input-fails", "nix", "outcome", "failure", id="bad-input-outcome"),
        pytest.param("twice-in-one-job", "first", "outputs.exit-code", "0", id="first-exit"),
        pytest.param("twice-in-one-job", "second", "outputs.exit-code", "0", id="second-exit"),
        pytest.param("hostile-environment", "nix", "outputs.exit-code", "0", id="hostile-exit"),
        pytest.param(
            "publish-to-attic-double", "nix", "outputs.cache-push", '"$EXPECTED"', id="double"
        ),
        pytest.param("trusted-push-real-cache", "nix", "outputs.cache-push", "true", id="real"),
    ],
)
def test_selftest_asserts_a_result_in_a_later_step(
    job_id: str, step_id: str, result: str, expected: str
) -> None:
    """A later step maps ``steps.<id>.<result>`` through env and compares it in its script."""
    job = SELFTEST_JOBS[job_id]
    index, _ = _step(job, step_id)
    reference = f"${{{{ steps.{step_id}.{result} }}}}"
    checks = [
        (name, str(step.get("run", "")))
        for step in job["steps"][index + 1 :]
        for name, value in (step.get("env") or {}).items()
        if value == reference
    ]
    assert checks, f"no later step of {job_id} reads {reference}"
    assert any(f'[ "${name}" = {expected} ]' in run for name, run in checks), checks


def test_pull_request_job_runs_only_on_pull_requests_with_a_token() -> None:
    job = SELFTEST_JOBS["pull-request-read-only"]
    assert job["if"] == "github.event_name == 'pull_request'"
    _, step = _step(job, "nix")
    assert re.fullmatch(
        r"\$\{\{ secrets\.ATTIC_TOKEN \|\| '[^']+' \}\}", step["env"]["ATTIC_TOKEN"]
    )


def test_pull_request_job_checks_the_reason_names_the_event() -> None:
    steps = SELFTEST_JOBS["pull-request-read-only"]["steps"]
    (check,) = [
        s
        for s in steps
        if (s.get("env") or {}).get("REASON") == "${{ steps.nix.outputs.cache-push-reason }}"
    ]
    assert "*pull_request*)" in check["run"]


def test_bad_input_step_may_fail_without_failing_the_job() -> None:
    _, step = _step(SELFTEST_JOBS["bad-input-fails"], "nix")
    assert step["continue-on-error"] is True


def test_twice_job_runs_the_action_twice_and_checks_reuse() -> None:
    steps = SELFTEST_JOBS["twice-in-one-job"]["steps"]
    assert sum(step.get("uses") == "./" for step in steps) == 2
    assert steps[1]["env"]["PIP_NO_INDEX"] == "1"  # the first run needs no package index
    final = steps[-1]
    assert final["env"]["SECOND_BOOT"] == "${{ steps.second.outputs.bootstrap-seconds }}"
    assert "RUNNER_TOOL_CACHE/nix-job" in final["run"]


def test_hostile_job_checks_netrc_and_nix_conf_survive() -> None:
    job = SELFTEST_JOBS["hostile-environment"]
    index, step = _step(job, "nix")
    before = " ".join(str(s.get("run", "")) for s in job["steps"][:index])
    after = " ".join(str(s.get("run", "")) for s in job["steps"][index + 1 :])
    for needle in ("GITHUB_PATH", "$HOME/.netrc", "$HOME/.config/nix/nix.conf", "sha256sum"):
        assert needle in before, needle
    assert 'diff "$RUNNER_TEMP/before" "$RUNNER_TEMP/after"' in after
    assert step["with"]["extra-conf"].strip()
    assert "connect-timeout = 7" in step["with"]["command"]


def test_trusted_push_job_is_guarded_by_event_ref_and_secrets() -> None:
    job = SELFTEST_JOBS["trusted-push-real-cache"]
    assert job["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    guard = job["env"]["HAVE_CACHE"]
    assert "secrets.ATTIC_TOKEN != ''" in guard
    assert "secrets.ATTIC_SERVER != ''" in guard
    guarded = [s for s in job["steps"] if s.get("if") == "env.HAVE_CACHE == 'true'"]
    unguarded = [s for s in job["steps"] if s.get("if") != "env.HAVE_CACHE == 'true'"]
    assert len(guarded) == len(job["steps"]) - 1
    assert [s.get("if") for s in unguarded] == ["env.HAVE_CACHE != 'true'"]
    assert "::notice" in unguarded[0]["run"]


# ---------------------------------------------------------------------------------------------
# dependabot.yml


def test_dependabot_updates_actions_and_the_python_locks() -> None:
    config = _load(ROOT / ".github" / "dependabot.yml")
    updates = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert updates == {("github-actions", "/"), ("pip", "/requirements")}
