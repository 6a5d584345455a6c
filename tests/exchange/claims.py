"""Verified-claim builders for the pure tests (no signature involved): GitHub- and
GitLab-shaped claim sets, with ``DROP`` to leave a claim out."""

from __future__ import annotations

from nix_job.exchange.policy import IssuerConfig

DROP: object = object()
"""Pass as a claim's value to leave the claim out."""

GITHUB = IssuerConfig(
    name="github", kind="github", url="https://token.actions.githubusercontent.com", audience="a"
)
GITLAB = IssuerConfig(name="gitlab", kind="gitlab", url="https://gitlab.com", audience="a")


def github_claims(**over: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": "repo:octo-org/octo-repo:ref:refs/heads/main",
        "repository": "octo-org/octo-repo",
        "repository_id": "4242",
        "repository_owner": "octo-org",
        "repository_owner_id": "9000",
        "ref": "refs/heads/main",
        "ref_type": "branch",
        "event_name": "push",
        "run_id": "123",
        "run_attempt": "2",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "head_ref": "",
        "base_ref": "",
        "run_number": "7",
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not DROP}


def gitlab_claims(**over: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "sub": "project_path:group/project:ref_type:branch:ref:main",
        "project_path": "group/project",
        "project_id": "20",
        "namespace_path": "group",
        "namespace_id": "72",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "pipeline_source": "push",
        "job_id": "302",
        "runner_id": 1,
        "ci_config_sha": None,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not DROP}
