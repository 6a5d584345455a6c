"""Secretless publishing end to end: the real action.yml through the harness (which plays GitHub's
ID-token endpoint), the fake OIDC issuer, the token-exchange service (a real process, or
in-process with a lifetime of seconds), the Attic double sharing the service's HS256 secret, and
real Nix; then ``nix-job run`` under a GitLab-like environment.

- a default-branch push with no ATTIC_TOKEN anywhere publishes through the exchange;
- a pull request reads the private cache and cannot publish, and its command finds no
  push-capable token in its environment, the netrc or any ancestor's /proc/<pid>/environ;
- a build longer than the token's lifetime keeps uploading (renewed tokens), and a read after
  the first token expired still substitutes (the netrc was rewritten);
- no token, ID or minted, in any log of the service or the job.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from nix_job.core.token_scope import can_push
from nix_job.exchange.app import DECISION_LOGGER, Deps, create_app
from nix_job.exchange.policy import Policy
from nix_job.exchange.policy_file import parse_policy
from tests.actionrun import ROOT, dump, nix_process_env, run_nix_job
from tests.attic_double import AtticDouble
from tests.e2e.test_reliability_support import find_in_bytes, secret_forms
from tests.e2e.test_security import ANCESTRY
from tests.exchange.issuer import FakeIssuer
from tests.exchange.support import (
    AUDIENCE,
    HS256_SECRET,
    hs256_signer,
    policy_text,
    secret_env,
    serve,
)
from tests.harness import ActionResult
from tests.harness.oidc import IdTokenEndpoint
from tests.nixenv import NixEnv, require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

CACHE = "main"  # what tests/exchange/support.py's policy grants
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
PR_CLAIMS = {"event_name": "pull_request", "ref": "refs/pull/7/merge", "head_ref": "feature"}


# --- the service ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Service:
    url: str
    audience: str
    log: Callable[[], bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def issuers() -> Iterator[tuple[FakeIssuer, FakeIssuer]]:
    with FakeIssuer(name="gh") as github, FakeIssuer(name="gl") as gitlab:
        yield github, gitlab


@pytest.fixture(scope="module")
def service(
    issuers: tuple[FakeIssuer, FakeIssuer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """``nix-job token-exchange`` as a process; the policy's audience is its own origin, which
    is what nix-job requests when oidc-audience is empty."""
    github, gitlab = issuers
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    root = tmp_path_factory.mktemp("exchange")
    (root / "policy.toml").write_text(
        policy_text(github.url, gitlab.url).replace(f'"{AUDIENCE}"', f'"{origin}"')
    )
    log = root / "service.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "nix_job", "token-exchange"),
                *("--config", "policy.toml", "--listen", f"127.0.0.1:{port}"),
            ],
            cwd=root,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **secret_env()},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{origin}/healthz", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the exchange did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield Service(url=origin + "/", audience=origin, log=log.read_bytes)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def short_lived(policy: Policy, seconds: int) -> Policy:
    """The policy with every lifetime cut to ``seconds`` (the file format's minimum is 60)."""
    return dataclasses.replace(
        policy,
        service=dataclasses.replace(policy.service, max_lifetime=seconds),
        rules=tuple(dataclasses.replace(r, max_lifetime=seconds) for r in policy.rules),
    )


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toolcache")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble(token_secret=HS256_SECRET) as server:
        server.create_cache(CACHE)  # private: reads need a token
        yield server


@dataclasses.dataclass
class Bed:
    nix: NixEnv
    root: Path
    tool_cache: Path
    double: AtticDouble


@pytest.fixture
def bed(tmp_path: Path, tool_cache: Path, double: AtticDouble) -> Bed:
    require_nix()
    return Bed(
        nix=NixEnv.create(tmp_path / "nix"), root=tmp_path, tool_cache=tool_cache, double=double
    )


def github_endpoint(issuer: FakeIssuer, **claims: str) -> IdTokenEndpoint:
    return IdTokenEndpoint(
        lambda aud: issuer.sign({**issuer.github_claims(audience=aud), **claims})
    )


def tokens_seen(double: AtticDouble) -> set[str]:
    """Every token the Attic double received (Bearer from nix-job, Basic from Nix's netrc)."""
    found: set[str] = set()
    for request in double.requests:
        scheme, _, value = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "basic":
            value = base64.b64decode(value).decode().partition(":")[2]
        if value:
            found.add(value)
    return found


def leaks(text: bytes, *tokens: str) -> list[str]:
    return [name for token in tokens for name in find_in_bytes(text, secret_forms(token))]


def action(
    bed: Bed,
    workspace: str,
    *,
    exchange: str,
    endpoint: IdTokenEndpoint,
    command: str,
    event: str = "push",
    **inputs: str,
) -> ActionResult:
    (bed.root / workspace).mkdir(exist_ok=True)
    return run_nix_job(
        workspace=bed.root / workspace,
        tool_cache=bed.tool_cache,
        inputs={
            "command": command,
            "attic-server": bed.double.url,
            "attic-cache": CACHE,
            "attic-token-exchange": exchange,
            "push-cache": "true",
            **{k.replace("_", "-"): v for k, v in inputs.items()},
        },
        event=event,
        env={},  # no ATTIC_TOKEN at all
        process_env=nix_process_env(bed.nix),
        id_token=endpoint,
    )


def delete_local(nix: NixEnv, workspace: Path, paths: list[str]) -> None:
    for link in workspace.glob("result*"):
        link.unlink()
    nix.run(["nix-store", "--delete", *paths])


# --- GitHub --------------------------------------------------------------------------------------


def test_a_push_publishes_through_the_exchange_and_a_pull_request_only_reads(
    bed: Bed, service: Service, issuers: tuple[FakeIssuer, FakeIssuer]
) -> None:
    github, _ = issuers
    nix, tmp_path, double = bed.nix, bed.root, bed.double
    drv = write_derivations(tmp_path / "src", count=2, chain=True, sleep_s=1.0)
    outputs = drv.out_paths(nix)

    with github_endpoint(github) as oidc:
        pushed = action(
            bed,
            "ws1",
            exchange=service.url,
            endpoint=oidc,
            command=f"nix-build {drv.file} -A d1",
        )
    assert pushed.exit_code == 0, dump(pushed)
    assert pushed.outputs["cache-push"] == "true", dump(pushed)
    assert set(outputs.values()) <= {o.store_path for o in double.objects(CACHE)}, dump(pushed)
    assert oidc.audiences
    assert set(oidc.audiences) == {service.audience}  # the default audience: its origin
    subjects = {r.subject for r in double.upload_requests() if r.status == 200}
    assert subjects == {"github:octo-org/octo-repo:refs/heads/main:run/123456789/1"}
    summary = pushed.step("run").summary
    assert "| Token exchange | rule `gh-publish` granted pull and push on `main`" in summary
    assert "| Publishing | **yes**" in summary
    minted_push = tokens_seen(double)
    assert minted_push
    id_tokens = list(oidc.issued)

    delete_local(nix, tmp_path / "ws1", list(outputs.values()))
    double.clear_requests()

    command = "\n".join(
        [
            ANCESTRY,
            'env > "$PWD/command-env"',
            'grep -rhs password "$RUNNER_TEMP" > "$PWD/netrc-seen" || true',
            f"nix-store --realise {outputs['d1']}",
        ]
    )
    with github_endpoint(github, **PR_CLAIMS) as oidc:
        pr = action(
            bed,
            "ws2",
            exchange=service.url,
            endpoint=oidc,
            command=command,
            event="pull_request",
        )
    assert pr.exit_code == 0, dump(pr)
    assert pr.outputs["cache-push"] == "false"
    assert double.write_requests() == [], "a pull request sent a write request"
    assert f"copying path '{outputs['d1']}'" in pr.raw_output, dump(pr)
    assert "rule `gh-pull` granted pull on `main`" in pr.step("run").summary

    # What the pull request's command could read: its environment, the netrc, its ancestors.
    seen = {
        name: (tmp_path / "ws2" / name).read_bytes()
        for name in ("command-env", "netrc-seen", "ancestry")
    }
    in_netrc = {m.decode() for m in JWT.findall(seen["netrc-seen"])}
    assert in_netrc, "the pull request read the private cache without a netrc token?"
    everything = b"\n".join(seen.values())
    found = {m.decode() for m in JWT.findall(everything)}
    assert not [t for t in found if can_push(t, CACHE)], "a push-capable token was in reach"
    assert oidc.request_token.encode() not in everything
    assert b"ACTIONS_ID_TOKEN_REQUEST" not in seen["command-env"]
    for token in [*id_tokens, *oidc.issued, *minted_push]:
        assert token.encode() not in everything

    # No token in any log: the job's (raw, unmasked) and the service's.
    all_tokens = [*id_tokens, *oidc.issued, *minted_push, *tokens_seen(double)]
    for result in (pushed, pr):
        for token in all_tokens:
            assert not result.leaks(token), token[:12]
    service_log = service.log()
    assert service_log.count(b'"rule":"gh-publish"') >= 1
    assert service_log.count(b'"rule":"gh-pull"') >= 1
    assert leaks(service_log, *all_tokens, oidc.request_token) == []


def test_a_build_longer_than_the_tokens_lifetime_renews_for_uploads_and_reads(
    bed: Bed, issuers: tuple[FakeIssuer, FakeIssuer], caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens live 6 s. A 4-step build of 4 s each uploads each step as it finishes; with no
    renewal the second upload would meet an expired token (the double refuses it: 401). Then a
    pull request that reads only after 9 s substitutes: the netrc held a renewed token."""
    github, gitlab = issuers
    nix, tmp_path, double = bed.nix, bed.root, bed.double
    expired = double.make_token({CACHE: "r"}, valid_for=-1)
    refused = httpx.get(
        f"{double.url}_api/v1/cache-config/{CACHE}",
        headers={"Authorization": f"Bearer {expired}"},
    )
    assert refused.status_code == 401, "the double must refuse an expired token"

    policy = short_lived(parse_policy(policy_text(github.url, gitlab.url), source="t"), 6)
    caplog.set_level(logging.INFO, logger=DECISION_LOGGER)
    drv = write_derivations(tmp_path / "src", count=4, chain=True, sleep_s=4.0)
    outputs = drv.out_paths(nix)
    with serve(create_app(Deps(policy=policy, signer=hs256_signer()))) as url:
        with github_endpoint(github) as oidc:
            pushed = action(
                bed,
                "ws1",
                exchange=url,
                endpoint=oidc,
                command=f"nix-build {drv.file} -A d3",
                oidc_audience=AUDIENCE,
            )
        assert pushed.exit_code == 0, dump(pushed)
        assert set(outputs.values()) <= {o.store_path for o in double.objects(CACHE)}
        assert not [a for a in pushed.annotations_of("warning") if "upload" in (a.title or "")]
        assert all(r.status == 200 for r in double.upload_requests()), dump(pushed)
        assert len(oidc.issued) >= 4, "fresh ID tokens for the renewals"
        renewed = re.search(r"renewed (\d+)×", pushed.step("run").summary)
        assert renewed is not None, pushed.step("run").summary
        assert int(renewed.group(1)) >= 3
        minted = tokens_seen(double)
        assert len(minted) >= 3, "uploads went out with renewed tokens"

        delete_local(nix, tmp_path / "ws1", list(outputs.values()))
        with github_endpoint(github, **PR_CLAIMS) as oidc:
            late = action(
                bed,
                "ws2",
                exchange=url,
                endpoint=oidc,
                command=f"sleep 9\nnix-store --realise {outputs['d3']}",
                event="pull_request",
                oidc_audience=AUDIENCE,
            )
        assert late.exit_code == 0, dump(late)
        assert f"copying path '{outputs['d3']}'" in late.raw_output

    decisions = [r.getMessage() for r in caplog.records if r.name == DECISION_LOGGER]
    assert sum('"outcome":"granted"' in d for d in decisions) >= 6
    tokens = [*minted, *oidc.issued, *tokens_seen(double)]
    assert leaks("\n".join(decisions).encode(), *tokens) == []
    for result in (pushed, late):
        for token in tokens:
            assert not result.leaks(token)


# --- GitLab (nix-job run) ------------------------------------------------------------------------

PROTECTED_PUSH = {
    "GITLAB_CI": "true",
    "CI_PIPELINE_SOURCE": "push",
    "CI_DEFAULT_BRANCH": "main",
    "CI_COMMIT_BRANCH": "main",
    "CI_COMMIT_REF_NAME": "main",
    "CI_COMMIT_REF_PROTECTED": "true",
    "CI_PROJECT_PATH": "group/project",
    "CI_JOB_ID": "302",
}
MERGE_REQUEST = {
    **{k: v for k, v in PROTECTED_PUSH.items() if k != "CI_COMMIT_BRANCH"},
    "CI_PIPELINE_SOURCE": "merge_request_event",
    "CI_MERGE_REQUEST_IID": "7",
    "CI_COMMIT_REF_NAME": "feature",
    "CI_COMMIT_REF_PROTECTED": "false",
}


def gitlab_run(
    nix: NixEnv, workspace: Path, variables: dict[str, str], id_token: str, **inputs: str
) -> subprocess.CompletedProcess[bytes]:
    workspace.mkdir(exist_ok=True)
    env = nix_process_env(
        nix,
        **variables,
        CI_PROJECT_DIR=str(workspace),
        NIX_JOB_ID_TOKEN=id_token,  # what `id_tokens: NIX_JOB_ID_TOKEN: {aud: …}` sets
        **{f"NIX_JOB_{k.upper()}": v for k, v in inputs.items()},
    )
    return subprocess.run(
        [sys.executable, "-I", str(ROOT / "runtime" / "start.py"), "run"],
        cwd=workspace,
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )


@dataclasses.dataclass(frozen=True)
class GitLabCase:
    variables: dict[str, str]
    claims: dict[str, str]
    publishes: bool
    rule: str


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            GitLabCase(PROTECTED_PUSH, {}, publishes=True, rule="gl-publish"),
            id="protected-default-branch",
        ),
        pytest.param(
            GitLabCase(
                MERGE_REQUEST,
                {
                    "pipeline_source": "merge_request_event",
                    "ref": "feature",
                    "ref_path": "refs/merge-requests/7/head",
                    "ref_protected": "false",
                },
                publishes=False,
                rule="gl-pull",
            ),
            id="merge-request",
        ),
    ],
)
def test_nix_job_run_on_gitlab_publishes_only_from_the_protected_default_branch(
    bed: Bed, service: Service, issuers: tuple[FakeIssuer, FakeIssuer], case: GitLabCase
) -> None:
    _, gitlab = issuers
    nix, tmp_path, double = bed.nix, bed.root, bed.double
    variables, claims, publishes, rule = case.variables, case.claims, case.publishes, case.rule
    id_token = gitlab.sign({**gitlab.gitlab_claims(audience=service.audience), **claims})
    workspace = tmp_path / "project"
    stamp = f"gitlab-{tmp_path.name}"
    proc = gitlab_run(
        nix,
        workspace,
        variables,
        id_token,
        command=f'echo {stamp} > f && ln -s "$(nix-store --add f)" result',
        attic_server=double.url,
        attic_cache=CACHE,
        attic_token_exchange=service.url,
        push_cache="true",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output.decode(errors="replace")
    dotenv = (workspace / "nix-job.env").read_text()
    summary = (workspace / "nix-job-summary.md").read_text()
    assert f"NIX_JOB_CACHE_PUSH={'true' if publishes else 'false'}" in dotenv
    assert f"rule `{rule}` granted" in summary
    stored = [o for o in double.objects(CACHE) if o.store_path.endswith("-f")]
    writes = double.write_requests()
    if publishes:
        assert stored, output.decode(errors="replace")
        assert {r.subject for r in writes} == {"gitlab:group/project:refs/heads/main:job/302"}
    else:
        assert writes == []
    written = output + dotenv.encode() + summary.encode()
    assert leaks(written, id_token, *tokens_seen(double)) == []
    assert leaks(service.log(), id_token, *tokens_seen(double)) == []


def test_the_command_finds_the_id_token_neither_in_its_environment_nor_in_nix_jobs(
    bed: Bed, service: Service, issuers: tuple[FakeIssuer, FakeIssuer]
) -> None:
    _, gitlab = issuers
    nix, tmp_path, double = bed.nix, bed.root, bed.double
    id_token = gitlab.sign(gitlab.gitlab_claims(audience=service.audience))
    workspace = tmp_path / "project"
    proc = gitlab_run(
        nix,
        workspace,
        PROTECTED_PUSH,
        id_token,
        command='env > "$PWD/command-env"; tr "\\0" "\\n" < /proc/$PPID/environ > "$PWD/parent"',
        attic_server=double.url,
        attic_cache=CACHE,
        attic_token_exchange=service.url,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode(errors="replace")
    for name in ("command-env", "parent"):
        text = (workspace / name).read_bytes()
        assert id_token.encode() not in text, name
        assert b"NIX_JOB_ID_TOKEN" not in text, name
    assert b"PATH=" in (workspace / "parent").read_bytes(), "nix-job's environment was readable"


@pytest.mark.parametrize(
    ("require", "exit_code"),
    [
        pytest.param("false", 0, id="a-warning"),
        pytest.param("true", 1, id="an-error-with-require-cache-push"),
    ],
)
def test_without_id_token_write_the_run_reads_anonymously_and_says_why(
    bed: Bed, service: Service, require: str, exit_code: int
) -> None:
    bed.double.create_cache("open", public=True)  # attached anonymously
    (bed.root / "ws").mkdir()
    result = run_nix_job(
        workspace=bed.root / "ws",
        tool_cache=bed.tool_cache,
        inputs={
            "command": "touch ran",
            "attic-server": bed.double.url,
            "attic-cache": "open",
            "attic-token-exchange": service.url,
            "push-cache": "true",
            "require-cache-push": require,
        },
        event="push",
        process_env=nix_process_env(bed.nix),
    )
    assert result.exit_code == exit_code, dump(result)
    assert (bed.root / "ws" / "ran").exists(), "the command runs whatever the exchange did"
    (warning,) = [a for a in result.annotations_of("warning") if "ID token" in (a.title or "")]
    assert "`permissions: id-token: write`" in warning.message
    assert result.outputs["cache-push"] == "false"
    assert "has no OIDC ID token" in result.outputs["cache-push-reason"]
    errors = [a.title for a in result.annotations_of("error") if a.source == "command"]
    assert errors == (["nix-job: required cache push failed"] if exit_code else [])
    assert bed.double.write_requests() == []
