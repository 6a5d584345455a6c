"""Reading the triggering event: environment plus payload, never raising, problems listed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_job.frontends.github.event import EventContext, read_event

REPO = {"full_name": "acme/app", "fork": False, "default_branch": "main"}


def payload_of(value: object) -> bytes:
    return json.dumps(value).encode()


def pr(head_repo: object, base_repo: object = REPO, **extra: object) -> bytes:
    return payload_of(
        {"pull_request": {"head": {"repo": head_repo}, "base": {"repo": base_repo}}, **extra}
    )


def test_a_push_run_is_read_from_the_environment_and_payload() -> None:
    env = {
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_REF_NAME": "main",
        "GITHUB_REF_TYPE": "branch",
        "GITHUB_REF_PROTECTED": "true",
        "GITHUB_REPOSITORY": "acme/app",
    }

    event = read_event(env, payload_of({"ref": "refs/heads/main", "repository": REPO}))

    assert event == EventContext(
        event_name="push",
        ref="refs/heads/main",
        ref_name="main",
        ref_type="branch",
        ref_protected=True,
        repository="acme/app",
        default_branch="main",
        default_branch_source="payload",
        is_fork=None,
        lookup_error=None,
        problems=(),
    )


@pytest.mark.parametrize(
    ("env", "payload", "branch", "source"),
    [
        pytest.param(
            {"GITHUB_EVENT_NAME": "push"},
            payload_of({"repository": {"default_branch": "trunk"}}),
            "trunk",
            "payload",
            id="repository-default-branch-comes-first",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "pull_request"},
            pr(REPO | {"default_branch": "develop"}, REPO | {"default_branch": "stable"}),
            "stable",
            "payload",
            id="pull-request-base-repo-is-the-fallback",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "push"},
            payload_of(
                {
                    "repository": {"default_branch": "trunk"},
                    "pull_request": {"base": {"repo": {"default_branch": "other"}}},
                }
            ),
            "trunk",
            "payload",
            id="repository-wins-over-pull-request-base",
        ),
        pytest.param(
            {
                "GITHUB_EVENT_NAME": "schedule",
                "GITHUB_REF": "refs/heads/main",
                "GITHUB_REF_NAME": "main",
            },
            payload_of({"schedule": "0 3 * * *"}),
            "main",
            "schedule-ref",
            id="schedule-takes-github-ref-name",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "schedule", "GITHUB_REF": "refs/heads/main"},
            payload_of({"schedule": "0 3 * * *"}),
            "main",
            "schedule-ref",
            id="schedule-without-ref-name-derives-it-from-github-ref",
        ),
        pytest.param(
            {
                "GITHUB_EVENT_NAME": "schedule",
                "GITHUB_REF": "refs/heads/release",
                "GITHUB_REF_NAME": "main",
            },
            payload_of({"schedule": "0 3 * * *"}),
            None,
            None,
            id="schedule-with-disagreeing-ref-and-ref-name-has-no-default-branch",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "schedule", "GITHUB_REF": "refs/tags/v1"},
            payload_of({"schedule": "0 3 * * *"}),
            None,
            None,
            id="schedule-on-a-tag-ref-has-no-default-branch",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "schedule"},
            payload_of({"schedule": "0 3 * * *"}),
            None,
            None,
            id="schedule-without-any-ref-has-no-default-branch",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "push", "GITHUB_REF_NAME": "main"},
            payload_of({"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}}),
            None,
            None,
            id="push-never-takes-the-ref-name-as-default-branch",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "push"},
            payload_of({"repository": {"default_branch": ""}}),
            None,
            None,
            id="empty-default-branch-counts-as-missing",
        ),
        pytest.param(
            {"GITHUB_EVENT_NAME": "push"},
            payload_of({"repository": None}),
            None,
            None,
            id="null-repository-counts-as-missing",
        ),
    ],
)
def test_default_branch_and_where_it_came_from(
    env: dict[str, str], payload: bytes, branch: str | None, source: str | None
) -> None:
    event = read_event(env, payload)

    assert event.default_branch == branch
    assert event.default_branch_source == source
    assert event.problems == ()


@pytest.mark.parametrize(
    ("payload", "is_fork"),
    [
        pytest.param(pr(REPO), False, id="same-repository-is-not-a-fork"),
        pytest.param(
            pr(REPO | {"full_name": "ACME/App"}), False, id="names-compare-case-insensitively"
        ),
        pytest.param(pr({"full_name": "mallory/app", "fork": True}), True, id="fork-flag"),
        pytest.param(
            pr({"full_name": "mallory/app", "fork": False}), True, id="other-repository-name"
        ),
        pytest.param(pr(REPO | {"fork": True}), True, id="fork-flag-wins-over-equal-names"),
        pytest.param(pr(REPO | {"fork": "yes"}), True, id="odd-fork-flag-counts-as-fork"),
        pytest.param(pr(None), True, id="deleted-head-repository-is-assumed-a-fork"),
        pytest.param(
            payload_of({"pull_request": {"base": {"repo": REPO}}}),
            True,
            id="missing-head-is-assumed-a-fork",
        ),
        pytest.param(pr({"fork": False}), True, id="head-without-name-is-assumed-a-fork"),
        pytest.param(pr(REPO, None), True, id="missing-base-repository-is-assumed-a-fork"),
        pytest.param(pr("acme/app"), True, id="head-repository-as-string-is-assumed-a-fork"),
        pytest.param(
            payload_of({"pull_request": "7"}), True, id="pull-request-as-string-is-assumed-a-fork"
        ),
        pytest.param(payload_of({"repository": REPO}), None, id="no-pull-request-no-fork-answer"),
        pytest.param(
            payload_of({"pull_request": None}), None, id="null-pull-request-no-fork-answer"
        ),
    ],
)
def test_fork_detection(payload: bytes, is_fork: bool | None) -> None:
    event = read_event({"GITHUB_EVENT_NAME": "pull_request"}, payload)

    assert event.is_fork is is_fork


DEEP = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        pytest.param(None, "no event payload was available", id="no-payload"),
        pytest.param(b"", "the event payload file is empty", id="empty-bytes"),
        pytest.param(b"  \n", "the event payload file is empty", id="whitespace-only"),
        pytest.param(b"{not json", "the event payload is not valid JSON", id="not-json"),
        pytest.param(b"\xff\xfe\xfa", "the event payload is not valid JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "the event payload is a list, not a JSON object", id="json-list"),
        pytest.param(b"null", "the event payload is null, not a JSON object", id="json-null"),
        pytest.param(b'"main"', "is a string, not a JSON object", id="json-string"),
        pytest.param(b"42", "is a number, not a JSON object", id="json-number"),
        pytest.param(DEEP, "nested too deeply", id="deeply-nested-list"),
        pytest.param(
            b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply", id="deep-objects"
        ),
        pytest.param(
            b'{"repository": {"default_branch": 5}}',
            "`repository.default_branch` in the event payload is a number, not a string",
            id="default-branch-a-number",
        ),
        pytest.param(
            b'{"repository": {"default_branch": ["main"]}}',
            "`repository.default_branch` in the event payload is a list, not a string",
            id="default-branch-a-list",
        ),
        pytest.param(
            b'{"repository": "acme/app"}',
            "`repository` in the event payload is a string, not an object",
            id="repository-a-string",
        ),
        pytest.param(
            b'{"repository": true}',
            "`repository` in the event payload is a boolean, not an object",
            id="repository-a-boolean",
        ),
        pytest.param(
            b'{"pull_request": {"base": {"repo": {"default_branch": {}}}}}',
            "`pull_request.base.repo.default_branch` in the event payload is an object",
            id="base-default-branch-an-object",
        ),
        pytest.param(
            b'{"pull_request": {"head": []}}',
            "`pull_request.head` in the event payload is a list, not an object",
            id="head-a-list",
        ),
    ],
)
def test_malformed_payloads_are_problems_not_crashes(payload: bytes | None, problem: str) -> None:
    event = read_event({"GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/heads/main"}, payload)

    assert any(problem in text for text in event.problems), event.problems
    assert event.default_branch is None
    assert event.event_name == "push"


def test_problems_are_short_even_for_huge_junk() -> None:
    junk = b'{"repository": ' + b"x" * 1_000_000 + b"}"

    event = read_event({"GITHUB_EVENT_NAME": "push"}, junk)

    assert len(event.problems) == 1
    assert len(event.problems[0]) < 400


def test_missing_event_name_is_a_problem() -> None:
    event = read_event({"GITHUB_REF": "refs/heads/main"}, payload_of({"repository": REPO}))

    assert event.event_name == ""
    assert event.problems == ("GITHUB_EVENT_NAME is not set, so the triggering event is unknown",)


@pytest.mark.parametrize(
    ("value", "protected"),
    [
        pytest.param("true", True, id="true-is-protected"),
        pytest.param("false", False, id="false-is-not"),
        pytest.param("TRUE", False, id="only-the-runners-exact-true-counts"),
        pytest.param(None, False, id="unset-is-not"),
    ],
)
def test_ref_protection_comes_from_github_ref_protected(value: str | None, protected: bool) -> None:
    env = {"GITHUB_EVENT_NAME": "push"}
    if value is not None:
        env["GITHUB_REF_PROTECTED"] = value

    assert read_event(env, b"{}").ref_protected is protected


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=4)
        | st.fixed_dictionaries(
            {},
            optional={
                "repository": children,
                "pull_request": children,
                "head": children,
                "base": children,
                "repo": children,
                "default_branch": children,
                "fork": children,
                "full_name": children,
            },
        )
    ),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None, database=None)
@given(
    env=st.dictionaries(
        st.sampled_from(
            [
                "GITHUB_EVENT_NAME",
                "GITHUB_REF",
                "GITHUB_REF_NAME",
                "GITHUB_REF_TYPE",
                "GITHUB_REF_PROTECTED",
                "GITHUB_REPOSITORY",
            ]
        )
        | st.text(max_size=8),
        st.text(max_size=20),
    ),
    payload=st.none()
    | st.binary(max_size=64)
    | JSON_VALUES.map(lambda value: json.dumps(value).encode()),
)
def test_read_event_never_raises_and_reports_types_consistently(
    env: dict[str, str], payload: bytes | None
) -> None:
    event = read_event(env, payload)

    assert isinstance(event.problems, tuple)
    assert all(isinstance(problem, str) and problem for problem in event.problems)
    assert event.event_name == env.get("GITHUB_EVENT_NAME", "")
    assert event.default_branch is None or (
        isinstance(event.default_branch, str) and event.default_branch
    )
    assert (event.default_branch is None) == (event.default_branch_source is None)
    assert event.is_fork in (True, False, None)
