"""cache_attach: resolving the target, discovery failures, key pinning, the temporary netrc."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from nix_job.cache import netrc
from nix_job.cache.attach import Attachment, attach_reads, discover, usable_token
from nix_job.cache.attic import AtticClient, CacheConfig
from nix_job.cache.netrc_file import TempNetrc
from nix_job.cache.plan import Discovery, plan_read, same_key
from nix_job.cache.target import (
    CacheTarget,
    TargetResolution,
    plaintext_token_problem,
    resolve_target,
)
from nix_job.core.errors import AtticApiError, AtticAuthError, CacheConfigError
from nix_job.core.nixhash import base_name
from nix_job.core.secret import Secret
from tests.attic_double import AtticDouble
from tests.attic_double.protocol import Keypair
from tests.nixenv import NixEnv, require_nix, write_derivations

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.dG9rZW4tc2lnbmF0dXJl"
BASIC = base64.b64encode(f":{TOKEN}".encode()).decode()
OUR_BASIC = base64.b64encode(f"nix-job:{TOKEN}".encode()).decode()
KEY = Keypair.generate("main").public_key
OTHER_KEY = Keypair.generate("main").public_key
SERVER = "https://cache.example/"
TARGET = CacheTarget(server=SERVER, cache="main", server_source="input", cache_source="input")
CONFIG = CacheConfig(
    substituter_endpoint="https://cache.example/main",
    api_endpoint=SERVER,
    public_key=KEY,
    is_public=False,
)
PUBLIC_CONFIG = CacheConfig(
    substituter_endpoint="https://cache.example/main", public_key=KEY, is_public=True
)


class FakeSource:
    """A ConfigSource answering with a fixed config or raising a fixed error."""

    def __init__(self, answer: CacheConfig | Exception) -> None:
        self.answer = answer
        self.calls = 0

    def cache_config(self) -> CacheConfig:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def texts(problems: object) -> str:
    assert isinstance(problems, tuple)
    return "\n".join(f"{p.kind}: {p.message}" for p in problems)


# --- resolve_target ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolve:
    server: str | None = None
    cache: str | None = None
    hints: dict[str, str] = field(default_factory=dict)
    expected: tuple[str, str, str] | None = None  # server, cache, source text
    kind: str | None = None  # of the one problem, if any
    says: str | None = None


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            Resolve(
                server="https://cache.example",
                cache="main",
                expected=("https://cache.example/", "main", "inputs"),
            ),
            id="inputs",
        ),
        pytest.param(
            Resolve(
                hints={"ATTIC_SERVER": "https://hint.example/attic", "ATTIC_CACHE": "ci"},
                expected=("https://hint.example/attic/", "ci", "runner hints"),
            ),
            id="runner-hints",
        ),
        pytest.param(
            Resolve(
                server="https://cache.example/",
                cache="main",
                hints={"ATTIC_SERVER": "https://hint.example/", "ATTIC_CACHE": "ci"},
                expected=("https://cache.example/", "main", "inputs"),
            ),
            id="inputs-win-over-hints",
        ),
        pytest.param(
            Resolve(
                server="https://cache.example//",
                hints={"ATTIC_CACHE": "ci"},
                expected=(
                    "https://cache.example/",
                    "ci",
                    "server from inputs, cache from runner hints",
                ),
            ),
            id="mixed-sources-are-recorded",
        ),
        pytest.param(
            Resolve(
                server="https://cache.example/",
                cache="main",
                hints={"ATTIC_SERVER": "ftp://bad", "ATTIC_CACHE": "bad name"},
                expected=("https://cache.example/", "main", "inputs"),
            ),
            id="bad-hints-overridden-by-inputs-are-ignored",
        ),
        pytest.param(
            Resolve(
                server="  ",
                cache="",
                hints={"ATTIC_SERVER": " ", "ATTIC_CACHE": ""},
                kind="notice",
                says="No Attic server configured: set attic-server/attic-cache or the runner hints",
            ),
            id="nothing-configured-is-a-notice",
        ),
        pytest.param(
            Resolve(
                server="https://cache.example/",
                kind="warning",
                says="the cache name (`attic-cache` input or ATTIC_CACHE runner hint) is missing",
            ),
            id="server-without-cache",
        ),
        pytest.param(
            Resolve(
                hints={"ATTIC_CACHE": "ci"},
                kind="warning",
                says="the server (`attic-server` input or ATTIC_SERVER runner hint) is missing",
            ),
            id="cache-without-server",
        ),
        pytest.param(
            Resolve(
                cache="main",
                hints={"ATTIC_SERVER": "cache.example:8080"},
                kind="warning",
                says="The runner hint ATTIC_SERVER is not usable: it must start with https://",
            ),
            id="bad-server-hint-means-no-cache",
        ),
        pytest.param(
            Resolve(
                server="https://cache.example/",
                hints={"ATTIC_CACHE": "-bad/name"},
                kind="warning",
                says="The runner hint ATTIC_CACHE is not usable",
            ),
            id="bad-cache-hint-means-no-cache",
        ),
    ],
)
def test_resolve_target(case: Resolve) -> None:
    result = resolve_target(server_input=case.server, cache_input=case.cache, env_hints=case.hints)
    if case.expected is None:
        assert result.target is None
    else:
        assert result.target is not None
        target = result.target
        assert (target.server, target.cache, target.source_text) == case.expected
    if case.says is None:
        assert result.problems == ()
    else:
        (problem,) = result.problems
        assert problem.kind == case.kind
        assert case.says in problem.message
        assert "running without a cache" in problem.message.lower()


def test_a_bad_server_hint_is_not_echoed_because_it_may_hold_credentials() -> None:
    result = resolve_target(
        server_input=None,
        cache_input="main",
        env_hints={"ATTIC_SERVER": f"https://ci:{TOKEN}@cache.example/"},
    )
    assert result == TargetResolution(target=None, problems=result.problems)
    assert "must not contain credentials" in texts(result.problems)
    assert TOKEN not in texts(result.problems)


# --- discovery failures -----------------------------------------------------------------------


def client(handler: Callable[[httpx.Request], httpx.Response], token: str | None) -> AtticClient:
    return AtticClient(
        endpoint=SERVER,
        cache="main",
        token=Secret(token) if token else None,
        http=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def answer(status: int, error: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/_api/v1/cache-config/main"
        return httpx.Response(status, json={"code": status, "error": error, "message": error})

    return handler


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


@pytest.mark.parametrize(
    ("handler", "token", "says"),
    [
        pytest.param(
            answer(401, "Unauthorized"),
            TOKEN,
            [
                "401 Unauthorized",
                "issued by this server",
                "expired",
                "pull (`r`)",
                "cache name is right",
            ],
            id="401-with-token-lists-what-to-check",
        ),
        pytest.param(
            answer(401, "Unauthorized"),
            None,
            ["anonymous", "private", "ATTIC_TOKEN", "built from source"],
            id="401-without-token-says-the-cache-is-private",
        ),
        pytest.param(
            answer(403, "AccessError"),
            TOKEN,
            ["403 Forbidden", "lacks pull (`r`)", "atticadm make-token --pull main"],
            id="403-says-the-token-lacks-pull",
        ),
        pytest.param(
            answer(404, "NoSuchCache"),
            TOKEN,
            ["404", "NoSuchCache", "https://cache.example/_api/v1/"],
            id="404-says-check-name-and-url-path",
        ),
        pytest.param(
            answer(502, "BadGateway"),
            TOKEN,
            ["HTTP 502", "server's logs"],
            id="5xx-says-look-at-the-server",
        ),
        pytest.param(
            unreachable,
            TOKEN,
            ["Could not reach", "ConnectError", "DNS", "network"],
            id="unreachable-says-check-network-and-dns",
        ),
    ],
)
def test_discovery_failure_says_what_to_check(
    handler: Callable[[httpx.Request], httpx.Response], token: str | None, says: list[str]
) -> None:
    secret = Secret(token) if token else None
    discovery = discover(client(handler, token), target=TARGET, token=secret)
    assert discovery.config is None
    assert discovery.problem is not None
    for words in says:
        assert words in discovery.problem
    assert TOKEN not in discovery.problem


def test_discovery_problem_never_carries_the_token_even_if_an_error_does() -> None:
    request = httpx.Request("GET", SERVER)
    leaky = httpx.ConnectError(
        f"proxy said: Authorization: Bearer {TOKEN} / {BASIC} / {OUR_BASIC}", request=request
    )
    discovery = discover(FakeSource(leaky), target=TARGET, token=Secret(TOKEN))
    assert discovery.problem is not None
    for form in (TOKEN, BASIC, OUR_BASIC):
        assert form not in discovery.problem


def test_discovery_through_the_real_client_returns_the_config() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        return httpx.Response(
            200,
            json={
                "substituter_endpoint": "https://cache.example/main",
                "public_key": KEY,
                "is_public": False,
            },
        )

    discovery = discover(client(handler, TOKEN), target=TARGET, token=Secret(TOKEN))
    assert discovery.problem is None
    assert discovery.config is not None
    assert (discovery.config.public_key, discovery.config.is_public) == (KEY, False)


# --- plan_read ------------------------------------------------------------------------------

OK = Discovery(config=CONFIG, problem=None)
FAILED = Discovery(config=None, problem="Attic server https://cache.example/ answered 401.")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    discovery: Discovery = OK
    pinned: str | None = None
    token: bool = True
    substituter: str | None = "https://cache.example/main"
    key: str | None = KEY
    key_source: str | None = "discovered"
    says: tuple[str, ...] = ()


def config(*, substituter_endpoint: str | None = None, public_key: str | None = None) -> Discovery:
    found = CacheConfig(substituter_endpoint=substituter_endpoint, public_key=public_key)
    return Discovery(config=found, problem=None)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Plan(), id="discovered"),
        pytest.param(Plan(pinned=KEY, key_source="pinned"), id="pin-matches"),
        pytest.param(
            Plan(
                discovery=FAILED,
                substituter=None,
                key=None,
                key_source=None,
                says=("warning: Attic server https://cache.example/ answered 401.", "no cache is"),
            ),
            id="discovery-failed-without-pin-attaches-nothing",
        ),
        pytest.param(
            Plan(
                discovery=FAILED,
                pinned=KEY,
                key_source="pinned",
                says=(
                    "warning: Attic server https://cache.example/ answered 401.",
                    "still attached",
                ),
            ),
            id="discovery-failed-with-pin-attaches-pinned",
        ),
        pytest.param(
            Plan(
                discovery=config(),
                substituter=None,
                key=None,
                key_source=None,
                says=("reports no public key", "Nix refuses unsigned substitutes"),
            ),
            id="server-without-key-and-no-pin-attaches-nothing",
        ),
        pytest.param(
            Plan(
                discovery=config(public_key="main:bm90LWEta2V5"),
                substituter=None,
                key=None,
                key_source=None,
                says=("must hold a 32-byte ed25519 key", "reports no public key"),
            ),
            id="malformed-discovered-key-is-not-trusted",
        ),
        pytest.param(
            Plan(discovery=config(public_key=KEY)),
            id="no-substituter-endpoint-falls-back-to-server-plus-cache",
        ),
        pytest.param(
            Plan(
                discovery=config(substituter_endpoint="http://cache.example/main", public_key=KEY),
                says=("plain-HTTP substituter endpoint", "never travels unencrypted"),
            ),
            id="https-to-http-downgrade-refused",
        ),
        pytest.param(
            Plan(
                discovery=config(substituter_endpoint="https://10.0.0.5:8080/main", public_key=KEY),
                substituter="https://10.0.0.5:8080/main",
                says=("notice: The server's substituter endpoint", "zhaofengli/attic#325"),
            ),
            id="other-host-substituter-used-with-a-notice",
        ),
        pytest.param(
            Plan(token=False, says=("private and ATTIC_TOKEN is not set", "built from source")),
            id="private-cache-without-token-warns",
        ),
        pytest.param(
            Plan(discovery=Discovery(config=PUBLIC_CONFIG, problem=None), token=False),
            id="public-cache-without-token-reads-anonymously",
        ),
    ],
)
def test_plan_read(case: Plan) -> None:
    plan = plan_read(
        target=TARGET,
        pinned_key=case.pinned,
        discovery=case.discovery,
        token_present=case.token,
    )
    assert (plan.substituter, plan.public_key, plan.key_source) == (
        case.substituter,
        case.key,
        case.key_source,
    )
    assert plan.authenticate == (case.token and case.substituter is not None)
    messages = texts(plan.problems)
    for words in case.says:
        assert words in messages
    if not case.says:
        assert plan.problems == ()


def test_a_pinned_key_the_server_contradicts_is_refused_naming_both_keys() -> None:
    with pytest.raises(CacheConfigError) as info:
        plan_read(
            target=TARGET,
            pinned_key=OTHER_KEY,
            discovery=OK,
            token_present=True,
        )
    assert OTHER_KEY in info.value.message
    assert KEY in info.value.message
    assert "not trusted" in info.value.message
    assert info.value.hint_url.endswith("#wrong-public-key")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param(KEY, KEY, True, id="identical"),
        pytest.param(KEY, f"  {KEY}\n", True, id="surrounding-space"),
        pytest.param(KEY, OTHER_KEY, False, id="other-bytes"),
        pytest.param(KEY, KEY.replace("main:", "other:"), False, id="other-name"),
        pytest.param(KEY, "main:!!!", False, id="garbage"),
    ],
)
def test_same_key_compares_name_and_bytes(a: str, b: str, same: bool) -> None:
    assert same_key(a, b) is same


# --- attach_reads ---------------------------------------------------------------------------


@pytest.fixture
def temp_root(tmp_path: Path) -> Path:
    root = tmp_path / "runner-temp"
    root.mkdir()
    return root


def attach(
    temp_root: Path,
    *,
    answer: CacheConfig | Exception = CONFIG,
    token: str | None = TOKEN,
    pinned: str | None = None,
    base: Path | None = None,
) -> Attachment:
    return attach_reads(
        target=TARGET,
        pinned_key=pinned,
        source=FakeSource(answer),
        token=Secret(token) if token is not None else None,
        base_netrc=base if base is not None else temp_root.parent / "no-such-netrc",
        temp_root=temp_root,
    )


def test_token_gives_extra_lines_and_a_private_merged_netrc(temp_root: Path) -> None:
    base = temp_root.parent / "existing-netrc"
    base.write_text(
        "machine github.com\nlogin x\npassword gh\n"
        "machine cache.example\npassword stale\n"
        "default login anonymous password guest\n"
    )
    attachment = attach(temp_root, base=base)
    assert attachment.netrc is not None
    path = attachment.netrc.path
    assert attachment.conf_lines == (
        "extra-substituters = https://cache.example/main",
        f"extra-trusted-public-keys = {KEY}",
        f"netrc-file = {path}",
    )
    assert path.parent.parent == temp_root
    assert path.parent.name.startswith("nix-job-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == (
        "machine github.com\nlogin x\npassword gh\n"
        f"machine cache.example\nlogin nix-job\npassword {TOKEN}\n"
        "default login anonymous password guest\n"
    )
    assert "stale" in base.read_text()  # the user's netrc is never touched
    facts = attachment.facts
    assert facts is not None
    assert (facts.substituter, facts.key_source, facts.authenticated_reads, facts.is_public) == (
        "https://cache.example/main",
        "discovered",
        True,
        False,
    )
    assert (facts.server, facts.cache, facts.source) == (SERVER, "main", "inputs")
    assert attachment.problems == ()


def test_cleanup_removes_the_netrc_and_its_directory_and_is_idempotent(temp_root: Path) -> None:
    attachment = attach(temp_root)
    assert attachment.netrc is not None
    assert attachment.netrc.path.exists()
    assert attachment.cleanup() is None
    assert os.listdir(temp_root) == []
    assert attachment.cleanup() is None


def test_cleanup_reports_a_netrc_it_could_not_delete(tmp_path: Path) -> None:
    survivor = tmp_path / "netrc"
    survivor.mkdir()  # unlink() cannot remove it, and it is outside the removed directory
    (survivor / "x").write_text("x")
    problem = TempNetrc(path=survivor, directory=tmp_path / "other").cleanup()
    assert problem is not None
    assert problem.kind == "warning"
    assert f"Could not delete the temporary netrc {survivor}" in problem.message
    assert "Delete it by hand" in problem.message


def test_public_cache_without_token_reads_anonymously_without_netrc(temp_root: Path) -> None:
    attachment = attach(temp_root, answer=PUBLIC_CONFIG, token=None)
    assert attachment.conf_lines == (
        "extra-substituters = https://cache.example/main",
        f"extra-trusted-public-keys = {KEY}",
    )
    assert attachment.netrc is None
    assert os.listdir(temp_root) == []
    assert attachment.facts is not None
    assert attachment.facts.authenticated_reads is False
    assert "anonymous reads" in attachment.describe()


@pytest.mark.parametrize(
    ("answer", "token", "pinned"),
    [
        pytest.param(AtticAuthError("401", status=401), TOKEN, None, id="401-no-pin"),
        pytest.param(AtticAuthError("403", status=403), TOKEN, None, id="403-no-pin"),
        pytest.param(
            httpx.ConnectError("refused", request=httpx.Request("GET", SERVER)),
            TOKEN,
            None,
            id="unreachable-no-pin",
        ),
    ],
)
def test_failed_discovery_without_pin_attaches_nothing_and_writes_no_netrc(
    temp_root: Path, answer: Exception, token: str | None, pinned: str | None
) -> None:
    attachment = attach(temp_root, answer=answer, token=token, pinned=pinned)
    assert attachment.conf_lines == ()
    assert attachment.attached is False
    assert attachment.facts is None
    assert os.listdir(temp_root) == []
    assert [p.kind for p in attachment.problems] == ["warning"]
    assert "no Attic cache attached" in attachment.describe()


def test_failed_discovery_with_pin_still_attaches_with_the_token(temp_root: Path) -> None:
    attachment = attach(temp_root, answer=AtticAuthError("401", status=401), pinned=KEY)
    assert attachment.conf_lines[:2] == (
        "extra-substituters = https://cache.example/main",
        f"extra-trusted-public-keys = {KEY}",
    )
    assert attachment.conf_lines[2].startswith("netrc-file = ")
    assert attachment.facts is not None
    assert (attachment.facts.key_source, attachment.facts.is_public) == ("pinned", None)
    assert "still attached" in texts(attachment.problems)
    attachment.cleanup()


def test_pinned_key_mismatch_raises_before_any_netrc_is_written(temp_root: Path) -> None:
    with pytest.raises(CacheConfigError):
        attach(temp_root, pinned=OTHER_KEY)
    assert os.listdir(temp_root) == []


def test_unreadable_existing_netrc_is_a_notice_and_ours_is_still_written(temp_root: Path) -> None:
    base = temp_root.parent / "netrc-dir"
    base.mkdir()  # reading a directory fails like an unreadable file
    attachment = attach(temp_root, base=base)
    assert attachment.netrc is not None
    assert attachment.netrc.path.read_text() == (
        f"machine cache.example\nlogin nix-job\npassword {TOKEN}\n"
    )
    (problem,) = attachment.problems
    assert problem.kind == "notice"
    assert str(base) in problem.message
    assert "other hosts" in problem.message
    attachment.cleanup()


def test_token_with_surrounding_whitespace_is_trimmed_as_sent(temp_root: Path) -> None:
    attachment = attach(temp_root, token=f"  {TOKEN}\n")
    assert attachment.netrc is not None
    entry = netrc.lookup(netrc.parse(attachment.netrc.path.read_text()), "cache.example")
    assert entry is not None
    assert entry.password == TOKEN
    assert set(usable_token(Secret(f"  {TOKEN}\n")).derived_forms()) == {TOKEN, BASIC, OUR_BASIC}  # type: ignore[union-attr]
    attachment.cleanup()


@pytest.mark.parametrize(
    ("token", "temp"),
    [
        pytest.param("abc def", "ok", id="token-with-inner-space"),
        pytest.param(TOKEN, "missing", id="runner-temp-missing"),
        pytest.param(TOKEN, "with space", id="runner-temp-with-whitespace"),
    ],
)
def test_netrc_that_cannot_be_written_means_anonymous_reads_with_a_warning(
    tmp_path: Path, token: str, temp: str
) -> None:
    root = tmp_path / ("runner temp" if temp == "with space" else "runner-temp")
    if temp != "missing":
        root.mkdir()
    attachment = attach(root, token=token)
    assert attachment.netrc is None
    assert len(attachment.conf_lines) == 2
    assert not any(line.startswith("netrc-file") for line in attachment.conf_lines)
    assert attachment.facts is not None
    assert attachment.facts.authenticated_reads is False
    (problem,) = attachment.problems
    assert problem.kind == "warning"
    assert "could not be written" in problem.message
    assert token not in problem.message
    if root.exists():
        assert os.listdir(root) == []


@pytest.mark.parametrize(
    ("answer", "pinned"),
    [
        pytest.param(CONFIG, None, id="attached"),
        pytest.param(AtticAuthError(f"bad token {TOKEN}", status=401), KEY, id="discovery-401"),
        pytest.param(
            httpx.ConnectError(f"leak {TOKEN} {BASIC}", request=httpx.Request("GET", SERVER)),
            KEY,
            id="unreachable",
        ),
        pytest.param(
            AtticApiError(f"weird {TOKEN}", status=500, error=f"X{TOKEN}"), None, id="5xx"
        ),
    ],
)
def test_no_token_form_in_any_message_fact_or_line(
    temp_root: Path, answer: CacheConfig | Exception, pinned: str | None
) -> None:
    attachment = attach(temp_root, answer=answer, pinned=pinned)
    visible = "\n".join(
        [
            texts(attachment.problems),
            *(p.title for p in attachment.problems),
            repr(attachment.facts),
            *attachment.conf_lines,
            attachment.describe(),
            repr(attachment),
        ]
    )
    for form in (TOKEN, BASIC, OUR_BASIC):
        assert form not in visible
    attachment.cleanup()


# --- with real Nix and the Attic double ---------------------------------------------------


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("team")
        d.create_cache("pub", public=True)
        yield d


def seed_closure(double: AtticDouble, nix: NixEnv, tmp_path: Path, cache: str) -> str:
    """Build two fresh paths (top references dep) and store them only in the double."""
    drvs = write_derivations(tmp_path / "expr", count=2, chain=True)
    dep, top = drvs.build(nix)
    for path in (dep, top):
        double.put_path(
            cache,
            store_path=path,
            nar=nix.dump(path),
            references=[base_name(r) for r in nix.query("--references", path)],
        )
    return top


def pull(tmp_path: Path, conf_lines: tuple[str, ...], path: str) -> tuple[int, str, Path]:
    """Substitute ``path`` into a fresh chroot store using exactly ``conf_lines``."""
    puller = NixEnv.create(tmp_path / "puller", extra_conf=conf_lines)
    store = tmp_path / "fresh-store"  # shared by pulls in one test; each path is new to it
    proc = puller.run(["nix-store", "--store", str(store), "--realise", path], check=False)
    return proc.returncode, proc.stderr.decode(errors="replace"), store


def attach_to(
    double: AtticDouble,
    cache: str,
    temp_root: Path,
    *,
    token: str | None,
    pinned: str | None,
    base_text: str = "machine other.example\npassword keep-me\n",
) -> Attachment:
    secret = Secret(token) if token else None
    target = CacheTarget(
        server=double.url, cache=cache, server_source="input", cache_source="input"
    )
    base = temp_root.parent / "system-netrc"
    base.write_text(base_text)
    with AtticClient(endpoint=double.url, cache=cache, token=secret) as attic:
        return attach_reads(
            target=target,
            pinned_key=pinned,
            source=attic,
            token=secret,
            base_netrc=base,
            temp_root=temp_root,
        )


@pytest.mark.nix
@pytest.mark.parametrize(
    "pin", [pytest.param(False, id="key-discovered"), pytest.param(True, id="key-pinned")]
)
def test_nix_substitutes_from_a_private_cache_with_the_lines_and_netrc_we_produce(
    double: AtticDouble, nix: NixEnv, tmp_path: Path, temp_root: Path, pin: bool
) -> None:
    top = seed_closure(double, nix, tmp_path, "team")
    key = double.cache("team").public_key
    token = double.make_token({"team": "r"}, sub="reader")
    attachment = attach_to(double, "team", temp_root, token=token, pinned=key if pin else None)
    try:
        assert attachment.facts is not None
        assert attachment.facts.key_source == ("pinned" if pin else "discovered")
        assert attachment.netrc is not None
        assert "machine other.example\npassword keep-me\n" in attachment.netrc.path.read_text()
        double.clear_requests()
        code, stderr, store = pull(tmp_path, attachment.conf_lines, top)
        assert code == 0, stderr
        assert (store / top.lstrip("/")).is_dir()
        reads = [r for r in double.requests if r.method == "GET"]
        assert reads
        assert all(r.auth_scheme == "basic" and r.subject == "reader" for r in reads)
    finally:
        assert attachment.cleanup() is None
    assert os.listdir(temp_root) == []


@pytest.mark.nix
def test_credentials_of_other_hosts_in_the_existing_netrc_keep_working(
    double: AtticDouble, nix: NixEnv, tmp_path: Path, temp_root: Path
) -> None:
    """The user's netrc has a password-only entry for another cache (as `attic use` writes it).
    curl 7.88 and 8.11.1 lose such an entry once another entry follows it, so ours must not be
    appended after it; Nix must authenticate to both caches with the merged file."""
    ours = seed_closure(double, nix, tmp_path / "a", "team")
    with AtticDouble() as other:
        other.create_cache("theirs")
        theirs = seed_closure(other, nix, tmp_path / "b", "theirs")
        their_token = other.make_token({"theirs": "r"}, sub="someone-else")
        attachment = attach_to(
            double,
            "team",
            temp_root,
            token=double.make_token({"team": "r"}, sub="reader"),
            pinned=None,
            base_text=f"machine localhost\npassword {their_token}\n",
        )
        try:
            their_url = other.url.replace("127.0.0.1", "localhost") + "theirs"
            lines = (
                *attachment.conf_lines,
                f"extra-substituters = {their_url}",
                f"extra-trusted-public-keys = {other.cache('theirs').public_key}",
            )
            double.clear_requests()
            code, stderr, store = pull(tmp_path, lines, ours)
            assert code == 0, stderr
            code, stderr, store = pull(tmp_path, lines, theirs)
            assert code == 0, stderr
            assert (store / theirs.lstrip("/")).is_dir()
            assert {r.subject for r in double.requests if r.method == "GET"} == {"reader"}
            assert {r.subject for r in other.requests if r.method == "GET"} == {"someone-else"}
        finally:
            attachment.cleanup()


@pytest.mark.nix
def test_nix_pulls_a_public_cache_anonymously_with_the_lines_we_produce(
    double: AtticDouble, nix: NixEnv, tmp_path: Path, temp_root: Path
) -> None:
    top = seed_closure(double, nix, tmp_path, "pub")
    attachment = attach_to(double, "pub", temp_root, token=None, pinned=None)
    assert attachment.netrc is None
    assert attachment.problems == ()
    double.clear_requests()
    code, stderr, store = pull(tmp_path, attachment.conf_lines, top)
    assert code == 0, stderr
    assert (store / top.lstrip("/")).is_dir()
    assert all(r.auth_scheme is None for r in double.requests)


@pytest.mark.nix
def test_a_wrong_pinned_key_fails_clearly_before_nix_is_configured(
    double: AtticDouble, temp_root: Path
) -> None:
    require_nix()
    wrong = Keypair.generate("team").public_key
    token = double.make_token({"team": "r"})
    with pytest.raises(CacheConfigError, match="differs from the key"):
        attach_to(double, "team", temp_root, token=token, pinned=wrong)
    assert os.listdir(temp_root) == []


@pytest.mark.nix
def test_after_cleanup_the_token_is_gone_and_nix_reads_fail(
    double: AtticDouble, nix: NixEnv, tmp_path: Path, temp_root: Path
) -> None:
    top = seed_closure(double, nix, tmp_path, "team")
    token = double.make_token({"team": "r"})
    attachment = attach_to(double, "team", temp_root, token=token, pinned=None)
    assert attachment.netrc is not None
    path = attachment.netrc.path
    assert attachment.cleanup() is None
    assert not path.exists()
    double.clear_requests()
    code, _stderr, _store = pull(tmp_path, attachment.conf_lines, top)
    assert code != 0
    assert double.requests
    assert all(r.auth_scheme is None and r.status != 200 for r in double.requests)


@pytest.mark.parametrize(
    ("server", "token_present", "warns"),
    [
        pytest.param("http://cache.example.com/", True, True, id="http-remote-with-token-warns"),
        pytest.param("https://cache.example.com/", True, False, id="https-is-fine"),
        pytest.param("http://cache.example.com/", False, False, id="no-token-nothing-to-leak"),
        pytest.param("http://127.0.0.1:8080/", True, False, id="loopback-is-fine"),
        pytest.param("http://localhost/", True, False, id="localhost-is-fine"),
        pytest.param("http://127.0.0.2:9/", True, False, id="any-127-address-is-loopback"),
        pytest.param("http://[::1]:8080/", True, False, id="ipv6-loopback"),
        pytest.param("http://127.attacker.example/", True, True, id="a-name-starting-127"),
        pytest.param("http://localhost.attacker.example/", True, True, id="localhost-prefix"),
    ],
)
def test_plain_http_with_a_token_is_a_warning(
    server: str, token_present: bool, warns: bool
) -> None:
    target = CacheTarget(server=server, cache="c", server_source="input", cache_source="input")
    problem = plaintext_token_problem(target, token_present=token_present)
    assert (problem is not None) is warns
    if problem is not None:
        assert problem.kind == "warning"
        assert "unencrypted" in problem.message


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("#\npost-build-hook = /tmp/evil.sh\nmain", id="newlines-and-a-setting"),
        pytest.param("main\rpost-build-hook", id="carriage-return"),
        pytest.param("ma in", id="space"),
        pytest.param("# END nix-job", id="marker"),
    ],
)
def test_a_discovered_key_whose_name_could_add_settings_is_never_trusted(
    temp_root: Path, name: str
) -> None:
    """A server (or whoever answers for it) must not inject nix.conf settings through the key's
    name, e.g. a post-build-hook that a root daemon would run."""
    data = KEY.split(":", 1)[1]
    hostile = CacheConfig(substituter_endpoint=None, public_key=f"{name}:{data}", is_public=True)
    attachment = attach(temp_root, answer=hostile, token=None)
    assert attachment.settings == ()  # nothing trusted, nothing attached
    assert "key name" in texts(attachment.problems)
