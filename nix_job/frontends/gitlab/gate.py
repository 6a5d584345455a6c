"""The GitLab publish gate: may this pipeline job push to the cache? Pure and fail-closed.

Only ``push``, ``web``, ``api`` and ``schedule`` pipelines of the protected default branch
publish, and only with a cache attached, a token and ``push-cache: true``. Merge request and
external pull request pipelines never do, whatever else is set. This module is the only place
that names GitLab's ``CI_*`` variables; it reads a mapping the caller passes, never
``os.environ``.

Facts from gitlabhq: ``doc/ci/variables/predefined_variables.md`` (``CI_COMMIT_BRANCH`` is not
available in merge request or tag pipelines; ``CI_COMMIT_REF_NAME`` is the branch *or* tag
name; ``CI_COMMIT_REF_PROTECTED`` is ``true`` for a protected ref, ``false`` otherwise;
``CI_MERGE_REQUEST_EVENT_TYPE`` is ``detached``, ``merged_result`` or ``merge_train``) and
``doc/ci/jobs/job_rules.md`` (the ``CI_PIPELINE_SOURCE`` values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nix_job.core.decision import GateInputs, PublishDecision, deny, token_missing_decision

__all__ = [
    "MERGE_REQUEST_VARIABLES",
    "PUBLISHING_SOURCES",
    "GitLabContext",
    "decide_publish",
    "read_context",
]

# The pipeline sources that may publish (from the default branch). ``web`` and ``api`` are
# GitLab's counterparts of GitHub's workflow_dispatch.
PUBLISHING_SOURCES: frozenset[str] = frozenset({"push", "web", "api", "schedule"})

# Any of these set, even to whitespace, means a merge request or external pull request
# pipeline: never publish.
MERGE_REQUEST_VARIABLES: tuple[str, ...] = (
    "CI_MERGE_REQUEST_IID",
    "CI_MERGE_REQUEST_ID",
    "CI_EXTERNAL_PULL_REQUEST_IID",
)

_MERGE_REQUEST_SOURCE = "merge_request_event"

# Why each known non-publishing source stays read-only (doc/ci/jobs/job_rules.md).
_SOURCE_REASONS: Mapping[str, str] = {
    "trigger": "a trigger token can start them with any variables it likes",
    "pipeline": "a multi-project pipeline runs on another project's say-so",
    "parent_pipeline": "a child of a parent pipeline cannot show that the parent pipeline was "
    "not a merge request pipeline",
    "chat": "ChatOps commands can come from anyone in the chat",
    "external": "they are started by a CI service other than GitLab",
    "external_pull_request_event": "they build external pull requests",
    "webide": "Web IDE pipelines build unreviewed edits",
    "security_orchestration_policy": "security policy pipelines are not builds of the "
    "default branch",
    "ondemand_dast_scan": "DAST scans are not builds of the default branch",
    "ondemand_dast_validation": "DAST validations are not builds of the default branch",
}

_SHOW_LIMIT = 80


@dataclass(frozen=True, slots=True, kw_only=True)
class GitLabContext:
    """The facts about a GitLab pipeline job the gate decides on. Empty strings mean "not set".

    Values are kept verbatim (no stripping or case folding): the gate compares them exactly,
    so anything unusual fails closed.
    """

    gitlab_ci: str  # GITLAB_CI: "true" in GitLab CI; gitlab-ci-local sets "false"
    pipeline_source: str  # CI_PIPELINE_SOURCE
    merge_request_iid: str  # CI_MERGE_REQUEST_IID
    merge_request_id: str  # CI_MERGE_REQUEST_ID
    merge_request_event_type: str  # CI_MERGE_REQUEST_EVENT_TYPE
    merge_request_project_id: str  # CI_MERGE_REQUEST_PROJECT_ID (the target project)
    merge_request_source_project_id: str  # CI_MERGE_REQUEST_SOURCE_PROJECT_ID
    merge_request_project_path: str  # CI_MERGE_REQUEST_PROJECT_PATH, for messages only
    merge_request_source_project_path: str  # CI_MERGE_REQUEST_SOURCE_PROJECT_PATH, messages only
    external_pull_request_iid: str  # CI_EXTERNAL_PULL_REQUEST_IID
    commit_tag: str  # CI_COMMIT_TAG
    commit_branch: str  # CI_COMMIT_BRANCH
    commit_ref_name: str  # CI_COMMIT_REF_NAME
    commit_ref_protected: str  # CI_COMMIT_REF_PROTECTED
    default_branch: str  # CI_DEFAULT_BRANCH

    @property
    def merge_request_variables(self) -> tuple[str, ...]:
        """The names of the merge request variables that are set (non-empty)."""
        values = (self.merge_request_iid, self.merge_request_id, self.external_pull_request_iid)
        return tuple(
            name for name, value in zip(MERGE_REQUEST_VARIABLES, values, strict=True) if value
        )

    @property
    def is_fork_merge_request(self) -> bool:
        """Source and target project IDs are both known and differ."""
        source, target = self.merge_request_source_project_id, self.merge_request_project_id
        return bool(source and target and source != target)


def read_context(variables: Mapping[str, str]) -> GitLabContext:
    """The gate's facts from a job's variables (the caller passes its environment). Never raises."""

    def get(name: str) -> str:
        return variables.get(name, "")

    return GitLabContext(
        gitlab_ci=get("GITLAB_CI"),
        pipeline_source=get("CI_PIPELINE_SOURCE"),
        merge_request_iid=get("CI_MERGE_REQUEST_IID"),
        merge_request_id=get("CI_MERGE_REQUEST_ID"),
        merge_request_event_type=get("CI_MERGE_REQUEST_EVENT_TYPE"),
        merge_request_project_id=get("CI_MERGE_REQUEST_PROJECT_ID"),
        merge_request_source_project_id=get("CI_MERGE_REQUEST_SOURCE_PROJECT_ID"),
        merge_request_project_path=get("CI_MERGE_REQUEST_PROJECT_PATH"),
        merge_request_source_project_path=get("CI_MERGE_REQUEST_SOURCE_PROJECT_PATH"),
        external_pull_request_iid=get("CI_EXTERNAL_PULL_REQUEST_IID"),
        commit_tag=get("CI_COMMIT_TAG"),
        commit_branch=get("CI_COMMIT_BRANCH"),
        commit_ref_name=get("CI_COMMIT_REF_NAME"),
        commit_ref_protected=get("CI_COMMIT_REF_PROTECTED"),
        default_branch=get("CI_DEFAULT_BRANCH"),
    )


def _show(value: str) -> str:
    """A variable's value for a message: quoted, escaped (repr), and cut when long.

    Values can be set by whoever starts the pipeline, so they must not be able to add lines or
    escape sequences to the log.
    """
    if len(value) > _SHOW_LIMIT:
        return repr(value[:_SHOW_LIMIT]) + "…"
    return repr(value)


def _source_label(source: str) -> str:
    """A pipeline source for a message: known names plain, anything else quoted."""
    if source in PUBLISHING_SOURCES or source in _SOURCE_REASONS:
        return source
    return _show(source) if source else "unnamed"


def _merge_request_decision(context: GitLabContext) -> PublishDecision:
    """Row 2: merge request and external pull request pipelines never publish."""
    target = _show(context.default_branch) if context.default_branch else "the default branch"
    later = f"Builds are published once the change reaches {target}."
    iid = context.merge_request_iid
    if context.external_pull_request_iid:
        what = (
            f"this pipeline builds external pull request "
            f"{_show(context.external_pull_request_iid)} (CI_EXTERNAL_PULL_REQUEST_IID is set)"
        )
        kind = "an external pull request pipeline"
    elif context.pipeline_source != _MERGE_REQUEST_SOURCE:
        names = " and ".join(context.merge_request_variables)
        verb = "is" if len(context.merge_request_variables) == 1 else "are"
        what = (
            f"this {_source_label(context.pipeline_source)} pipeline carries merge request "
            f"variables ({names} {verb} set), so it is treated as a merge request pipeline"
        )
        kind = "a merge request pipeline"
    elif context.merge_request_event_type == "merge_train":
        what = "this is a merge train pipeline: the merged result is not yet on " + target
        kind = "a merge train pipeline"
    elif context.is_fork_merge_request:
        source, target = (
            (context.merge_request_source_project_path, context.merge_request_project_path)
            if context.merge_request_source_project_path and context.merge_request_project_path
            else (context.merge_request_source_project_id, context.merge_request_project_id)
        )
        what = (
            f"this merge request pipeline builds code from a fork (project {_show(source)}, "
            f"not {_show(target)})"
        )
        kind = "a fork merge request pipeline"
    else:
        number = f" !{iid}" if iid.isdecimal() else ""
        what = f"this is a merge request{number} pipeline"
        kind = "a merge request pipeline"
    return deny(
        f"{what}, and merge request pipelines never publish, whatever push-cache says.",
        notice=f"push-cache is true, but this is {kind}, which stays read-only. {later}",
    )


def _source_decision(context: GitLabContext) -> PublishDecision:
    """Row 4: sources other than push, web, api and schedule never publish."""
    source = context.pipeline_source
    why = _SOURCE_REASONS.get(source, "GitLab does not document this source")
    label = _source_label(source)
    return deny(
        f"{label} pipelines never publish ({why}); only push, web, api and schedule "
        "pipelines of the default branch do.",
        notice=f"push-cache is true, but this is a {label} pipeline, which stays read-only: "
        "publish from a push, web, api or schedule pipeline of the default branch.",
    )


def _branch_decision(context: GitLabContext) -> PublishDecision | None:
    """Row 7: only a branch pipeline of the default branch publishes."""
    source, default = context.pipeline_source, context.default_branch
    if not context.commit_branch:
        return deny(
            f"CI_COMMIT_BRANCH is not set, so this {source} pipeline is not a branch pipeline "
            f"of the default branch {_show(default)} and does not publish."
        )
    if context.commit_branch != default:
        return deny(
            f"this {source} pipeline is on branch {_show(context.commit_branch)}, not the "
            f"default branch {_show(default)}; only the default branch publishes."
        )
    if context.commit_ref_name != context.commit_branch:
        return deny(
            f"CI_COMMIT_REF_NAME {_show(context.commit_ref_name)} differs from "
            f"CI_COMMIT_BRANCH {_show(context.commit_branch)}, so the pipeline's ref is "
            "ambiguous and this run does not publish."
        )
    return None


def decide_publish(context: GitLabContext, gate: GateInputs) -> PublishDecision:
    """Decide whether this GitLab job may publish. The first matching row decides.

    0 push-cache false · 1 not GitLab CI · 2 merge request variables or source (never) ·
    3 no source · 4 any other source than push/web/api/schedule (never) · 5 a tag ·
    6 no default branch · 7 not a branch pipeline of the default branch · 8 unprotected ·
    9 no cache attached or no token · otherwise publish.
    """
    if not gate.push_cache:
        return deny("push-cache is false, so this run reads the cache and publishes nothing.")

    if context.gitlab_ci != "true":
        value = _show(context.gitlab_ci) if context.gitlab_ci else "not set"
        return deny(
            f"GITLAB_CI is {value}, not 'true', so this is not a GitLab CI job and it does "
            "not publish.",
            notice="push-cache is true, but GITLAB_CI is not 'true': nix-job only publishes "
            "from GitLab CI jobs (under gitlab-ci-local, pass --variable GITLAB_CI=true).",
        )

    if context.pipeline_source == _MERGE_REQUEST_SOURCE or context.merge_request_variables:
        return _merge_request_decision(context)

    source = context.pipeline_source
    if not source:
        return deny(
            "CI_PIPELINE_SOURCE is not set, so what started this pipeline is unknown and it "
            "does not publish.",
            notice="push-cache is true, but CI_PIPELINE_SOURCE is not set: nix-job only "
            "publishes from push, web, api and schedule pipelines of the default branch.",
        )
    if source not in PUBLISHING_SOURCES:
        return _source_decision(context)

    if context.commit_tag:
        return deny(
            f"this {source} pipeline builds tag {_show(context.commit_tag)}, and tag "
            "pipelines do not publish; only the default branch does.",
            notice="push-cache is true, but tag pipelines stay read-only: the tagged commit's "
            "builds are published by its default-branch pipeline.",
        )

    default = context.default_branch
    if not default:
        return deny(
            f"CI_DEFAULT_BRANCH is not set, so this {source} pipeline cannot be shown to be on "
            "the default branch and does not publish.",
            notice="push-cache is true, but CI_DEFAULT_BRANCH is not set (a project without a "
            "default branch?), so nothing is published.",
        )

    branch_denial = _branch_decision(context)
    if branch_denial is not None:
        return branch_denial

    if context.commit_ref_protected != "true":
        value = _show(context.commit_ref_protected) if context.commit_ref_protected else "empty"
        return deny(
            f"the default branch {_show(default)} is unprotected in this pipeline "
            f"(CI_COMMIT_REF_PROTECTED is {value}, not 'true'), so it does not publish.",
            notice=f"push-cache is true, but the default branch {_show(default)} is not "
            "protected: protect it (Settings > Repository > Protected branches) and make "
            "ATTIC_TOKEN a protected, masked variable to publish.",
        )

    if not gate.cache_attached:
        return deny(
            "no Attic cache is attached to this run (no server or cache is configured, or "
            "attaching failed), so there is nothing to publish to.",
            notice=f"push-cache is true on the protected default branch {_show(default)}, but "
            "no Attic cache is attached: set the ATTIC_SERVER and ATTIC_CACHE variables "
            "(or the component's inputs) to publish.",
        )
    if not gate.token_present:
        where = f"on the protected default branch {_show(default)}"
        if exchanged := token_missing_decision(gate, where=where):
            return exchanged
        return deny(
            "ATTIC_TOKEN is empty, so this run cannot publish.",
            notice=f"push-cache is true on the protected default branch {_show(default)}, but "
            "ATTIC_TOKEN is empty: add it as a protected, masked CI/CD variable "
            "(Settings > CI/CD > Variables) to publish.",
        )

    return PublishDecision(
        allowed=True,
        reason=f"this {source} pipeline is on the protected default branch {_show(default)} "
        "with a cache attached, a token and push-cache true, so new store paths are published.",
    )
