"""The policy file: good files parse to what they say; every bad one names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nix_job.exchange.errors import PolicyError
from nix_job.exchange.policy import HARD_MAX_LIFETIME, check_url
from nix_job.exchange.policy_file import parse_policy

REPO = Path(__file__).resolve().parents[2]

ISSUER = """
[issuers.gh]
kind = "github"
url = "https://token.actions.githubusercontent.com"
audience = "https://attic.example.com"
"""
RULE = """
[[rules]]
name = "r"
issuer = "gh"
caches = { "main" = ["pull"] }
[rules.match]
repository_id = "1"
"""
GITLAB = """
[issuers.gl]
kind = "gitlab"
url = "https://gitlab.example.com"
audience = "https://attic.example.com"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="p.toml")
    assert caught.value.message.startswith("p.toml: ")
    return caught.value.problems


def test_example_policy_parses() -> None:
    text = (REPO / "docs" / "examples" / "policy.toml").read_text()
    policy = parse_policy(text, source="policy.toml")
    assert [r.name for r in policy.rules] == [
        "octo-repo-publish",
        "octo-repo-pull",
        "gitlab-project-publish",
        "gitlab-project-pull",
    ]
    publish = policy.rules[0]
    assert dict(publish.match)["event_name"] == {"push", "schedule", "workflow_dispatch"}
    assert publish.caches == (("octo", frozenset({"pull", "push"})),)
    gitlab = policy.rules[2]
    assert dict(gitlab.match)["ref_protected"] == {"true"}
    assert policy.service.algorithm == "HS256"
    assert policy.service.secret_file is not None
    assert policy.warnings == ()


def test_kubernetes_example_policy_parses() -> None:
    documents = list(
        yaml.safe_load_all((REPO / "docs" / "examples" / "kubernetes.yaml").read_text())
    )
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    policy = parse_policy(config_map["data"]["token-exchange.toml"], source="kubernetes.yaml")
    assert [r.name for r in policy.rules] == ["octo-repo-publish", "octo-repo-pull"]
    assert policy.service.algorithm == "HS256"  # the secret comes from a file there
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--secret-file=/run/secrets/attic/attic-secret" in args


def test_minimal_policy_takes_defaults() -> None:
    policy = parse_policy(ISSUER + RULE, source="p.toml")
    assert policy.service.max_lifetime == HARD_MAX_LIFETIME
    assert policy.service.leeway == 30
    assert policy.service.algorithm is None
    assert policy.service.token_audiences == ()
    assert policy.rate_limit.burst == 20
    (issuer,) = policy.issuers
    assert (issuer.name, issuer.kind, issuer.audience) == (
        "gh",
        "github",
        "https://attic.example.com",
    )
    (rule,) = policy.rules
    assert rule.max_lifetime == HARD_MAX_LIFETIME
    assert rule.match == (("repository_id", frozenset({"1"})),)


def test_order_of_rules_and_caches_is_kept() -> None:
    text = (
        ISSUER
        + """
[[rules]]
name = "b"
issuer = "gh"
max_lifetime = 120
caches = { "z-*" = ["push"], "a" = ["pull", "push"], "*" = ["pull"] }
[rules.match]
repository_owner_id = "9"
event_name = ["push", "schedule"]
"""
        + RULE
    )
    policy = parse_policy(text, source="p.toml")
    assert [r.name for r in policy.rules] == ["b", "r"]
    assert [k for k, _ in policy.rules[0].caches] == ["z-*", "a", "*"]
    assert policy.rules[0].max_lifetime == 120


def test_service_settings_are_read() -> None:
    text = (
        """
[service]
max_lifetime = 900
leeway = 5
algorithm = "RS256"
secret_file = "/run/credentials/x/attic"
token_issuer = "https://exchange.example.com"
token_audiences = ["https://attic.example.com"]
jwks_ttl = 600
"""
        + ISSUER
        + RULE
    )
    service = parse_policy(text, source="p.toml").service
    assert service.max_lifetime == 900
    assert service.leeway == 5
    assert service.algorithm == "RS256"
    assert service.secret_file == "/run/credentials/x/attic"
    assert service.token_issuer == "https://exchange.example.com"
    assert service.token_audiences == ("https://attic.example.com",)
    assert service.jwks_ttl == 600


def test_repository_name_without_id_warns() -> None:
    text = ISSUER + RULE.replace('repository_id = "1"', 'repository = "octo/repo"')
    policy = parse_policy(text, source="p.toml")
    assert len(policy.warnings) == 1
    assert "rules[0].match" in policy.warnings[0]
    assert "repository_id" in policy.warnings[0]


def test_gitlab_rule_with_boolean_ref_protected() -> None:
    text = (
        GITLAB
        + """
[[rules]]
name = "g"
issuer = "gl"
caches = { "main" = ["pull", "push"] }
[rules.match]
namespace_path = "group"
ref = "main"
ref_protected = [true, false]
"""
    )
    (rule,) = parse_policy(text, source="p.toml").rules
    assert dict(rule.match)["ref_protected"] == {"true", "false"}


BAD = [
    pytest.param("[issuers\n", "not valid TOML", id="not-toml"),
    pytest.param("colour = 1\n" + ISSUER + RULE, "colour: unknown key", id="unknown-top-key"),
    pytest.param(
        '[service]\nsecret = "c2VjcmV0"\n' + ISSUER + RULE,
        "service.secret: the signing secret never goes in the policy file",
        id="secret-in-policy",
    ),
    pytest.param(
        '[service]\nrs256_private_key = "x"\n' + ISSUER + RULE,
        "service.rs256_private_key: the signing secret never goes in the policy file",
        id="key-in-policy",
    ),
    pytest.param(
        "[service]\nport = 8080\n" + ISSUER + RULE,
        "service.port: unknown key",
        id="unknown-service-key",
    ),
    pytest.param(
        "[service]\nmax_lifetime = 7200\n" + ISSUER + RULE,
        "service.max_lifetime: 7200 is out of range; use 60 to 3600",
        id="lifetime-over-hard-cap",
    ),
    pytest.param(
        '[service]\nmax_lifetime = "1h"\n' + ISSUER + RULE,
        "service.max_lifetime: must be an integer number of seconds",
        id="lifetime-not-integer",
    ),
    pytest.param(
        "[service]\nleeway = 600\n" + ISSUER + RULE,
        "service.leeway: 600 is out of range",
        id="leeway-too-large",
    ),
    pytest.param(
        '[service]\nalgorithm = "ES256"\n' + ISSUER + RULE,
        "service.algorithm: 'ES256' is not one of HS256, RS256",
        id="algorithm-unknown",
    ),
    pytest.param(
        '[service]\nsecret_file = "attic.key"\n' + ISSUER + RULE,
        "service.secret_file: 'attic.key' must be an absolute path",
        id="secret-file-relative",
    ),
    pytest.param(
        '[service]\ntoken_audiences = "https://a"\n' + ISSUER + RULE,
        "service.token_audiences: must be a non-empty list",
        id="audiences-not-list",
    ),
    pytest.param(
        "[rate_limit]\nburst = 0\n" + ISSUER + RULE,
        "rate_limit.burst: 0 is out of range",
        id="burst-zero",
    ),
    pytest.param(
        "[rate_limit]\nper_hour = 5\n" + ISSUER + RULE,
        "rate_limit.per_hour: unknown key",
        id="rate-limit-unknown-key",
    ),
    pytest.param(RULE, "issuers: missing", id="no-issuers"),
    pytest.param(
        ISSUER.replace('"github"', '"jenkins"') + RULE,
        "issuers.gh.kind: 'jenkins' is not one of github, gitlab",
        id="issuer-kind-unknown",
    ),
    pytest.param(
        ISSUER.replace("https://token.actions", "http://token.actions") + RULE,
        "issuers.gh.url: 'http://token.actions.githubusercontent.com' must use https",
        id="issuer-http-not-loopback",
    ),
    pytest.param(
        ISSUER.replace("githubusercontent.com", "githubusercontent.com/") + RULE,
        "issuers.gh.url: drop the trailing '/'",
        id="issuer-trailing-slash",
    ),
    pytest.param(
        ISSUER.replace("githubusercontent.com", "githubusercontent.com?x=1") + RULE,
        "issuers.gh.url: 'https://token.actions.githubusercontent.com?x=1' must not have a query",
        id="issuer-query",
    ),
    pytest.param(
        ISSUER.replace('audience = "https://attic.example.com"\n', "") + RULE,
        "issuers.gh.audience: missing",
        id="issuer-no-audience",
    ),
    pytest.param(
        ISSUER + ISSUER.replace("issuers.gh", "issuers.gh2") + RULE,
        "issuers.gh2.url: same URL as issuers.gh",
        id="issuer-url-twice",
    ),
    pytest.param(ISSUER, "rules: missing", id="no-rules"),
    pytest.param(
        ISSUER + RULE.replace('name = "r"', 'name = "r"\ncache = "x"'),
        "rules[0].cache: unknown key",
        id="rule-unknown-key",
    ),
    pytest.param(
        ISSUER + RULE.replace('name = "r"\n', ""),
        "rules[0].name: missing",
        id="rule-no-name",
    ),
    pytest.param(
        ISSUER + RULE + RULE, "rules[1].name: 'r' is used by an earlier rule", id="dup-name"
    ),
    pytest.param(
        ISSUER + RULE.replace('issuer = "gh"', 'issuer = "gitlab"'),
        "rules[0].issuer: 'gitlab' is not an [issuers.NAME] (known: gh)",
        id="rule-unknown-issuer",
    ),
    pytest.param(
        ISSUER + RULE.replace('[rules.match]\nrepository_id = "1"\n', ""),
        "rules[0].match: missing or empty",
        id="rule-no-match",
    ),
    pytest.param(
        ISSUER + RULE.replace('repository_id = "1"', 'project_path = "g/p"'),
        "rules[0].match.project_path: not a github claim a rule can match",
        id="match-claim-of-other-ci",
    ),
    pytest.param(
        ISSUER + RULE.replace('repository_id = "1"', 'ref = "refs/heads/main"'),
        "rules[0].match: must pin whose jobs it trusts with at least one of repository",
        id="match-no-owner",
    ),
    pytest.param(
        ISSUER + RULE.replace('repository_id = "1"', "repository_id = 1"),
        "rules[0].match.repository_id: must be a non-empty string, not a number (1)",
        id="match-number-not-string",
    ),
    pytest.param(
        ISSUER + RULE.replace('repository_id = "1"', 'repository_id = "1"\nevent_name = []'),
        "rules[0].match.event_name: an empty list matches nothing",
        id="match-empty-list",
    ),
    pytest.param(
        ISSUER + RULE.replace('repository_id = "1"', 'repository_id = "1"\nref = "main"'),
        "rules[0].match.ref: 'main': GitHub's ref claim is fully qualified",
        id="github-ref-not-qualified",
    ),
    pytest.param(
        GITLAB
        + RULE.replace('issuer = "gh"', 'issuer = "gl"').replace(
            'repository_id = "1"', 'project_id = "1"\nref = "refs/heads/main"'
        ),
        "rules[0].match.ref: 'refs/heads/main': GitLab's ref claim is the bare branch",
        id="gitlab-ref-qualified",
    ),
    pytest.param(
        GITLAB
        + RULE.replace('issuer = "gh"', 'issuer = "gl"').replace(
            'repository_id = "1"', 'project_id = "1"\nref_protected = "true"'
        ),
        "rules[0].match.ref_protected: must be true or false (a TOML boolean)",
        id="gitlab-ref-protected-string",
    ),
    pytest.param(
        ISSUER + RULE.replace('caches = { "main" = ["pull"] }\n', ""),
        "rules[0].caches: missing or empty",
        id="rule-no-caches",
    ),
    pytest.param(
        ISSUER + RULE.replace('"main" = ["pull"]', '"team/main" = ["pull"]'),
        "rules[0].caches.team/main: not an Attic cache name or pattern",
        id="cache-bad-name",
    ),
    pytest.param(
        ISSUER + RULE.replace('["pull"]', '["read"]'),
        'rules[0].caches.main: must be ["pull"], ["push"] or ["pull", "push"]',
        id="cache-bad-permission",
    ),
    pytest.param(
        ISSUER + RULE.replace('["pull"]', '["pull", "pull"]'),
        "rules[0].caches.main: lists a permission twice",
        id="cache-permission-twice",
    ),
    pytest.param(
        "[service]\nmax_lifetime = 600\n"
        + ISSUER
        + RULE.replace('name = "r"', 'name = "r"\nmax_lifetime = 900'),
        "rules[0].max_lifetime: 900 is out of range; use 60 to 600",
        id="rule-lifetime-over-service-cap",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_policy_names_the_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "[service]\nmax_lifetime = 0\nleeway = -1\n"
        + ISSUER.replace('"github"', '"jenkins"')
        + RULE.replace('["pull"]', '["read"]')
    )
    found = problems(text)
    assert len(found) == 4, found
    assert [p.split(":", 1)[0] for p in found] == [
        "service.max_lifetime",
        "service.leeway",
        "issuers.gh.kind",
        "rules[0].caches.main",
    ]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        pytest.param("https://token.actions.githubusercontent.com", True, id="https"),
        pytest.param("https://gitlab.example.com:8443/gitlab", True, id="https-port-path"),
        pytest.param("http://127.0.0.1:8080", True, id="http-loopback-v4"),
        pytest.param("http://[::1]:8080", True, id="http-loopback-v6"),
        pytest.param("http://localhost:1", True, id="http-localhost"),
        pytest.param("http://10.0.0.1", False, id="http-private"),
        pytest.param("http://gitlab.example.com", False, id="http-remote"),
        pytest.param("ftp://example.com", False, id="other-scheme"),
        pytest.param("https://user:pw@example.com", False, id="credentials"),
        pytest.param("https://example.com#x", False, id="fragment"),
        pytest.param("https://", False, id="no-host"),
        pytest.param("https://example.com:99999", False, id="bad-port"),
    ],
)
def test_check_url(url: str, ok: bool) -> None:
    assert (check_url(url) is None) is ok
