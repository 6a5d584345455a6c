"""The GitLab publish gate: only push/web/api/schedule pipelines of the protected default branch
publish; merge request pipelines never do, whatever else they set."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nix_job.core.decision import GateInputs, PublishDecision
from nix_job.frontends.gitlab.gate import (
    MERGE_REQUEST_VARIABLES,
    PUBLISHING_SOURCES,
    GitLabContext,
    decide_publish,
    read_context,
)

# What GitLab sets for a push to the protected default branch of acme/app.
DEFAULT_BRANCH_PUSH: dict[str, str] = {
    "GITLAB_CI": "true",
    "CI": "true",
    "CI_PIPELINE_SOURCE": "push",
    "CI_COMMIT_BRANCH": "main",
    "CI_COMMIT_REF_NAME": "main",
    "CI_COMMIT_REF_PROTECTED": "true",
    "CI_DEFAULT_BRANCH": "main",
    "CI_PROJECT_PATH": "acme/app",
    "CI_PROJECT_ID": "1",
}

# What GitLab sets for a merge request pipeline of a branch of acme/app (no CI_COMMIT_BRANCH).
MERGE_REQUEST: dict[str, str | None] = {
    "CI_PIPELINE_SOURCE": "merge_request_event",
    "CI_COMMIT_BRANCH": None,
    "CI_COMMIT_REF_NAME": "feature",
    "CI_COMMIT_REF_PROTECTED": "false",
    "CI_MERGE_REQUEST_IID": "7",
    "CI_MERGE_REQUEST_ID": "1007",
    "CI_MERGE_REQUEST_EVENT_TYPE": "detached",
    "CI_MERGE_REQUEST_PROJECT_ID": "1",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "1",
    "CI_MERGE_REQUEST_PROJECT_PATH": "acme/app",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": "acme/app",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature",
    "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
}

NON_PUBLISHING_SOURCES = (
    "trigger",
    "pipeline",
    "parent_pipeline",
    "chat",
    "external",
    "external_pull_request_event",
    "webide",
    "security_orchestration_policy",
    "ondemand_dast_scan",
    "ondemand_dast_validation",
    "pipeline_execution_policy",
    "unknown",
    "PUSH",
    " push",
)


def variables(*layers: dict[str, str | None], **changes: str | None) -> dict[str, str]:
    """The default-branch push, changed by each layer then ``changes``; None removes."""
    merged: dict[str, str | None] = dict(DEFAULT_BRANCH_PUSH)
    for layer in (*layers, changes):
        merged.update(layer)
    return {name: value for name, value in merged.items() if value is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    env: dict[str, str] = field(default_factory=variables)
    push_cache: bool = True
    token: bool = True
    cache_attached: bool = True

    def decide(self) -> PublishDecision:
        gate = GateInputs(
            push_cache=self.push_cache,
            token_present=self.token,
            cache_attached=self.cache_attached,
        )
        return decide_publish(read_context(self.env), gate)


@pytest.mark.parametrize(
    ("job", "allowed", "reason_has", "notice_has"),
    [
        # Row "otherwise": the protected default branch publishes from the allowed sources.
        pytest.param(
            Job(),
            True,
            "this push pipeline is on the protected default branch 'main'",
            None,
            id="push-to-protected-default-branch-publishes",
        ),
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="web")),
            True,
            "this web pipeline is on the protected default branch",
            None,
            id="web-run-pipeline-on-default-branch-publishes",
        ),
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="api")),
            True,
            "this api pipeline",
            None,
            id="api-pipeline-on-default-branch-publishes",
        ),
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="schedule")),
            True,
            "this schedule pipeline is on the protected default branch 'main'",
            None,
            id="schedule-on-default-branch-publishes",
        ),
        pytest.param(
            Job(
                env=variables(
                    CI_DEFAULT_BRANCH="trunk", CI_COMMIT_BRANCH="trunk", CI_COMMIT_REF_NAME="trunk"
                )
            ),
            True,
            "default branch 'trunk'",
            None,
            id="default-branch-with-another-name-publishes",
        ),
        # Row 0: the user's switch comes first.
        pytest.param(
            Job(push_cache=False),
            False,
            "push-cache is false, so this run reads the cache and publishes nothing.",
            None,
            id="push-cache-false-on-default-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(MERGE_REQUEST), push_cache=False),
            False,
            "push-cache is false",
            None,
            id="push-cache-false-in-a-merge-request-says-push-cache-plainly",
        ),
        # Row 1: not GitLab CI.
        pytest.param(
            Job(env=variables(GITLAB_CI="false")),
            False,
            "GITLAB_CI is 'false', not 'true'",
            "--variable GITLAB_CI=true",
            id="gitlab-ci-false-as-gitlab-ci-local-sets-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(GITLAB_CI=None)),
            False,
            "GITLAB_CI is not set",
            "only publishes from GitLab CI jobs",
            id="gitlab-ci-unset-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(GITLAB_CI="TRUE")),
            False,
            "GITLAB_CI is 'TRUE', not 'true'",
            "GitLab CI",
            id="gitlab-ci-in-capitals-does-not-publish",
        ),
        # Row 2: merge request pipelines never publish, whatever else they claim.
        pytest.param(
            Job(env=variables(MERGE_REQUEST)),
            False,
            "this is a merge request !7 pipeline, and merge request pipelines never publish",
            "Builds are published once the change reaches 'main'.",
            id="merge-request-pipeline-does-not-publish",
        ),
        pytest.param(
            Job(
                env=variables(
                    MERGE_REQUEST,
                    CI_COMMIT_BRANCH="main",
                    CI_COMMIT_REF_NAME="main",
                    CI_COMMIT_REF_PROTECTED="true",
                )
            ),
            False,
            "merge request !7 pipeline",
            "stays read-only",
            id="merge-request-claiming-protected-default-branch-does-not-publish",
        ),
        pytest.param(
            Job(
                env=variables(
                    MERGE_REQUEST,
                    CI_MERGE_REQUEST_SOURCE_PROJECT_ID="99",
                    CI_MERGE_REQUEST_SOURCE_PROJECT_PATH="mallory/app",
                    CI_COMMIT_BRANCH="main",
                    CI_COMMIT_REF_NAME="main",
                    CI_COMMIT_REF_PROTECTED="true",
                )
            ),
            False,
            "builds code from a fork (project 'mallory/app', not 'acme/app')",
            "a fork merge request pipeline",
            id="fork-merge-request-from-a-branch-named-main-does-not-publish",
        ),
        pytest.param(
            Job(
                env=variables(
                    MERGE_REQUEST,
                    CI_MERGE_REQUEST_SOURCE_PROJECT_ID="99",
                    CI_MERGE_REQUEST_SOURCE_PROJECT_PATH=None,
                )
            ),
            False,
            "builds code from a fork (project '99', not '1')",
            "fork",
            id="fork-merge-request-without-paths-is-named-by-project-ids",
        ),
        pytest.param(
            Job(
                env=variables(
                    MERGE_REQUEST,
                    CI_MERGE_REQUEST_EVENT_TYPE="merge_train",
                    CI_COMMIT_REF_PROTECTED="true",
                )
            ),
            False,
            "this is a merge train pipeline: the merged result is not yet on 'main'",
            "a merge train pipeline",
            id="merge-train-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(MERGE_REQUEST, CI_MERGE_REQUEST_EVENT_TYPE="merged_result")),
            False,
            "merge request !7 pipeline",
            "read-only",
            id="merged-results-pipeline-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_MERGE_REQUEST_IID="7")),
            False,
            "this push pipeline carries merge request variables (CI_MERGE_REQUEST_IID is set)",
            "merge request pipeline",
            id="push-source-with-merge-request-iid-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_MERGE_REQUEST_ID="1007", CI_MERGE_REQUEST_IID="7")),
            False,
            "(CI_MERGE_REQUEST_IID and CI_MERGE_REQUEST_ID are set)",
            "read-only",
            id="push-source-with-both-merge-request-ids-names-both",
        ),
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="schedule", CI_MERGE_REQUEST_ID=" ")),
            False,
            "this schedule pipeline carries merge request variables (CI_MERGE_REQUEST_ID is",
            "read-only",
            id="whitespace-merge-request-id-still-counts-as-set",
        ),
        pytest.param(
            Job(env=variables(CI_EXTERNAL_PULL_REQUEST_IID="12")),
            False,
            "external pull request '12' (CI_EXTERNAL_PULL_REQUEST_IID is set)",
            "an external pull request pipeline",
            id="external-pull-request-iid-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(MERGE_REQUEST, GITLAB_CI="false")),
            False,
            "GITLAB_CI is 'false'",
            "GitLab CI",
            id="row-order-not-gitlab-ci-is-named-before-merge-request",
        ),
        # Row 3: no source.
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="")),
            False,
            "CI_PIPELINE_SOURCE is not set",
            "push, web, api and schedule",
            id="empty-pipeline-source-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE=None)),
            False,
            "CI_PIPELINE_SOURCE is not set",
            "push, web, api and schedule",
            id="missing-pipeline-source-does-not-publish",
        ),
        # Row 4: other sources never publish (each one below too).
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="trigger")),
            False,
            "trigger pipelines never publish (a trigger token can start them with any variables",
            "this is a trigger pipeline",
            id="trigger-on-default-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="parent_pipeline")),
            False,
            "parent_pipeline pipelines never publish (a child of a parent pipeline cannot show "
            "that the parent pipeline was not a merge request pipeline)",
            "publish from a push, web, api or schedule pipeline",
            id="child-of-a-parent-pipeline-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_PIPELINE_SOURCE="evil\nsection_start")),
            False,
            "'evil\\nsection_start' pipelines never publish (GitLab does not document",
            "'evil\\nsection_start'",
            id="unknown-source-is-quoted-and-escaped",
        ),
        # Row 5: tags.
        pytest.param(
            Job(
                env=variables(
                    CI_COMMIT_TAG="v1.0", CI_COMMIT_BRANCH=None, CI_COMMIT_REF_NAME="v1.0"
                )
            ),
            False,
            "this push pipeline builds tag 'v1.0'",
            "tag pipelines stay read-only",
            id="tag-pipeline-does-not-publish",
        ),
        pytest.param(
            Job(
                env=variables(
                    CI_COMMIT_TAG="main", CI_COMMIT_BRANCH=None, CI_COMMIT_REF_NAME="main"
                )
            ),
            False,
            "builds tag 'main'",
            "tag pipelines stay read-only",
            id="tag-named-like-the-default-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_TAG="v2", CI_PIPELINE_SOURCE="schedule")),
            False,
            "this schedule pipeline builds tag 'v2'",
            "read-only",
            id="schedule-on-a-tag-does-not-publish",
        ),
        # Row 6: no default branch.
        pytest.param(
            Job(env=variables(CI_DEFAULT_BRANCH=None)),
            False,
            "CI_DEFAULT_BRANCH is not set",
            "without a default branch",
            id="missing-default-branch-does-not-publish",
        ),
        # Row 7: a branch pipeline of the default branch, named consistently.
        pytest.param(
            Job(env=variables(CI_COMMIT_BRANCH="feature", CI_COMMIT_REF_NAME="feature")),
            False,
            "this push pipeline is on branch 'feature', not the default branch 'main'",
            None,
            id="push-to-another-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_BRANCH="main-old", CI_COMMIT_REF_NAME="main-old")),
            False,
            "on branch 'main-old', not the default branch 'main'",
            None,
            id="branch-with-default-branch-as-prefix-does-not-publish",
        ),
        pytest.param(
            Job(
                env=variables(
                    CI_PIPELINE_SOURCE="schedule",
                    CI_COMMIT_BRANCH="nightly",
                    CI_COMMIT_REF_NAME="nightly",
                )
            ),
            False,
            "this schedule pipeline is on branch 'nightly', not the default branch 'main'",
            None,
            id="schedule-on-another-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_BRANCH=None)),
            False,
            "CI_COMMIT_BRANCH is not set, so this push pipeline is not a branch pipeline",
            None,
            id="missing-commit-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_NAME="feature")),
            False,
            "CI_COMMIT_REF_NAME 'feature' differs from CI_COMMIT_BRANCH 'main'",
            None,
            id="ref-name-differing-from-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_NAME=None)),
            False,
            "CI_COMMIT_REF_NAME '' differs from CI_COMMIT_BRANCH 'main'",
            None,
            id="missing-ref-name-does-not-publish",
        ),
        # Row 8: exactly "true" means protected.
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_PROTECTED="false")),
            False,
            "the default branch 'main' is unprotected in this pipeline "
            "(CI_COMMIT_REF_PROTECTED is 'false', not 'true')",
            "protect it",
            id="unprotected-default-branch-does-not-publish",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_PROTECTED="True")),
            False,
            "CI_COMMIT_REF_PROTECTED is 'True', not 'true'",
            "protect it",
            id="protected-in-capitals-does-not-count",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_PROTECTED="1")),
            False,
            "CI_COMMIT_REF_PROTECTED is '1', not 'true'",
            "Protected branches",
            id="protected-as-one-does-not-count",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_PROTECTED="")),
            False,
            "CI_COMMIT_REF_PROTECTED is empty, not 'true'",
            "protected, masked variable",
            id="protected-empty-does-not-count",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_PROTECTED=None)),
            False,
            "CI_COMMIT_REF_PROTECTED is empty",
            "protect it",
            id="protected-unset-does-not-count",
        ),
        # Row 9: configuration that is missing.
        pytest.param(
            Job(cache_attached=False),
            False,
            "no Attic cache is attached to this run",
            "ATTIC_SERVER and ATTIC_CACHE",
            id="default-branch-without-attached-cache-does-not-publish",
        ),
        pytest.param(
            Job(token=False),
            False,
            "ATTIC_TOKEN is empty, so this run cannot publish.",
            "add it as a protected, masked CI/CD variable",
            id="protected-default-branch-without-token-does-not-publish",
        ),
        pytest.param(
            Job(
                env=variables(CI_COMMIT_BRANCH="feature", CI_COMMIT_REF_NAME="feature"),
                token=False,
                cache_attached=False,
            ),
            False,
            "not the default branch",
            None,
            id="feature-branch-reason-wins-over-missing-configuration",
        ),
        pytest.param(
            Job(env=variables(CI_COMMIT_REF_PROTECTED="false"), token=False),
            False,
            "unprotected",
            "protect it",
            id="unprotected-reason-wins-over-missing-token",
        ),
    ],
)
def test_publish_decision(job: Job, allowed: bool, reason_has: str, notice_has: str | None) -> None:
    decision = job.decide()

    assert decision.allowed is allowed
    assert reason_has in decision.reason
    assert decision.reason.endswith(".")
    assert "\n" not in decision.reason
    if notice_has is None:
        assert decision.notice is None
    else:
        assert decision.notice is not None
        assert notice_has in decision.notice
        assert "\n" not in decision.notice


@pytest.mark.parametrize("source", NON_PUBLISHING_SOURCES)
def test_every_other_pipeline_source_never_publishes(source: str) -> None:
    decision = Job(env=variables(CI_PIPELINE_SOURCE=source)).decide()

    assert decision.allowed is False
    assert "never publish" in decision.reason
    assert decision.notice is not None


@pytest.mark.parametrize("name", MERGE_REQUEST_VARIABLES)
def test_each_merge_request_variable_alone_denies_a_default_branch_push(name: str) -> None:
    decision = Job(env=variables({name: "1"})).decide()

    assert decision.allowed is False
    assert name in decision.reason


def test_read_context_reads_the_variables_by_name_and_defaults_to_empty() -> None:
    assert read_context({}) == GitLabContext(
        gitlab_ci="",
        pipeline_source="",
        merge_request_iid="",
        merge_request_id="",
        merge_request_event_type="",
        merge_request_project_id="",
        merge_request_source_project_id="",
        external_pull_request_iid="",
        commit_tag="",
        commit_branch="",
        commit_ref_name="",
        commit_ref_protected="",
        default_branch="",
        merge_request_project_path="",
        merge_request_source_project_path="",
    )
    context = read_context(variables(MERGE_REQUEST, CI_MERGE_REQUEST_SOURCE_PROJECT_ID="9"))
    assert context.pipeline_source == "merge_request_event"
    assert context.merge_request_iid == "7"
    assert context.merge_request_id == "1007"
    assert context.merge_request_event_type == "detached"
    assert context.commit_branch == ""
    assert context.commit_ref_name == "feature"
    assert context.default_branch == "main"
    assert context.merge_request_project_path == "acme/app"
    assert context.is_fork_merge_request is True
    assert context.merge_request_variables == ("CI_MERGE_REQUEST_IID", "CI_MERGE_REQUEST_ID")


def test_read_context_keeps_values_verbatim() -> None:
    context = read_context({"CI_COMMIT_BRANCH": " main ", "GITLAB_CI": "True"})

    assert context.commit_branch == " main "
    assert context.gitlab_ci == "True"


@pytest.mark.parametrize(
    ("source_project", "target_project", "fork"),
    [
        pytest.param("1", "1", False, id="same-project"),
        pytest.param("2", "1", True, id="different-projects"),
        pytest.param("", "1", False, id="source-unknown"),
        pytest.param("2", "", False, id="target-unknown"),
    ],
)
def test_fork_needs_both_project_ids_to_differ(
    source_project: str, target_project: str, fork: bool
) -> None:
    context = read_context(
        {
            "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": source_project,
            "CI_MERGE_REQUEST_PROJECT_ID": target_project,
        }
    )

    assert context.is_fork_merge_request is fork


def test_long_values_are_cut_in_reasons() -> None:
    decision = Job(env=variables(CI_COMMIT_BRANCH="b" * 500, CI_COMMIT_REF_NAME="b" * 500)).decide()

    assert decision.allowed is False
    assert "b" * 80 + "'…" in decision.reason
    assert "b" * 81 not in decision.reason


# Property tests: merge request variables or a non-publishing source are never allowed.

_VALUES = st.one_of(
    st.sampled_from(["", "true", "false", "main", "feature", "1", "7", "merge_train", " "]),
    st.text(max_size=12),
)
_SOURCES = st.one_of(
    st.sampled_from(
        [*sorted(PUBLISHING_SOURCES), "merge_request_event", *NON_PUBLISHING_SOURCES, ""]
    ),
    st.text(max_size=24),
)
_NAMES = (
    "GITLAB_CI",
    "CI_MERGE_REQUEST_EVENT_TYPE",
    "CI_MERGE_REQUEST_PROJECT_ID",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_ID",
    "CI_COMMIT_TAG",
    "CI_COMMIT_BRANCH",
    "CI_COMMIT_REF_NAME",
    "CI_COMMIT_REF_PROTECTED",
    "CI_DEFAULT_BRANCH",
    *MERGE_REQUEST_VARIABLES,
)
_ENVS = st.fixed_dictionaries(
    {"CI_PIPELINE_SOURCE": _SOURCES},
    optional={name: _VALUES for name in _NAMES},
)
_ALL_ON = GateInputs(push_cache=True, token_present=True, cache_attached=True)


@given(env=_ENVS)
def test_merge_request_or_other_source_is_never_allowed(env: dict[str, str]) -> None:
    decision = decide_publish(read_context(env), _ALL_ON)

    merge_request = env["CI_PIPELINE_SOURCE"] == "merge_request_event" or any(
        env.get(name) for name in MERGE_REQUEST_VARIABLES
    )
    if merge_request or env["CI_PIPELINE_SOURCE"] not in PUBLISHING_SOURCES:
        assert decision.allowed is False


@given(
    env=_ENVS,
    gate=st.builds(
        GateInputs,
        push_cache=st.booleans(),
        token_present=st.booleans(),
        cache_attached=st.booleans(),
    ),
)
def test_allowed_only_when_every_row_passes(env: dict[str, str], gate: GateInputs) -> None:
    decision = decide_publish(read_context(env), gate)

    expected = (
        gate.push_cache
        and gate.token_present
        and gate.cache_attached
        and env.get("GITLAB_CI") == "true"
        and env["CI_PIPELINE_SOURCE"] in PUBLISHING_SOURCES
        and not any(env.get(name) for name in MERGE_REQUEST_VARIABLES)
        and not env.get("CI_COMMIT_TAG")
        and bool(env.get("CI_DEFAULT_BRANCH"))
        and env.get("CI_COMMIT_BRANCH") == env.get("CI_DEFAULT_BRANCH")
        and env.get("CI_COMMIT_REF_NAME") == env.get("CI_COMMIT_BRANCH")
        and env.get("CI_COMMIT_REF_PROTECTED") == "true"
    )
    assert decision.allowed is expected
    assert "\n" not in decision.reason
    assert decision.notice is None or "\n" not in decision.notice


@given(
    env=_ENVS,
    token=st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ.-_", min_size=32, max_size=64),
    token_present=st.booleans(),
)
def test_the_token_never_reaches_a_reason_or_notice(
    env: dict[str, str], token: str, token_present: bool
) -> None:
    """The token may sit beside the CI variables; the gate never reads or repeats it."""
    gate = GateInputs(push_cache=True, token_present=token_present, cache_attached=True)
    decision = decide_publish(read_context({**env, "ATTIC_TOKEN": token}), gate)

    assert token not in decision.reason
    assert token not in (decision.notice or "")
