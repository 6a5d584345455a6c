"""Reading verified claims strictly, and the pull-request floor, as tables."""

from __future__ import annotations

import pytest

from nix_job.exchange.errors import Refused
from nix_job.exchange.identity import (
    PULL_REQUEST_EVENTS_ON_GITHUB,
    pull_request_reason,
    read_identity,
)
from nix_job.exchange.policy import IssuerConfig
from tests.exchange.claims import DROP, GITHUB, GITLAB, github_claims, gitlab_claims


def test_github_identity() -> None:
    identity = read_identity(GITHUB, github_claims())
    assert identity.issuer == "github"
    assert identity.project == "octo-org/octo-repo"
    assert identity.project_id == "4242"
    assert identity.ref == "refs/heads/main"
    assert identity.trigger == "push"
    assert identity.pull_request is None
    assert identity.attic_subject == "github:octo-org/octo-repo:refs/heads/main:run/123/2"
    assert identity.rate_limit_key == "github:4242"
    assert "run_number" not in identity.claims  # only claims the service uses are kept


def test_gitlab_identity() -> None:
    identity = read_identity(GITLAB, gitlab_claims())
    assert identity.project == "group/project"
    assert identity.trigger == "push"
    assert identity.claims["ref_protected"] == "true"
    assert identity.attic_subject == "gitlab:group/project:refs/heads/main:job/302"
    assert identity.rate_limit_key == "gitlab:20"


def test_gitlab_subject_without_ref_path_uses_ref() -> None:
    identity = read_identity(GITLAB, gitlab_claims(ref_path=DROP))
    assert identity.attic_subject == "gitlab:group/project:main:job/302"


def test_optional_null_claim_counts_as_absent() -> None:
    identity = read_identity(GITLAB, gitlab_claims(environment=None))
    assert "environment" not in identity.claims


REFUSED = [
    pytest.param(
        GITHUB,
        github_claims(repository=DROP),
        "claim_missing",
        "`repository`",
        id="gh-no-repository",
    ),
    pytest.param(GITHUB, github_claims(sub=DROP), "claim_missing", "`sub`", id="gh-no-sub"),
    pytest.param(
        GITHUB,
        github_claims(run_id=None),
        "claim_type",
        "`run_id` claim is null",
        id="gh-null-required",
    ),
    pytest.param(
        GITHUB,
        github_claims(repository=4242),
        "claim_type",
        "`repository` claim is a number",
        id="gh-repository-number",
    ),
    pytest.param(
        GITHUB,
        github_claims(repository_id=4242),
        "claim_type",
        "`repository_id` claim is a number",
        id="gh-repository-id-number",
    ),
    pytest.param(
        GITHUB,
        github_claims(event_name=["push"]),
        "claim_type",
        "`event_name` claim is a list",
        id="gh-event-list",
    ),
    pytest.param(
        GITHUB,
        github_claims(environment={"name": "prod"}),
        "claim_type",
        "`environment` claim is an object",
        id="gh-environment-object",
    ),
    pytest.param(
        GITHUB,
        github_claims(head_ref=False),
        "claim_type",
        "`head_ref` claim is the boolean false",
        id="gh-head-ref-bool",
    ),
    pytest.param(
        GITLAB,
        gitlab_claims(ref_protected=True),
        "claim_type",
        "`ref_protected` claim is the boolean true",
        id="gl-ref-protected-bool",
    ),
    pytest.param(
        GITLAB,
        gitlab_claims(ref_protected="yes"),
        "claim_type",
        "`ref_protected` claim is 'yes'",
        id="gl-ref-protected-other-text",
    ),
    pytest.param(
        GITLAB,
        gitlab_claims(project_id=20),
        "claim_type",
        "`project_id` claim is a number",
        id="gl-project-id-number",
    ),
    pytest.param(
        GITLAB,
        gitlab_claims(pipeline_source=DROP),
        "claim_missing",
        "`pipeline_source`",
        id="gl-no-source",
    ),
    pytest.param(
        GITLAB,
        github_claims(),
        "claim_missing",
        "is issuers.gitlab the right kind",
        id="github-token-for-gitlab-issuer",
    ),
]


@pytest.mark.parametrize(("issuer", "claims", "code", "text"), REFUSED)
def test_wrong_claims_are_refused_not_coerced(
    issuer: IssuerConfig, claims: dict[str, object], code: str, text: str
) -> None:
    with pytest.raises(Refused) as caught:
        read_identity(issuer, claims)
    assert caught.value.refusal.code == code
    assert text in caught.value.refusal.message
    assert caught.value.refusal.status == 401


GITHUB_FLOOR = [
    *(
        pytest.param({"event_name": event}, True, id=f"event-{event}")
        for event in sorted(PULL_REQUEST_EVENTS_ON_GITHUB)
    ),
    pytest.param({"event_name": "push", "ref": "refs/pull/7/merge"}, True, id="pull-ref"),
    pytest.param(
        {"event_name": "workflow_dispatch", "ref": "refs/pull/7/head"},
        True,
        id="dispatch-on-pull-ref",
    ),
    pytest.param({"event_name": "push", "head_ref": "feature"}, True, id="head-ref-set"),
    pytest.param({"event_name": "push", "ref": "refs/heads/main"}, False, id="push-main"),
    pytest.param({"event_name": "schedule", "ref": "refs/heads/main"}, False, id="schedule"),
    pytest.param({"event_name": "workflow_dispatch", "ref": "refs/heads/x"}, False, id="dispatch"),
    pytest.param({"event_name": "release", "ref": "refs/tags/v1"}, False, id="release"),
    pytest.param({"event_name": "push", "head_ref": ""}, False, id="empty-head-ref"),
]


@pytest.mark.parametrize(("claims", "is_pull_request"), GITHUB_FLOOR)
def test_github_floor(claims: dict[str, str], is_pull_request: bool) -> None:
    assert (pull_request_reason("github", claims) is not None) is is_pull_request


GITLAB_FLOOR = [
    pytest.param({"pipeline_source": "merge_request_event"}, True, id="merge-request"),
    pytest.param({"pipeline_source": "external_pull_request_event"}, True, id="external-pr"),
    pytest.param({"pipeline_source": "parent_pipeline"}, True, id="child-pipeline"),
    pytest.param(
        {"pipeline_source": "push", "job_source": "merge_request_event"}, True, id="job-source-mr"
    ),
    pytest.param(
        {"pipeline_source": "push", "ref": "refs/merge-requests/3/head"}, True, id="mr-ref"
    ),
    pytest.param(
        {"pipeline_source": "push", "ref": "main", "ref_path": "refs/merge-requests/3/merge"},
        True,
        id="mr-ref-path",
    ),
    pytest.param(
        {"pipeline_source": "push", "project_path": "fork/p", "job_project_path": "group/p"},
        True,
        id="fork-mr-in-parent",
    ),
    pytest.param(
        {"pipeline_source": "push", "project_path": "group/p", "job_project_path": "group/p"},
        False,
        id="same-project",
    ),
    pytest.param({"pipeline_source": "push", "ref": "main"}, False, id="push"),
    pytest.param({"pipeline_source": "web"}, False, id="web"),
    pytest.param({"pipeline_source": "api"}, False, id="api"),
    pytest.param({"pipeline_source": "schedule"}, False, id="schedule"),
    pytest.param({"pipeline_source": "trigger"}, False, id="trigger-left-to-policy"),
]


@pytest.mark.parametrize(("claims", "is_pull_request"), GITLAB_FLOOR)
def test_gitlab_floor(claims: dict[str, str], is_pull_request: bool) -> None:
    assert (pull_request_reason("gitlab", claims) is not None) is is_pull_request


def test_floor_reason_names_the_claim() -> None:
    identity = read_identity(GITHUB, github_claims(event_name="pull_request_target"))
    assert (
        identity.pull_request == "event_name 'pull_request_target' runs pull-request code or input"
    )
