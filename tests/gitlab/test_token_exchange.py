"""Secretless publishing under gitlab-ci-local (issue 21): the nix-job component with
``attic-token-exchange``, the job's ``id_tokens: NIX_JOB_ID_TOKEN`` as docs/gitlab.md writes it,
and no ``ATTIC_TOKEN`` anywhere. A protected default-branch push publishes with the exchanged
token; a merge request reads the private cache, sends no write request, and its command finds
no push-capable token in its environment, the netrc or any ancestor's ``/proc/<pid>/environ``.
No form of any token (ID or exchanged) is in the job log, gitlab-ci-local's output, the
artifacts (the summary, the dotenv report) or anywhere else under the project.

What is real: gitlab-ci-local 4.73.0 running the component (tests/gitlab/local.py), the
``nix-job`` of this checkout, an isolated offline Nix, the token-exchange app (in-process, on
127.0.0.1, signing with the Attic double's HS256 secret), the fake OIDC issuer's RS256 keys and
JWKS over HTTP, and the Attic double verifying every token.

What is simulated, and how:

- **The ID token.** gitlab-ci-local 4.73.0 does not mint ID tokens: ``id_tokens`` appears only
  in its JSON schema (``src/schema.json``: an object of ``{aud: string | [string]}``, ``aud``
  required), which it validates the configuration against; ``src/job.ts`` never reads it, so the
  job gets no token from it. GitLab mints one JWT per declared variable with the declared
  ``aud`` and gives it to that job as a masked job variable (``Ci::Build#id_tokens_variables``,
  ``Gitlab::Ci::JwtV2``). ``issue_id_tokens`` does that part: it reads the ``id_tokens`` the
  pipeline declares on the job, and the fake issuer signs, for each variable, a GitLab-shaped
  token with that ``aud`` and the claims GitLab would give this pipeline
  (``pipeline_claims``: ``project_path`` and ``project_id`` as gitlab-ci-local names the
  project, ``ref`` the branch (a merge request's source branch, GitLab's ``source_ref``),
  ``ref_path`` ``refs/heads/<ref>``, ``ref_protected``, ``pipeline_source``, ``job_id`` and
  ``pipeline_id``). The job echoes its own ``CI_*`` variables and the test checks they equal
  the token's claims.
- **Its delivery.** The token reaches the job as ``--variable NIX_JOB_ID_TOKEN=<jwt>``: a job
  variable in the job shell's environment, as on GitLab. Unlike GitLab's, it would reach every
  job of the pipeline (these pipelines have only the component's job), it outranks every other
  variable, and it is on gitlab-ci-local's command line (an ancestor of the command; an ID
  token is not an Attic token, and docs/token-exchange.md says the job shell holds it anyway).
- **The pipeline.** Its kind comes from predefined variables, as in test_component.py (a
  protected default-branch push; a same-project merge request pipeline that is protected,
  ``protect_merge_request_pipelines``). ``CI_JOB_ID`` and ``CI_PIPELINE_ID`` are fixed so the
  token's ``job_id``/``pipeline_id`` and the job agree (gitlab-ci-local draws a random job id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import jwt
import pytest
import yaml

from nix_job.core.token_scope import can_push
from nix_job.exchange.app import DECISION_LOGGER, Deps, create_app
from nix_job.exchange.policy_file import parse_policy
from tests.attic_double import AtticDouble
from tests.e2e.test_exchange_client import JWT, free_port, tokens_seen
from tests.e2e.test_reliability_support import leaks_in_tree, secret_forms
from tests.e2e.test_security import ANCESTRY
from tests.exchange.issuer import FakeIssuer
from tests.exchange.support import HS256_SECRET, hs256_signer, serve
from tests.gitlab.component import (
    CACHE,
    JOB,
    PROTECTED_PUSH,
    create_project,
    dotenv,
    nix_job_shim,
    pipeline_yml,
    runner_env,
)
from tests.gitlab.local import JobResult, PipelineResult, require_gitlab_ci_local
from tests.gitlab.test_component import MERGE_REQUEST, NOT_A_BRANCH, cached_path
from tests.nixenv import NixEnv, require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

ID_TOKEN = "NIX_JOB_ID_TOKEN"  # what the front end reads (nix_job/frontends/gitlab/frontend.py)
# The project as gitlab-ci-local sees it: CI_PROJECT_PATH from the origin remote
# (tests/gitlab/local.py, REMOTE_URL), CI_PROJECT_ID fixed at "1217" (src/predefined-variables.ts).
PROJECT_PATH = "acme/app"
PROJECT_ID = "1217"
LEEWAY = 30  # the policy's clock-skew allowance, seconds

PUSH = {
    **PROTECTED_PUSH,
    "CI_COMMIT_BRANCH": "main",
    "CI_COMMIT_REF_NAME": "main",
    "CI_JOB_ID": "4711",
    "CI_PIPELINE_ID": "1001",
}
MR = {
    **MERGE_REQUEST,
    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature",
    "CI_JOB_ID": "4712",
    "CI_PIPELINE_ID": "1002",
}

# The policy of docs/examples/policy.toml for this project: publish from the protected default
# branch, pull for everything else of the project.
DOCUMENTED_RULES = f"""
[[rules]]
name = "acme-publish"
issuer = "gitlab"
caches = {{ "{CACHE}" = ["pull", "push"] }}
[rules.match]
project_path = "{PROJECT_PATH}"
project_id = "{PROJECT_ID}"
ref_type = "branch"
ref = "main"
ref_protected = true
pipeline_source = ["push", "web", "api", "schedule"]

[[rules]]
name = "acme-pull"
issuer = "gitlab"
caches = {{ "{CACHE}" = ["pull"] }}
[rules.match]
project_id = "{PROJECT_ID}"
"""
# A careless policy: push for every pipeline of the project. Only the exchange's floor and
# nix-job's gate stand between a merge request and the cache.
PUSH_FOR_EVERY_PIPELINE = f"""
[[rules]]
name = "acme-everything"
issuer = "gitlab"
caches = {{ "{CACHE}" = ["pull", "push"] }}
[rules.match]
project_id = "{PROJECT_ID}"
"""

# Printed by the command: the job's own variables, to compare with the ID token's claims.
SHOW_PIPELINE = (
    'echo "pipeline: $CI_PROJECT_PATH $CI_PROJECT_ID '
    "${CI_MERGE_REQUEST_SOURCE_BRANCH_NAME:-$CI_COMMIT_BRANCH} $CI_COMMIT_REF_PROTECTED "
    '$CI_PIPELINE_SOURCE $CI_JOB_ID $CI_PIPELINE_ID"'
)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer(name="gitlab") as server:
        yield server


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nix_job_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble(token_secret=HS256_SECRET) as server:
        server.create_cache(CACHE)  # private: reads need a token
        yield server


@dataclasses.dataclass(frozen=True)
class Bed:
    root: Path
    nix: NixEnv
    double: AtticDouble
    shim: Path
    issuer: FakeIssuer


@pytest.fixture
def bed(
    tmp_path: Path,
    double: AtticDouble,
    shim: Path,
    issuer: FakeIssuer,
    caplog: pytest.LogCaptureFixture,
) -> Bed:
    require_gitlab_ci_local()
    require_nix()
    caplog.set_level(logging.INFO, logger=DECISION_LOGGER)
    return Bed(
        root=tmp_path, nix=NixEnv.create(tmp_path / "nix"), double=double, shim=shim, issuer=issuer
    )


@contextlib.contextmanager
def exchange(issuer: FakeIssuer, rules: str) -> Iterator[str]:
    """The token-exchange app on 127.0.0.1 with ``rules``; yields its origin, which is the
    audience its policy expects (nix-job's default, docs/token-exchange.md)."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    policy = f"""
[service]
leeway = {LEEWAY}

[issuers.gitlab]
kind = "gitlab"
url = "{issuer.url}"
audience = "{origin}"
{rules}"""
    app = create_app(Deps(policy=parse_policy(policy, source="test"), signer=hs256_signer()))
    with serve(app, port=port) as url:
        assert url == origin
        yield origin


# --- the simulated GitLab ------------------------------------------------------------------------


def exchange_pipeline(origin: str, attic_server: str, command: str) -> str:
    """docs/gitlab.md's pipeline ("No stored token at all"): the component with
    ``attic-token-exchange`` and ``push-cache``, and ``id_tokens`` on the component's job (GitLab
    and gitlab-ci-local merge a job of the same name into the included one); the audience is
    the exchange's origin, nix-job's default. Included locally, with an empty image and
    ``source`` (the nix-job on PATH), as in test_component.py."""
    return pipeline_yml(
        {
            "source": "",
            "command": command,
            "attic-server": attic_server,
            "attic-cache": CACHE,
            "attic-token-exchange": f"{origin}/",
            "push-cache": True,
        },
        more={JOB: {"id_tokens": {ID_TOKEN: {"aud": origin}}}},
    )


def pipeline_ref(pipeline: Mapping[str, str]) -> str:
    """The ``ref`` claim: the pipeline's branch; a merge request's source branch (GitLab's
    ``Ci::Pipeline#source_ref``)."""
    if pipeline["CI_PIPELINE_SOURCE"] == "merge_request_event":
        return pipeline["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"]
    return pipeline["CI_COMMIT_BRANCH"]


def pipeline_claims(
    issuer: FakeIssuer, audience: str, pipeline: Mapping[str, str]
) -> dict[str, object]:
    """The claims GitLab's ID token has for a job of ``pipeline`` (``Gitlab::Ci::JwtV2``;
    ``ref_path`` is ``refs/heads/<ref>`` for branch and merge request pipelines alike)."""
    return issuer.gitlab_claims(
        audience=audience,
        project_path=PROJECT_PATH,
        project_id=PROJECT_ID,
        ref=pipeline_ref(pipeline),
        ref_protected=pipeline["CI_COMMIT_REF_PROTECTED"],
        pipeline_source=pipeline["CI_PIPELINE_SOURCE"],
        job_id=pipeline["CI_JOB_ID"],
        pipeline_id=pipeline["CI_PIPELINE_ID"],
    )


def issue_id_tokens(
    ci_yml: str, job: str, issuer: FakeIssuer, pipeline: Mapping[str, str]
) -> dict[str, str]:
    """What GitLab does with the job's ``id_tokens:``: one signed token per declared variable,
    with the declared ``aud`` (variable name → token)."""
    declared = yaml.safe_load(ci_yml)[job]["id_tokens"]
    tokens: dict[str, str] = {}
    for name, spec in declared.items():
        audience = spec["aud"]
        assert isinstance(audience, str), "only a single aud is simulated"
        assert "$" not in audience, "only a literal aud is simulated (GitLab expands variables)"
        tokens[name] = issuer.sign(pipeline_claims(issuer, audience, pipeline))
    return tokens


def subject(pipeline: Mapping[str, str]) -> str:
    """The exchanged token's ``sub`` for this pipeline's job (docs/token-exchange.md)."""
    ref = pipeline_ref(pipeline)
    return f"gitlab:{PROJECT_PATH}:refs/heads/{ref}:job/{pipeline['CI_JOB_ID']}"


def ancestors(text: str) -> list[tuple[str, str]]:
    """ANCESTRY's file as (pid, what was read: environ and command line), nearest first."""
    parts = re.split(r"^== pid (\d+)$", text, flags=re.MULTILINE)[1:]
    return list(zip(parts[::2], parts[1::2], strict=True))


def assert_job_matches_its_id_token(job: JobResult, id_token: str) -> None:
    """The variables the job saw are the claims its ID token carries."""
    claims = jwt.decode(id_token, options={"verify_signature": False})
    keys = ("project_path", "project_id", "ref", "ref_protected", "pipeline_source")
    expected = " ".join([*(str(claims[k]) for k in keys), claims["job_id"], claims["pipeline_id"]])
    assert f"pipeline: {expected}" in job.log.splitlines(), job.log


def assert_exchanged(tokens: set[str], sub: str) -> None:
    """Every token the double saw is one the exchange minted for this job, short-lived."""
    assert tokens, "the double saw no token at all"
    for token in tokens:
        claims = jwt.decode(token, HS256_SECRET, algorithms=["HS256"])
        assert claims["sub"] == sub, claims
        # At most an hour (the hard maximum of a rule's lifetime) plus the policy's leeway.
        assert claims["exp"] - claims["iat"] <= 3600 + LEEWAY, claims


def leaks(tokens: list[str], result: PipelineResult, *roots: Path) -> list[str]:
    """Where any form of any of ``tokens`` shows up: gitlab-ci-local's output (with the job's
    log), or a file under ``roots`` (the project: .gitlab-ci-local's logs, artifacts with the
    summary and the dotenv report, build directories, cache; the runner's HOME and TMPDIR)."""
    found: list[str] = []
    for index, token in enumerate(tokens):
        forms = secret_forms(token)
        found += [
            f"token {index}: output: {k}" for k, v in forms.items() if v.decode() in result.output
        ]
        for root in roots:
            found += [f"token {index}: {leak}" for leak in leaks_in_tree(root, forms)]
    return found


def decisions(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The exchange's decision lines (JSON, one per exchange)."""
    lines = [r.getMessage() for r in caplog.records if r.name == DECISION_LOGGER]
    return [json.loads(line) for line in lines]


# --- publishing ----------------------------------------------------------------------------------


def test_a_protected_default_branch_push_publishes_through_the_exchange_without_attic_token(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    """A protected default-branch push pipeline with no ATTIC_TOKEN anywhere: the job trades
    its ID token (issued by the test, see the module docstring) under docs/examples/policy.toml's
    rules for this project, and publishes its outputs with the exchanged token alone."""
    tmp_path, nix, double, issuer = bed.root, bed.nix, bed.double, bed.issuer
    drv = write_derivations(tmp_path / "src", count=2, chain=True)
    outputs = drv.out_paths(nix)

    with exchange(issuer, DOCUMENTED_RULES) as origin:
        ci_yml = exchange_pipeline(
            origin, double.url, f"{SHOW_PIPELINE}\nnix-build {drv.file} -A d1"
        )
        project = create_project(tmp_path, ci_yml)
        id_tokens = issue_id_tokens(ci_yml, JOB, issuer, PUSH)
        assert list(id_tokens) == [ID_TOKEN]
        # No ATTIC_TOKEN: not a variable, not in the runner's environment.
        env = runner_env(project, nix, path_first=bed.shim)
        assert not [name for name in (*PUSH, *env) if "ATTIC_TOKEN" in name]
        result = project.run(variables={**PUSH, **id_tokens}, env=env)

    job = result.job(JOB)
    assert (job.status, result.returncode) == ("passed", 0), result.output[-6000:]
    assert_job_matches_its_id_token(job, id_tokens[ID_TOKEN])
    report = dotenv(job)
    assert report["NIX_JOB_CACHE_PUSH"] == "true", report
    summary = job.artifact("nix-job-summary.md").read_text()
    assert f"rule `acme-publish` granted pull and push on `{CACHE}`" in summary, summary
    # The double holds each output, with the NAR Nix itself dumps (it checked hash and size).
    for path in outputs.values():
        stored = double.get_object(CACHE, path)
        assert stored is not None, f"{path} was not published:\n{job.log}"
        assert stored.nar == nix.dump(path)
    uploads = double.upload_requests()
    assert uploads, job.log
    assert all(r.status == 200 for r in uploads), uploads
    # Every request with a token (uploads; Nix's reads through the netrc) carried the exchanged
    # token: its subject is this job's, and it is the only kind of token the double saw.
    assert {r.subject for r in uploads} == {subject(PUSH)}
    assert {r.subject for r in double.requests if r.auth_scheme} == {subject(PUSH)}
    minted = tokens_seen(double)
    assert_exchanged(minted, subject(PUSH))
    (decision,) = decisions(caplog)
    assert (decision["rule"], decision["caches"]) == ("acme-publish", {CACHE: "rw"}), decision
    tokens = [*id_tokens.values(), *minted]
    assert leaks(tokens, result, tmp_path) == []
    assert not [t for t in tokens if t in json.dumps(decisions(caplog))]


# --- merge requests ------------------------------------------------------------------------------


# What the command reads, into ``seen``: its environment, the netrc Nix is told to use (and any
# file naming a password under TMPDIR and HOME), and every ancestor's environ and command line.
READ_EVERYTHING = r"""
env > "$PWD/command-env"
netrc=$(nix show-config | sed -n 's/^netrc-file = //p') || true
{ cat "$netrc"; grep -rhs password "$TMPDIR" "$HOME"; } > "$PWD/netrc-seen" || true
"""


@pytest.mark.parametrize(
    ("rules", "rule", "floor"),
    [
        pytest.param(DOCUMENTED_RULES, "acme-pull", False, id="documented-policy"),
        # The exchange's floor takes push away; nix-job's gate would not publish anyway.
        pytest.param(PUSH_FOR_EVERY_PIPELINE, "acme-everything", True, id="careless-policy"),
    ],
)
def test_a_merge_request_reads_through_the_exchange_and_cannot_publish(
    bed: Bed, caplog: pytest.LogCaptureFixture, rules: str, rule: str, floor: bool
) -> None:
    """A protected same-project merge request pipeline with no ATTIC_TOKEN: the exchange grants
    pull only (the documented rules: its pull rule; a careless rule granting push to every
    pipeline: the floor takes push away), the job reads the private cache, sends no write
    request, and its command finds no push-capable token where it can look. Its own ID token
    is in the job shell's environment and on gitlab-ci-local's command line (ancestors of the
    command; see the module docstring), never in nix-job's or the command's environment."""
    tmp_path, nix, double, issuer = bed.root, bed.nix, bed.double, bed.issuer
    path = cached_path(nix, double, tmp_path / "src")
    built = write_derivations(tmp_path / "new", count=1)  # something new it could publish
    seen = tmp_path / "seen"  # outside the project: what the command read holds its own token
    seen.mkdir()
    command = "\n".join(
        [
            SHOW_PIPELINE,
            f'cd "{seen}"',
            ANCESTRY,
            READ_EVERYTHING,
            'cd "$CI_PROJECT_DIR"',
            f"nix-store --realise {path}",
            f"nix-build {built.file}",
        ]
    )

    with exchange(issuer, rules) as origin:
        ci_yml = exchange_pipeline(origin, double.url, command)
        project = create_project(tmp_path, ci_yml)
        id_tokens = issue_id_tokens(ci_yml, JOB, issuer, MR)
        result = project.run(
            variables={**MR, **id_tokens},
            unset=NOT_A_BRANCH,
            env=runner_env(project, nix, path_first=bed.shim),
        )

    job = result.job(JOB)
    assert (job.status, result.returncode) == ("passed", 0), result.output[-6000:]
    assert_job_matches_its_id_token(job, id_tokens[ID_TOKEN])
    report = dotenv(job)
    assert report["NIX_JOB_CACHE_PUSH"] == "false", report
    assert "this is a merge request !7 pipeline" in report["NIX_JOB_CACHE_PUSH_REASON"]
    assert double.write_requests() == [], "a merge request sent a write request"
    assert f"copying path '{path}'" in job.log, "the private cache was not read"
    summary = job.artifact("nix-job-summary.md").read_text()
    assert f"rule `{rule}` granted pull on `{CACHE}`" in summary, summary
    assert {r.subject for r in double.requests if r.auth_scheme} == {subject(MR)}
    minted = tokens_seen(double)
    assert_exchanged(minted, subject(MR))
    (decision,) = decisions(caplog)
    assert (decision["rule"], decision["caches"]) == (rule, {CACHE: "r"}), decision
    assert ("floor" in decision) == floor, decision  # the careless rule would have given push

    # What the merge request's command could read: its environment, the netrc, its ancestors.
    read = {name: (seen / name).read_bytes() for name in ("command-env", "netrc-seen", "ancestry")}
    in_netrc = {m.decode() for m in JWT.findall(read["netrc-seen"])}
    assert in_netrc, "the merge request read the private cache without a netrc token?"
    assert in_netrc <= minted
    everything = b"\n".join(read.values())
    found = {m.decode() for m in JWT.findall(everything)}
    assert not [t for t in found if can_push(t, CACHE)], "a push-capable token was in reach"
    assert id_tokens[ID_TOKEN].encode() not in read["command-env"]
    assert ID_TOKEN.encode() not in read["command-env"]
    # nix-job (the command's parent) no longer holds the ID token in its environ; the job's
    # shell and gitlab-ci-local, further up, do (see the module docstring).
    chain = ancestors(read["ancestry"].decode(errors="replace"))
    assert len(chain) >= 3, [pid for pid, _ in chain]
    (nix_job_pid, nix_job_seen), *further = chain
    assert "runtime/start.py" in nix_job_seen, "the command's parent is not nix-job"
    assert f"== readable {nix_job_pid}" in nix_job_seen, "nix-job's environment was not read"
    assert id_tokens[ID_TOKEN] not in nix_job_seen
    assert f"{ID_TOKEN}=" not in nix_job_seen
    assert any("gitlab-ci-local" in seen_there for _, seen_there in further), "no runner read"

    tokens = [*id_tokens.values(), *minted]
    assert leaks(tokens, result, project.root, project.home, nix.root) == []
    assert not [t for t in tokens if t in json.dumps(decisions(caplog))]
