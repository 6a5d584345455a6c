"""The decision as tables: first matching rule, narrowing, the floor, lifetimes, requests."""

from __future__ import annotations

import pytest

from nix_job.exchange.decide import (
    ExchangeRequest,
    Grant,
    Letter,
    decide,
    lookup,
    parse_request,
    pattern_matches,
)
from nix_job.exchange.errors import Refusal, Refused
from nix_job.exchange.identity import Identity, read_identity
from nix_job.exchange.policy import Policy
from nix_job.exchange.policy_file import parse_policy
from tests.exchange.claims import GITHUB, GITLAB, github_claims, gitlab_claims

POLICY = """
[service]
max_lifetime = 1800

[issuers.github]
kind = "github"
url = "https://token.actions.githubusercontent.com"
audience = "a"

[issuers.gitlab]
kind = "gitlab"
url = "https://gitlab.com"
audience = "a"

[[rules]]
name = "publish"
issuer = "github"
max_lifetime = 1200
caches = { "main" = ["pull", "push"], "team-*" = ["pull"] }
[rules.match]
repository_id = "4242"
ref = "refs/heads/main"
event_name = ["push", "schedule", "workflow_dispatch"]

[[rules]]
name = "pull"
issuer = "github"
max_lifetime = 600
caches = { "main" = ["pull"] }
[rules.match]
repository_id = "4242"

[[rules]]
name = "permissive"
issuer = "github"
caches = { "solo" = ["push"], "*" = ["pull"], "other" = ["pull", "push"] }
[rules.match]
repository_id = "777"

[[rules]]
name = "gl-publish"
issuer = "gitlab"
caches = { "main" = ["pull", "push"] }
[rules.match]
project_id = "20"
ref = "main"
ref_protected = true
pipeline_source = ["push", "web", "api", "schedule"]
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return parse_policy(POLICY, source="p.toml")


def gh(**over: object) -> Identity:
    return read_identity(GITHUB, github_claims(**over))


def gl(**over: object) -> Identity:
    return read_identity(GITLAB, gitlab_claims(**over))


def grant_of(result: Grant | Refusal) -> Grant:
    assert isinstance(result, Grant), result
    return result


def refusal_of(result: Grant | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def rw(*letters: Letter) -> frozenset[Letter]:
    return frozenset(letters)


GRANTED = [
    pytest.param(
        gh(), ExchangeRequest(), ("publish", {"main": "rw", "team-*": "r"}, 1200), id="main-push"
    ),
    pytest.param(
        gh(event_name="schedule"),
        ExchangeRequest(),
        ("publish", {"main": "rw", "team-*": "r"}, 1200),
        id="main-schedule",
    ),
    pytest.param(
        gh(ref="refs/heads/dev"),
        ExchangeRequest(),
        ("pull", {"main": "r"}, 600),
        id="other-branch-falls-through",
    ),
    pytest.param(
        gh(event_name="release"),
        ExchangeRequest(),
        ("pull", {"main": "r"}, 600),
        id="other-event-falls-through",
    ),
    pytest.param(
        gh(), ExchangeRequest(cache="main"), ("publish", {"main": "rw"}, 1200), id="narrowed-exact"
    ),
    pytest.param(
        gh(),
        ExchangeRequest(cache="team-a"),
        ("publish", {"team-a": "r"}, 1200),
        id="narrowed-pattern",
    ),
    pytest.param(
        gh(),
        ExchangeRequest(lifetime=300),
        ("publish", {"main": "rw", "team-*": "r"}, 300),
        id="shorter-lifetime",
    ),
    pytest.param(
        gh(),
        ExchangeRequest(lifetime=3600),
        ("publish", {"main": "rw", "team-*": "r"}, 1200),
        id="longer-lifetime-capped",
    ),
    pytest.param(
        gl(), ExchangeRequest(), ("gl-publish", {"main": "rw"}, 1800), id="gitlab-protected-main"
    ),
]


@pytest.mark.parametrize(("identity", "request_", "expected"), GRANTED)
def test_granted(
    policy: Policy,
    identity: Identity,
    request_: ExchangeRequest,
    expected: tuple[str, dict[str, str], int],
) -> None:
    rule, caches, lifetime = expected
    grant = grant_of(decide(policy, identity, request_))
    assert grant.rule == rule
    assert grant.summary == caches
    assert grant.lifetime == lifetime
    assert grant.floor is None


REFUSED = [
    pytest.param(
        gh(repository_id="1"),
        ExchangeRequest(),
        "no_matching_rule",
        "repository_id='1'",
        id="unknown-repository",
    ),
    pytest.param(
        gl(ref_protected="false"),
        ExchangeRequest(),
        "no_matching_rule",
        "ref_protected='false'",
        id="gitlab-unprotected",
    ),
    pytest.param(
        gl(pipeline_source="trigger"),
        ExchangeRequest(),
        "no_matching_rule",
        "pipeline_source='trigger'",
        id="gitlab-trigger",
    ),
    pytest.param(
        gl(project_id="4242"),
        ExchangeRequest(),
        "no_matching_rule",
        "issuer 'gitlab'",
        id="other-issuer-same-id",
    ),
    pytest.param(
        gh(),
        ExchangeRequest(cache="elsewhere"),
        "cache_not_granted",
        "grants nothing on cache 'elsewhere'",
        id="cache-outside-rule",
    ),
]


@pytest.mark.parametrize(("identity", "request_", "code", "text"), REFUSED)
def test_refused(
    policy: Policy, identity: Identity, request_: ExchangeRequest, code: str, text: str
) -> None:
    refusal = refusal_of(decide(policy, identity, request_))
    assert refusal.code == code
    assert refusal.status == 403
    assert text in refusal.message


# The hard floor, under a rule that grants push to every event of repository 777.
FLOOR = [
    pytest.param(
        gh(repository_id="777", event_name="pull_request", ref="refs/pull/1/merge"),
        ExchangeRequest(cache="other"),
        {"other": "r"},
        id="pull_request",
    ),
    pytest.param(
        gh(repository_id="777", event_name="pull_request_target"),
        ExchangeRequest(cache="other"),
        {"other": "r"},
        id="pull_request_target",
    ),
    pytest.param(
        gh(repository_id="777", event_name="issue_comment"),
        ExchangeRequest(cache="other"),
        {"other": "r"},
        id="issue_comment",
    ),
    pytest.param(
        gh(repository_id="777", event_name="workflow_run"),
        ExchangeRequest(cache="other"),
        {"other": "r"},
        id="workflow_run",
    ),
    pytest.param(
        gh(repository_id="777", event_name="merge_group"),
        ExchangeRequest(cache="other"),
        {"other": "r"},
        id="merge_group",
    ),
    pytest.param(
        gh(repository_id="777", event_name="push", ref="refs/pull/1/head"),
        ExchangeRequest(cache="other"),
        {"other": "r"},
        id="pull-ref",
    ),
    pytest.param(
        gh(repository_id="777", event_name="pull_request"),
        ExchangeRequest(),
        {"*": "r", "other": "r"},
        id="whole-grant",
    ),
]


@pytest.mark.parametrize(("identity", "request_", "caches"), FLOOR)
def test_pull_request_never_gets_push(
    policy: Policy, identity: Identity, request_: ExchangeRequest, caches: dict[str, str]
) -> None:
    grant = grant_of(decide(policy, identity, request_))
    assert grant.rule == "permissive"
    assert grant.summary == caches
    assert all("w" not in letters for _, letters in grant.caches)
    assert grant.floor is not None
    assert grant.floor.startswith("push removed: ")


def test_floor_keeps_an_emptied_exact_entry_so_it_still_shadows_patterns(policy: Policy) -> None:
    """`solo` is push-only; without its (now empty) entry, `*` would give a PR pull on it."""
    grant = grant_of(
        decide(policy, gh(repository_id="777", event_name="pull_request"), ExchangeRequest())
    )
    assert grant.caches[0] == ("solo", frozenset())
    assert lookup(grant.caches, "solo") == frozenset()
    assert lookup(grant.caches, "anything") == rw("r")


def test_floor_refuses_a_push_only_grant(policy: Policy) -> None:
    identity = gh(repository_id="777", event_name="pull_request")
    refusal = refusal_of(decide(policy, identity, ExchangeRequest(cache="solo")))
    assert refusal.code == "pull_request_cannot_push"
    assert "rule 'permissive' grants only push" in refusal.message
    assert "event_name 'pull_request'" in refusal.message


def test_gitlab_merge_request_under_permissive_rule(policy: Policy) -> None:
    text = POLICY.replace('ref = "main"\nref_protected = true\n', "").replace(
        'pipeline_source = ["push", "web", "api", "schedule"]\n', ""
    )
    permissive = parse_policy(text, source="p.toml")
    grant = grant_of(
        decide(permissive, gl(pipeline_source="merge_request_event"), ExchangeRequest())
    )
    assert grant.summary == {"main": "r"}
    assert (
        grant.floor
        == "push removed: pipeline_source 'merge_request_event' can run merge-request code"
    )


def test_first_matching_rule_wins_even_if_a_later_one_grants_more() -> None:
    text = POLICY.replace('name = "publish"', 'name = "publish-late"')
    # Move the broad pull rule first: main pushes now get pull only.
    head, rest = text.split("[[rules]]", 1)
    publish, pull, tail = rest.split("[[rules]]", 2)
    reordered = parse_policy(
        head + "[[rules]]" + pull + "[[rules]]" + publish + "[[rules]]" + tail, source="p.toml"
    )
    grant = grant_of(decide(reordered, gh(), ExchangeRequest()))
    assert grant.rule == "pull"
    assert grant.summary == {"main": "r"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"", ExchangeRequest(), id="empty"),
        pytest.param(b"  \n", ExchangeRequest(), id="blank"),
        pytest.param(b"{}", ExchangeRequest(), id="empty-object"),
        pytest.param(b'{"cache": "main"}', ExchangeRequest(cache="main"), id="cache"),
        pytest.param(
            b'{"cache": null, "lifetime": 60}', ExchangeRequest(lifetime=60), id="lifetime"
        ),
    ],
)
def test_parse_request(body: bytes, expected: ExchangeRequest) -> None:
    assert parse_request(body) == expected


@pytest.mark.parametrize(
    ("body", "text"),
    [
        pytest.param(b"cache=main", "not JSON", id="form"),
        pytest.param(b"\xff", "not JSON", id="not-utf8"),
        pytest.param(b'["main"]', "must be a JSON object", id="list"),
        pytest.param(
            b'{"caches": ["main"]}', "unknown request field(s) 'caches'", id="unknown-field"
        ),
        pytest.param(b'{"cache": "team-*"}', "one Attic cache name", id="pattern"),
        pytest.param(b'{"cache": 7}', "one Attic cache name", id="cache-number"),
        pytest.param(b'{"lifetime": "60"}', "`lifetime` must be an integer", id="lifetime-text"),
        pytest.param(b'{"lifetime": true}', "`lifetime` must be an integer", id="lifetime-bool"),
        pytest.param(b'{"lifetime": 7200}', "from 60 to 3600", id="lifetime-too-long"),
        pytest.param(b'{"lifetime": 5}', "from 60 to 3600", id="lifetime-too-short"),
    ],
)
def test_bad_request_bodies(body: bytes, text: str) -> None:
    with pytest.raises(Refused) as caught:
        parse_request(body)
    assert caught.value.refusal.code == "bad_request"
    assert caught.value.refusal.status == 400
    assert text in caught.value.refusal.message


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("main", "main", True),
        ("main", "main2", False),
        ("team-*", "team-a", True),
        ("team-*", "team-", True),
        ("team-*", "teamx", False),
        ("*", "anything", True),
        ("a*b", "axxb", True),
        ("a+b", "a+b", True),
        ("a+b", "aab", False),
    ],
)
def test_pattern_matches(pattern: str, name: str, matches: bool) -> None:
    assert pattern_matches(pattern, name) is matches


def test_lookup_exact_wins_then_first_pattern() -> None:
    entries = (("*", rw("r")), ("team-*", rw("r", "w")), ("team-a", rw("w")))
    assert lookup(entries, "team-a") == rw("w")
    assert lookup(entries, "team-b") == rw("r")
    assert lookup((), "x") == frozenset()
