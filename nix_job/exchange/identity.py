"""Who is asking: a verified ID token's claims read into an ``Identity``, and the hard floor. Pure.

Claims are read strictly: every claim used is a JSON string in GitHub's and GitLab's tokens
(ids included), and a claim of another type is refused, never coerced. The floor
(``pull_request_reason``) marks identities that run code or input from a pull/merge request;
``decide.py`` never gives them push, whatever a rule says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nix_job.exchange.errors import Refused
from nix_job.exchange.policy import CiKind, IssuerConfig

# Claims read from each CI's ID token: (required, optional). Everything here is a string.
# GitHub: github/docs content/actions/reference/security/oidc.md ("Custom claims provided by
# GitHub"; ids such as repository_id and run_id are strings there too).
# GitLab: gitlabhq doc/ci/secrets/id_token_authentication.md ("Token payload"); it sends
# ref_protected as the string "true"/"false".
CLAIMS: dict[CiKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "github": (
        ("sub", "repository", "repository_id", "ref", "event_name", "run_id"),
        (
            "repository_owner",
            "repository_owner_id",
            "ref_type",
            "job_workflow_ref",
            "environment",
            "runner_environment",
            "run_attempt",
            "head_ref",
            "base_ref",
        ),
    ),
    "gitlab": (
        (
            "sub",
            "project_path",
            "project_id",
            "ref",
            "ref_type",
            "ref_protected",
            "pipeline_source",
            "job_id",
        ),
        (
            "namespace_path",
            "namespace_id",
            "environment",
            "runner_environment",
            "ref_path",
            "job_project_path",
            "job_project_id",
            "job_source",
            "pipeline_id",
        ),
    ),
}

# The hard floor. GitHub: events whose runs carry pull-request code or input (github/docs
# "Events that trigger workflows" and "Securely using pull_request_target"; issue_comment and
# workflow_run take PR-controlled input; merge_group builds unmerged PRs in the merge queue).
PULL_REQUEST_EVENTS_ON_GITHUB = frozenset(
    {
        "pull_request",
        "pull_request_target",
        "pull_request_review",
        "pull_request_review_comment",
        "issue_comment",
        "workflow_run",
        "merge_group",
    }
)
# GitLab: merge request pipelines, external (GitHub) pull request pipelines, and child
# pipelines: a child of a merge request pipeline has the source `parent_pipeline`, so a child
# cannot prove its parent was not one (gitlab-org/gitlab#388018; doc/ci/jobs/job_rules.md).
GITLAB_MERGE_REQUEST_SOURCES = frozenset(
    {"merge_request_event", "external_pull_request_event", "parent_pipeline"}
)
_REF_PROTECTED_VALUES = frozenset({"true", "false"})
_MAX_SHOWN = 80


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """A verified CI job. ``claims`` holds every claim of ``CLAIMS`` present, as strings."""

    issuer: str
    """The policy's name for the issuer."""
    kind: CiKind
    subject: str
    """The ID token's ``sub``."""
    project: str
    """``repository`` (GitHub) or ``project_path`` (GitLab)."""
    project_id: str
    ref: str
    trigger: str
    """``event_name`` (GitHub) or ``pipeline_source`` (GitLab)."""
    claims: Mapping[str, str]
    pull_request: str | None
    """Why this identity counts as a pull/merge request (never push), or None."""

    @property
    def attic_subject(self) -> str:
        """The minted token's ``sub`` (atticd records it as ``created_by``): the issuer's
        policy name, the repository, the ref and the run, e.g.
        ``github:octo-org/octo-repo:refs/heads/main:run/123/1`` or
        ``gitlab:group/project:refs/heads/main:job/302``. Refs and repository paths cannot
        contain ':' (git check-ref-format), so the fields stay apart."""
        c = self.claims
        if self.kind == "github":
            attempt = c.get("run_attempt")
            run = f"run/{c['run_id']}" + (f"/{attempt}" if attempt else "")
            return f"{self.issuer}:{self.project}:{self.ref}:{run}"
        ref = c.get("ref_path") or self.ref
        return f"{self.issuer}:{self.project}:{ref}:job/{c['job_id']}"

    @property
    def rate_limit_key(self) -> str:
        """One bucket per repository/project (stable id): every job of a repository shares it,
        so new branches, environments or runs do not multiply the budget."""
        return f"{self.issuer}:{self.project_id}"


def read_identity(issuer: IssuerConfig, claims: Mapping[str, object]) -> Identity:
    """Verified claims → ``Identity``; ``Refused`` when a claim is missing or not a string."""
    required, optional = CLAIMS[issuer.kind]
    values: dict[str, str] = {}
    for name in (*required, *optional):
        if name not in claims or (claims[name] is None and name in optional):
            # JSON null for an optional claim means "not set" (GitLab documents nulls).
            if name in required:
                raise Refused(
                    "claim_missing",
                    f"the ID token has no `{name}` claim, which every {issuer.kind} job token "
                    f"from {issuer.url} carries; is issuers.{issuer.name} the right kind "
                    f"({issuer.kind})?",
                )
            continue
        value = claims[name]
        if not isinstance(value, str):
            raise Refused(
                "claim_type",
                f"the ID token's `{name}` claim is {_json_type(value)}, not a string as "
                f"{issuer.kind} sends it; it was refused, not converted. Use a token issued "
                f"by {issuer.url} itself.",
            )
        values[name] = value
    if issuer.kind == "gitlab" and values["ref_protected"] not in _REF_PROTECTED_VALUES:
        raise Refused(
            "claim_type",
            f"the ID token's `ref_protected` claim is {_show(values['ref_protected'])}, not "
            '"true" or "false"',
        )
    if issuer.kind == "github":
        project, project_id, trigger = (
            values["repository"],
            values["repository_id"],
            values["event_name"],
        )
    else:
        project, project_id, trigger = (
            values["project_path"],
            values["project_id"],
            values["pipeline_source"],
        )
    return Identity(
        issuer=issuer.name,
        kind=issuer.kind,
        subject=values["sub"],
        project=project,
        project_id=project_id,
        ref=values["ref"],
        trigger=trigger,
        claims=values,
        pull_request=pull_request_reason(issuer.kind, values),
    )


def pull_request_reason(kind: CiKind, claims: Mapping[str, str]) -> str | None:
    """Why a job runs pull/merge-request code or input, or None. The hard floor: such an
    identity never receives push (``w``), whatever a rule grants."""
    ref = claims.get("ref", "")
    if kind == "github":
        event = claims.get("event_name", "")
        if event in PULL_REQUEST_EVENTS_ON_GITHUB:
            return f"event_name {event!r} runs pull-request code or input"
        if ref.startswith("refs/pull/"):
            return f"ref {_show(ref)} is a pull-request ref"
        if claims.get("head_ref"):
            return "head_ref is set: the run belongs to a pull request"
        return None
    for key in ("pipeline_source", "job_source"):
        source = claims.get(key, "")
        if source in GITLAB_MERGE_REQUEST_SOURCES:
            return f"{key} {source!r} can run merge-request code"
    for key in ("ref", "ref_path"):
        value = claims.get(key, "")
        if value.startswith("refs/merge-requests/"):
            return f"{key} {_show(value)} is a merge-request ref"
    job_project = claims.get("job_project_path")
    if job_project is not None and job_project != claims.get("project_path"):
        # GitLab ≥ 18.4: in a fork's merge request pipeline run in the parent project,
        # project_path names the fork and job_project_path the parent (gitlab-org/gitlab#563038).
        return "project_path differs from job_project_path: a fork's merge request pipeline"
    return None


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__


def _show(value: str) -> str:
    """A claim value for a message: quoted, bounded (claims are attacker-chosen text)."""
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "…")
