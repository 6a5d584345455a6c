"""Every gate names the token exchange's reason when it left the run without a push token, and
still puts the CI's own facts first (a pull request is refused as a pull request)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from nix_job.core.decision import GateInputs, PublishDecision
from nix_job.frontends.generic import decide_generic
from nix_job.frontends.github.event import read_event
from nix_job.frontends.github.gate import decide_publish as github_gate
from nix_job.frontends.gitlab.gate import decide_publish as gitlab_gate
from nix_job.frontends.gitlab.gate import read_context

MISSING = "the token exchange refused (no_matching_rule)"
NO_TOKEN = GateInputs(
    push_cache=True, token_present=False, cache_attached=True, token_missing=MISSING
)
GITLAB_PUSH = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "push",
    "CI_DEFAULT_BRANCH": "main",
    "CI_COMMIT_BRANCH": "main",
    "CI_COMMIT_REF_NAME": "main",
    "CI_COMMIT_REF_PROTECTED": "true",
}


def github(event: str, ref: str, gate: GateInputs) -> PublishDecision:
    env = {"GITHUB_EVENT_NAME": event, "GITHUB_REF": ref, "GITHUB_REPOSITORY": "acme/app"}
    payload = {"repository": {"full_name": "acme/app", "default_branch": "main"}}
    return github_gate(event=read_event(env, json.dumps(payload).encode()), gate=gate)


@pytest.mark.parametrize(
    "decide",
    [
        pytest.param(lambda g: github("push", "refs/heads/main", g), id="github"),
        pytest.param(lambda g: gitlab_gate(read_context(GITLAB_PUSH), g), id="gitlab"),
        pytest.param(lambda g: decide_generic(publish=True, gate=g), id="generic"),
    ],
)
def test_a_trusted_run_without_a_push_token_says_what_the_exchange_did(
    decide: Callable[[GateInputs], PublishDecision],
) -> None:
    decision = decide(NO_TOKEN)
    assert not decision.allowed
    assert decision.reason == f"{MISSING}, so this run cannot publish."
    assert "ATTIC_TOKEN" not in decision.reason
    assert MISSING in (decision.notice or "")


def test_a_pull_request_is_refused_as_one_whatever_the_exchange_said() -> None:
    decision = github("pull_request", "refs/pull/7/merge", NO_TOKEN)
    assert "never publish" in decision.reason
    assert MISSING not in decision.reason
