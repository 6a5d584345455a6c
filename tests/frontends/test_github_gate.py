"""The publish gate: only trusted default-branch runs with a token and push-cache publish."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nix_job.core.decision import CACHE_PUSH_ENV, GateInputs, PublishDecision, cache_push_env
from nix_job.frontends.github.event import TRUSTED_EVENTS, EventContext, read_event
from nix_job.frontends.github.gate import decide_publish

REPO_ROOT = Path(__file__).resolve().parents[2]

BASE_REPO = {"full_name": "acme/app", "fork": False, "default_branch": "main"}


def push_payload(ref: str = "refs/heads/main") -> dict[str, object]:
    return {"ref": ref, "repository": BASE_REPO}


def pr_payload(*, head_repo: dict[str, object] | None) -> dict[str, object]:
    return {
        "number": 7,
        "pull_request": {
            "head": {"ref": "feature", "repo": head_repo},
            "base": {"ref": "main", "repo": BASE_REPO},
        },
        "repository": BASE_REPO,
    }


SAME_REPO_PR = pr_payload(head_repo=BASE_REPO)
FORK_PR = pr_payload(head_repo={"full_name": "mallory/app", "fork": True})
SCHEDULE = {"schedule": "17 3 * * *"}
DISPATCH = {"ref": "refs/heads/main", "inputs": {}, "repository": BASE_REPO}
MERGE_GROUP = {
    "merge_group": {
        "base_ref": "refs/heads/main",
        "head_ref": "refs/heads/gh-readonly-queue/main/pr-7-abc",
    },
    "repository": BASE_REPO,
}
WORKFLOW_RUN = {"workflow_run": {"event": "pull_request"}, "repository": BASE_REPO}
ISSUE_COMMENT = {"issue": {"pull_request": {}}, "comment": {}, "repository": BASE_REPO}
RELEASE = {"release": {"tag_name": "v1"}, "repository": BASE_REPO}
NO_DEFAULT_BRANCH = {"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    event: str | None
    ref: str | None
    payload: object
    token: bool = True
    push_cache: bool = True
    cache_attached: bool = True

    def env(self) -> dict[str, str]:
        env = {"GITHUB_REPOSITORY": "acme/app"}
        if self.event is not None:
            env["GITHUB_EVENT_NAME"] = self.event
        if self.ref is not None:
            env["GITHUB_REF"] = self.ref
            env["GITHUB_REF_NAME"] = self.ref.split("/", 2)[-1]
            env["GITHUB_REF_TYPE"] = "tag" if self.ref.startswith("refs/tags/") else "branch"
        return env

    def decide(self) -> PublishDecision:
        payload = None if self.payload is None else json.dumps(self.payload).encode()
        return decide_publish(
            event=read_event(self.env(), payload),
            gate=GateInputs(
                push_cache=self.push_cache,
                token_present=self.token,
                cache_attached=self.cache_attached,
            ),
        )


MAIN = "refs/heads/main"


@pytest.mark.parametrize(
    ("run", "allowed", "reason_has", "notice_has"),
    [
        # Trusted events on the default branch publish.
        pytest.param(
            Run(event="push", ref=MAIN, payload=push_payload()),
            True,
            "on the default branch 'main' (from the event payload)",
            None,
            id="push-to-default-branch-publishes",
        ),
        pytest.param(
            Run(event="workflow_dispatch", ref=MAIN, payload=DISPATCH),
            True,
            "workflow_dispatch run is on the default branch",
            None,
            id="workflow-dispatch-on-default-branch-publishes",
        ),
        pytest.param(
            Run(event="schedule", ref=MAIN, payload=SCHEDULE),
            True,
            "from GITHUB_REF_NAME",
            None,
            id="schedule-publishes-with-default-branch-from-ref-name",
        ),
        # Trusted events elsewhere do not.
        pytest.param(
            Run(event="push", ref="refs/heads/feature", payload=push_payload("refs/heads/feature")),
            False,
            "on branch 'feature', not the default branch 'main'",
            None,
            id="push-to-another-branch-does-not-publish",
        ),
        pytest.param(
            Run(
                event="push", ref="refs/heads/main-old", payload=push_payload("refs/heads/main-old")
            ),
            False,
            "not the default branch",
            None,
            id="push-to-branch-with-default-branch-as-prefix-does-not-publish",
        ),
        pytest.param(
            Run(event="push", ref="refs/tags/v1.0", payload=push_payload("refs/tags/v1.0")),
            False,
            "on tag 'v1.0'",
            None,
            id="push-of-a-tag-does-not-publish",
        ),
        pytest.param(
            Run(event="push", ref="refs/tags/main", payload=push_payload("refs/tags/main")),
            False,
            "on tag 'main'",
            None,
            id="push-of-a-tag-named-like-the-default-branch-does-not-publish",
        ),
        pytest.param(
            Run(event="workflow_dispatch", ref="refs/heads/feature", payload=DISPATCH),
            False,
            "on branch 'feature'",
            None,
            id="workflow-dispatch-on-feature-branch-does-not-publish",
        ),
        pytest.param(
            Run(event="push", ref=None, payload=push_payload()),
            False,
            "GITHUB_REF is not set",
            None,
            id="push-without-github-ref-does-not-publish",
        ),
        # Pull-request-like events never publish, whatever the inputs say.
        pytest.param(
            Run(event="pull_request", ref="refs/pull/7/merge", payload=SAME_REPO_PR),
            False,
            "pull_request runs never publish: pull requests stay read-only, "
            "whatever push-cache says.",
            "pull requests stay read-only",
            id="same-repo-pull-request-with-token-and-push-cache-does-not-publish",
        ),
        pytest.param(
            Run(event="pull_request", ref="refs/pull/7/merge", payload=FORK_PR, token=False),
            False,
            "pull_request runs from a fork never publish",
            "Builds are published once the change reaches main",
            id="fork-pull-request-without-token-does-not-publish",
        ),
        pytest.param(
            Run(event="pull_request", ref="refs/pull/7/merge", payload=FORK_PR),
            False,
            "from a fork never publish",
            "read-only",
            id="fork-pull-request-with-a-token-does-not-publish",
        ),
        pytest.param(
            Run(event="pull_request", ref=MAIN, payload=SAME_REPO_PR),
            False,
            "pull_request runs never publish",
            "read-only",
            id="pull-request-claiming-the-default-branch-ref-does-not-publish",
        ),
        pytest.param(
            Run(event="pull_request_target", ref=MAIN, payload=FORK_PR),
            False,
            "pull_request_target runs from a fork never publish",
            "base repository's secrets",
            id="pull-request-target-on-default-branch-ref-does-not-publish",
        ),
        pytest.param(
            Run(event="pull_request_target", ref=MAIN, payload=SAME_REPO_PR),
            False,
            "pull_request_target runs never publish",
            "read-only",
            id="same-repo-pull-request-target-does-not-publish",
        ),
        pytest.param(
            Run(event="pull_request_review", ref="refs/pull/7/merge", payload=SAME_REPO_PR),
            False,
            "pull_request_review runs never publish",
            "read-only",
            id="pull-request-review-does-not-publish",
        ),
        pytest.param(
            Run(
                event="merge_group",
                ref="refs/heads/gh-readonly-queue/main/pr-7-abc",
                payload=MERGE_GROUP,
            ),
            False,
            "merge_group runs never publish: merge-queue code",
            "not yet on the default branch",
            id="merge-group-does-not-publish",
        ),
        pytest.param(
            Run(event="workflow_run", ref=MAIN, payload=WORKFLOW_RUN),
            False,
            "workflow_run runs never publish",
            "read-only",
            id="workflow-run-on-default-branch-does-not-publish",
        ),
        pytest.param(
            Run(event="issue_comment", ref=MAIN, payload=ISSUE_COMMENT),
            False,
            "issue_comment runs never publish",
            "read-only",
            id="issue-comment-on-default-branch-does-not-publish",
        ),
        # Other and unknown events.
        pytest.param(
            Run(event="release", ref="refs/tags/v1", payload=RELEASE),
            False,
            "release runs never publish: only push, workflow_dispatch and schedule",
            None,
            id="release-does-not-publish",
        ),
        pytest.param(
            Run(event="repository_dispatch", ref=MAIN, payload=push_payload()),
            False,
            "repository_dispatch runs never publish",
            None,
            id="repository-dispatch-on-default-branch-does-not-publish",
        ),
        pytest.param(
            Run(event="PUSH", ref=MAIN, payload=push_payload()),
            False,
            "PUSH runs never publish",
            None,
            id="event-name-in-the-wrong-case-does-not-publish",
        ),
        pytest.param(
            Run(event="", ref=MAIN, payload=push_payload()),
            False,
            "GITHUB_EVENT_NAME is not set",
            "GITHUB_EVENT_NAME is not set",
            id="empty-event-name-does-not-publish",
        ),
        pytest.param(
            Run(event=None, ref=MAIN, payload=push_payload()),
            False,
            "GITHUB_EVENT_NAME is not set",
            "only publishes from GitHub Actions",
            id="missing-event-name-does-not-publish",
        ),
        # Default branch unknown or payload unreadable.
        pytest.param(
            Run(event="push", ref=MAIN, payload=NO_DEFAULT_BRANCH),
            False,
            "the default branch is unknown",
            "github-token",
            id="unknown-default-branch-does-not-publish",
        ),
        pytest.param(
            Run(event="schedule", ref=None, payload=SCHEDULE),
            False,
            "the default branch is unknown",
            "github-token",
            id="schedule-without-ref-does-not-publish",
        ),
        pytest.param(
            Run(event="push", ref=MAIN, payload=None),
            False,
            "no event payload was available",
            "nothing is published",
            id="push-without-payload-does-not-publish",
        ),
        pytest.param(
            Run(event="push", ref=MAIN, payload=[1, 2]),
            False,
            "the event payload is a list, not a JSON object",
            "nothing is published",
            id="push-with-list-payload-does-not-publish",
        ),
        pytest.param(
            Run(event="push", ref=MAIN, payload={"repository": {"default_branch": 5}}),
            False,
            "`repository.default_branch` in the event payload is a number",
            "nothing is published",
            id="push-with-numeric-default-branch-does-not-publish",
        ),
        pytest.param(
            Run(
                event="push",
                ref=MAIN,
                payload={
                    "repository": BASE_REPO,
                    "pull_request": {"base": {"repo": "acme/app"}},
                },
            ),
            False,
            "`pull_request.base.repo` in the event payload is a string",
            "nothing is published",
            id="push-with-a-malformed-field-anywhere-does-not-publish",
        ),
        # The user's switch and missing configuration.
        pytest.param(
            Run(event="push", ref=MAIN, payload=push_payload(), push_cache=False),
            False,
            "push-cache is false, so this run reads the cache and publishes nothing.",
            None,
            id="push-cache-false-on-default-branch-does-not-publish",
        ),
        pytest.param(
            Run(event="pull_request", ref="refs/pull/7/merge", payload=FORK_PR, push_cache=False),
            False,
            "push-cache is false",
            None,
            id="push-cache-false-on-a-pull-request-says-push-cache-plainly",
        ),
        pytest.param(
            Run(event="push", ref=MAIN, payload=push_payload(), token=False),
            False,
            "ATTIC_TOKEN is not set",
            "secrets.ATTIC_TOKEN",
            id="default-branch-without-token-does-not-publish",
        ),
        pytest.param(
            Run(event="push", ref=MAIN, payload=push_payload(), cache_attached=False),
            False,
            "no Attic cache is attached",
            "attic-server",
            id="default-branch-without-attached-cache-does-not-publish",
        ),
        pytest.param(
            Run(
                event="push",
                ref="refs/heads/feature",
                payload=push_payload("refs/heads/feature"),
                token=False,
                cache_attached=False,
            ),
            False,
            "not the default branch",
            None,
            id="feature-branch-reason-wins-over-missing-configuration",
        ),
        pytest.param(
            Run(
                event="push",
                ref=MAIN,
                payload=push_payload(),
                token=False,
                cache_attached=False,
                push_cache=False,
            ),
            False,
            "push-cache is false",
            None,
            id="nothing-configured-says-push-cache-is-false",
        ),
    ],
)
def test_publish_decision(run: Run, allowed: bool, reason_has: str, notice_has: str | None) -> None:
    decision = run.decide()

    assert decision.allowed is allowed
    assert reason_has in decision.reason
    assert decision.reason.endswith(".")
    if notice_has is None:
        assert decision.notice is None
    else:
        assert decision.notice is not None
        assert notice_has in decision.notice


def context(**changes: object) -> EventContext:
    base = EventContext(
        event_name="push",
        ref="refs/heads/main",
        ref_name="main",
        ref_type="branch",
        ref_protected=True,
        repository="acme/app",
        default_branch="main",
        default_branch_source="payload",
        is_fork=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_branch_found_through_the_api_publishes_and_says_so() -> None:
    decision = decide_publish(
        event=context(default_branch_source="api"),
        gate=GateInputs(
            push_cache=True,
            token_present=True,
            cache_attached=True,
        ),
    )

    assert decision.allowed
    assert "from the GitHub API" in decision.reason


def test_an_unknown_default_branch_names_the_failed_api_lookup() -> None:
    decision = decide_publish(
        event=context(
            default_branch=None,
            default_branch_source=None,
            lookup_error="GET /repos/acme/app returned HTTP 404",
        ),
        gate=GateInputs(
            push_cache=True,
            token_present=True,
            cache_attached=True,
        ),
    )

    assert not decision.allowed
    assert "the GitHub API lookup failed: GET /repos/acme/app returned HTTP 404" in (
        decision.reason
    )


def test_any_problem_in_the_event_context_blocks_publishing() -> None:
    decision = decide_publish(
        event=context(problems=("something odd",)),
        gate=GateInputs(
            push_cache=True,
            token_present=True,
            cache_attached=True,
        ),
    )

    assert not decision.allowed
    assert "something odd" in decision.reason


@pytest.mark.parametrize(
    ("allowed", "value"),
    [
        pytest.param(True, "true", id="allowed-gives-true"),
        pytest.param(False, "false", id="denied-gives-false"),
    ],
)
def test_command_env_tells_the_command_whether_this_run_publishes(
    allowed: bool, value: str
) -> None:
    decision = PublishDecision(allowed=allowed, reason="x.")

    assert cache_push_env(decision) == {CACHE_PUSH_ENV: value}
    assert CACHE_PUSH_ENV == "NIX_JOB_CACHE_PUSH"


# --- fuzzing: nothing but a trusted default-branch run ever publishes -------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "repository",
                    "default_branch",
                    "pull_request",
                    "head",
                    "base",
                    "repo",
                    "fork",
                    "full_name",
                    "ref",
                    "schedule",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)
EVENT_NAMES = st.sampled_from(
    [
        "push",
        "workflow_dispatch",
        "schedule",
        "pull_request",
        "pull_request_target",
        "merge_group",
        "workflow_run",
        "issue_comment",
        "release",
        "",
    ]
) | st.text(max_size=12)
REFS = st.sampled_from(["refs/heads/main", "refs/tags/main", "refs/pull/1/merge", "", "main"])
OPTIONAL_ENV = {
    "GITHUB_REF_NAME": st.sampled_from(["main", ""]) | st.text(max_size=8),
    "GITHUB_REF_TYPE": st.sampled_from(["branch", "tag"]),
    "GITHUB_REF_PROTECTED": st.sampled_from(["true", "false"]),
    "GITHUB_REPOSITORY": st.text(max_size=10),
}
TRUSTED_ENVS = st.fixed_dictionaries(
    {
        "GITHUB_EVENT_NAME": st.sampled_from(sorted(TRUSTED_EVENTS)),
        "GITHUB_REF": st.just("refs/heads/main") | REFS,
    },
    optional=OPTIONAL_ENV,
)
ENVS = (
    TRUSTED_ENVS
    | st.fixed_dictionaries(
        {"GITHUB_EVENT_NAME": EVENT_NAMES, "GITHUB_REF": REFS}, optional=OPTIONAL_ENV
    )
    | st.fixed_dictionaries(
        {},
        optional={
            "GITHUB_EVENT_NAME": EVENT_NAMES,
            "GITHUB_REF": REFS | st.text(max_size=12),
            **OPTIONAL_ENV,
        },
    )
)
PAYLOADS = (
    st.just(json.dumps(push_payload()).encode())
    | st.none()
    | st.binary(max_size=40)
    | JSON.map(lambda value: json.dumps(value).encode())
    | st.builds(
        lambda branch, extra: json.dumps(
            {"repository": {"default_branch": branch}, **extra}
        ).encode(),
        st.sampled_from(["main"]) | JSON,
        st.dictionaries(st.sampled_from(["pull_request", "ref", "schedule"]), JSON, max_size=2),
    )
)


@settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    env=ENVS,
    payload=PAYLOADS,
    push_cache=st.booleans(),
    token=st.booleans(),
    cache=st.booleans(),
)
def test_fuzzed_contexts_publish_only_from_trusted_default_branch_runs(
    env: dict[str, str], payload: bytes | None, push_cache: bool, token: bool, cache: bool
) -> None:
    event = read_event(env, payload)
    decision = decide_publish(
        event=event,
        gate=GateInputs(
            push_cache=push_cache,
            token_present=token,
            cache_attached=cache,
        ),
    )

    assert decision.reason
    if event.event_name not in TRUSTED_EVENTS:
        assert not decision.allowed
    if decision.allowed:
        assert push_cache
        assert token
        assert cache
        assert not event.problems
        assert event.default_branch is not None
        assert event.ref == f"refs/heads/{event.default_branch}"
        assert env.get("GITHUB_REF") == event.ref
