"""Bad input never half-runs: through the real action, every input's malformed values stop the
run with one error naming the input, before anything runs, is written or is asked of the server.

Plus property-based tests of the parsers that face untrusted text: public keys, ``nix path-info
--json`` in both shapes, netrc entries and the ``Secret`` wrapper.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nix_job.cache import netrc
from nix_job.cache.attic import CacheConfig
from nix_job.cache.plan import Discovery, plan_read, same_key
from nix_job.cache.target import CacheTarget
from nix_job.core.input_specs import INPUT_SPECS
from nix_job.core.nixhash import nix32_encode
from nix_job.core.secret import Secret
from nix_job.core.values import public_key_problem
from nix_job.nix.path_info import PathInfo, parse_path_info_json
from tests.e2e.test_reliability_support import (
    Bed,
    bed_for,
    leaks,
    netrc_files,
    nix_conf_blocks,
    shared_tool_cache,  # noqa: F401 - fixture
)
from tests.nixenv import require_nix

MARKER = "ran-marker"

# (input, malformed value, a fragment the error must contain). Every input that can be
# malformed has at least one row; test_every_validated_input_has_a_bad_value_row keeps it so.
BAD_VALUES = [
    pytest.param("command", "  \n\t ", "`command` is empty", id="command-blank"),
    pytest.param("working-directory", "does/not/exist", "does not exist", id="workdir-missing"),
    pytest.param("working-directory", "sub\nmore", "not a usable path", id="workdir-newline"),
    pytest.param("attic-enabled", "yes", "true or false", id="enabled-yes"),
    pytest.param("attic-server", "ftp://cache.example.com/", "https://", id="server-ftp"),
    pytest.param("attic-server", "https://cache example.com/", "whitespace", id="server-space"),
    pytest.param("attic-cache", "bad/name", "1–50 characters", id="cache-slash"),
    pytest.param("attic-cache", "-dash", "starting with", id="cache-leading-dash"),
    pytest.param("attic-public-key", "team:AAAA", "32-byte", id="key-short"),
    pytest.param("attic-public-key", "no-colon", "name:base64", id="key-no-colon"),
    pytest.param(
        "attic-public-key",
        "team:ключ",
        "base64",
        id="key-non-ascii",
    ),
    pytest.param(
        "attic-token-exchange",
        "http://exchange.example.com",
        "must use https://",
        id="exchange-plain-http",
    ),
    pytest.param(
        "attic-token-exchange", "ftp://exchange.example.com", "https://", id="exchange-ftp"
    ),
    pytest.param("oidc-audience", "https://a b", "whitespace", id="audience-space"),
    pytest.param("push-cache", "1", "true or false", id="push-cache-1"),
    pytest.param("require-cache-push", "flase", "'flase'", id="require-typo"),
    pytest.param("push-exclude", "(unclosed", "not a valid regex", id="exclude-regex"),
    pytest.param("push-jobs", "65", "from 1 to 64", id="jobs-too-many"),
    pytest.param("push-jobs", "9" * 30, "from 1 to 64", id="jobs-huge"),
    pytest.param("push-max-size", "0", "above zero", id="max-size-zero"),
    pytest.param("push-max-size", "2 PB", "such as 500M", id="max-size-unit"),
    pytest.param("push-closure", "everything", "runtime, build, outputs", id="closure-unknown"),
    pytest.param("drain-timeout", "-5", "0 to 3600", id="drain-negative"),
    pytest.param("drain-timeout", "1e3", "0 to 3600", id="drain-exponent"),
    pytest.param("nix-installer", "brew", "auto, upstream", id="installer-unknown"),
    pytest.param("nix-version", "latest", "2.24.10", id="version-word"),
    pytest.param("nix-installer-url", "file:///etc/passwd", "https://", id="installer-url-file"),
    pytest.param("nix-installer-sha256", "z" * 64, "64 hexadecimal", id="sha-not-hex"),
    pytest.param(
        "extra-conf",
        "max-jobs = 2\n$(touch pwned)",
        "line 2",
        id="conf-shell-line",
    ),
]
#: Inputs that take any text: there is no malformed value, only hostile ones (tested below).
FREE_TEXT = {"push-paths", "github-token"}


@pytest.fixture
def bed(tmp_path: Path, shared_tool_cache: Path) -> Iterator[Bed]:  # noqa: F811
    require_nix()
    with bed_for(tmp_path, shared_tool_cache) as b:
        yield b


def test_every_validated_input_has_a_bad_value_row() -> None:
    covered = {p.values[0] for p in BAD_VALUES}
    assert covered | FREE_TEXT == {spec.name for spec in INPUT_SPECS}


@pytest.mark.nix
@pytest.mark.slow
@pytest.mark.parametrize(("name", "value", "fragment"), BAD_VALUES)
def test_a_bad_input_stops_everything_before_it_starts(
    bed: Bed, name: str, value: str, fragment: str
) -> None:
    (bed.root / "ws" / "sub").mkdir(parents=True)
    inputs = {"push-cache": "true", name: value}
    command = f"touch {MARKER}" if name != "command" else value
    run = bed.run(command, token=bed.token(), inputs=inputs, workspace=bed.root / "ws")
    result = run.result

    assert result.exit_code == 1, run.dump()
    errors = run.annotations("error")
    assert len(errors) == 1, run.dump()
    assert f"`{name}`" in errors[0].message, errors[0].message
    assert fragment in errors[0].message, errors[0].message
    assert "nothing was run" in errors[0].message
    assert result.outputs["exit-code"] == "", "the command is reported as run"
    # Nothing ran: no marker, no process started by nix-job (not even `nix --version`).
    assert not list(run.workspace.rglob(MARKER))
    assert not list(run.workspace.rglob("pwned"))
    assert run.processes.descendants_of_nix_job() == [], run.processes.descendants_of_nix_job()
    # Nothing was written or asked: no request, no netrc, no nix.conf block, nothing exported.
    assert bed.double.requests == []
    assert netrc_files(run.runner_temp) == []
    assert nix_conf_blocks(run.run_id) == []
    step = result.step("run")
    assert step.env_added == {}
    assert step.path_added == ()
    assert "invalid inputs" in step.summary
    assert leaks(run, bed.nix) == []


@pytest.mark.nix
@pytest.mark.slow
def test_every_bad_input_is_listed_in_one_error(bed: Bed) -> None:
    bad = {"push-cache": "maybe", "push-jobs": "0", "attic-cache": "a b", "nix-version": "x"}
    run = bed.run(f"touch {MARKER}", token=bed.token(), inputs=bad)
    errors = run.annotations("error")
    assert run.result.exit_code == 1, run.dump()
    assert len(errors) == 1, run.dump()
    for name in bad:
        assert f"`{name}`" in errors[0].message
    assert not (run.workspace / MARKER).exists()
    assert bed.double.requests == []


@pytest.mark.nix
@pytest.mark.slow
def test_a_refused_url_with_credentials_is_not_echoed(bed: Bed) -> None:
    password = "hunter2-d1b8f0c2a9e7"
    run = bed.run(
        f"touch {MARKER}",
        token=None,
        inputs={"attic-server": f"https://ci:{password}@cache.example.com/"},
    )
    assert run.result.exit_code == 1, run.dump()
    assert password not in run.result.raw_output
    assert password not in run.summary


@pytest.mark.nix
@pytest.mark.slow
def test_hostile_but_valid_values_run_as_written_and_inject_nothing(bed: Bed) -> None:
    """Multi-line commands with metacharacters are legitimate; nothing in any value is ever
    evaluated by anything but the command's own bash, and no line becomes a workflow command."""
    command = (
        "x='$(touch pwned-by-quote)'; echo \"$x\" > literal\n"
        "echo '${{ github.token }}' >> literal\n"
        "cat > /dev/null <<'EOF'\n::error title=injected::from-the-command-text\nEOF\n"
        "printf '%s\\n' \"second line ran\" >> literal\n"
        f"touch {MARKER}\n"
    )
    inputs = {
        "attic-enabled": "false",
        "push-paths": "$(touch pwned-by-push-paths) `touch pwned-by-backticks` ;touch pwned",
        "github-token": "$(touch pwned-by-token)",
        "extra-conf": "# $(touch pwned-by-conf)\nmax-jobs = 1",
        "push-exclude": "$(touch pwned-by-exclude)|.*",
    }
    run = bed.run(command, token=None, inputs=inputs, cache_inputs=False)
    assert run.result.exit_code == 0, run.dump()
    assert (run.workspace / MARKER).exists()
    assert (run.workspace / "literal").read_text() == (
        "$(touch pwned-by-quote)\n${{ github.token }}\nsecond line ran\n"
    )
    everywhere = [bed.root, Path.cwd(), Path("/tmp")]
    assert not [p for root in everywhere for p in root.glob("pwned*")]
    assert not [a for a in run.result.annotations if "injected" in (a.title or "") + a.message]
    assert "from-the-command-text" not in run.result.output


# --- property-based tests of the parsers ----------------------------------------------------------

key_names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}\Z")
unsafe_names = st.text(
    alphabet=st.characters(blacklist_characters=":", blacklist_categories=["Cs"]), min_size=1
).filter(lambda n: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,127}", n) is None)


@given(key_names, st.binary(min_size=32, max_size=32))
def test_any_safely_named_32_byte_key_is_accepted(name: str, key: bytes) -> None:
    assert public_key_problem(f"{name}:{base64.b64encode(key).decode()}") is None


@given(unsafe_names, st.binary(min_size=32, max_size=32))
def test_a_key_name_outside_the_safe_alphabet_is_refused(name: str, key: bytes) -> None:
    """The name goes into nix.conf: a newline in it could add settings (issue 16.3)."""
    problem = public_key_problem(f"{name}:{base64.b64encode(key).decode()}")
    assert problem is not None
    assert "key name" in problem


@given(key_names, st.binary(max_size=80).filter(lambda b: len(b) != 32))
def test_a_key_of_any_other_length_is_refused_with_its_length(name: str, key: bytes) -> None:
    problem = public_key_problem(f"{name}:{base64.b64encode(key).decode()}")
    assert problem is not None
    assert f"{len(key)} bytes" in problem


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_public_key_check_never_raises_and_refuses_non_keys(text: str) -> None:
    problem = public_key_problem(text)
    name, sep, data = text.partition(":")
    if problem is None:
        assert sep
        assert name
        assert len(base64.b64decode(data, validate=True)) == 32


def test_a_non_ascii_key_is_an_input_problem_not_a_crash() -> None:
    assert public_key_problem("team:ключ") is not None


@pytest.mark.parametrize(
    "reported",
    [
        pytest.param("team:ключ", id="non-ascii"),
        pytest.param("team:" + base64.b64encode(b"short").decode(), id="short"),
        pytest.param("no-colon-at-all", id="no-colon"),
    ],
)
def test_a_malformed_key_from_the_server_is_a_warning_not_a_crash(reported: str) -> None:
    target = CacheTarget(
        server="https://cache.example.com/",
        cache="team",
        server_source="input",
        cache_source="input",
    )
    discovery = Discovery(config=CacheConfig(public_key=reported, is_public=False), problem=None)
    plan = plan_read(target=target, pinned_key=None, discovery=discovery, token_present=True)
    assert plan.substituter is None
    assert plan.public_key is None
    messages = " ".join(p.message for p in plan.problems)
    assert "public key" in messages
    assert "ignored" in messages
    assert same_key(reported, "team:" + base64.b64encode(bytes(32)).decode()) is False


NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
store_hashes = st.text(alphabet=NIX32, min_size=32, max_size=32)
store_names = st.from_regex(r"[a-zA-Z0-9+\-_?=][a-zA-Z0-9+\-._?=]{0,40}", fullmatch=True).filter(
    lambda n: n not in (".", "..") and not n.startswith(".")
)
digests = st.binary(min_size=32, max_size=32)


@st.composite
def path_infos(draw: st.DrawFn) -> list[dict[str, object]]:
    """Path records as Nix 2.8 to 2.18 print them (full paths, nix32 ``sha256:`` hashes)."""
    bases = draw(
        st.lists(
            st.tuples(store_hashes, store_names).map(lambda t: f"{t[0]}-{t[1]}"),
            min_size=1,
            max_size=6,
            unique_by=lambda b: b[:32],
        )
    )
    records = []
    for base in bases:
        refs = draw(st.lists(st.sampled_from(bases), unique=True))
        records.append(
            {
                "path": f"/nix/store/{base}",
                "narHash": "sha256:" + nix32_encode(draw(digests)),
                "narSize": draw(st.integers(min_value=0, max_value=2**53)),
                "references": [f"/nix/store/{r}" for r in refs],
                "deriver": draw(st.none() | st.just(f"/nix/store/{base[:32]}-x.drv")),
                "signatures": draw(st.lists(st.just("cache.example.org-1:c2ln"), max_size=1)),
            }
        )
    return records


@settings(max_examples=60)
@given(path_infos(), st.booleans())
def test_path_info_json_reads_the_same_in_both_shapes(
    records: list[dict[str, object]], with_invalid: bool
) -> None:
    listed: list[object] = list(records)
    keyed: dict[str, object] = {
        str(r["path"]): {k: v for k, v in r.items() if k != "path"} for r in records
    }
    if with_invalid:
        gone = "/nix/store/" + "0" * 32 + "-collected"
        listed.append({"path": gone, "valid": False})
        keyed[gone] = None
    old = parse_path_info_json(json.dumps(listed))
    new = parse_path_info_json(json.dumps(keyed))
    assert old == new
    assert set(old) == {r["path"] for r in records}
    for record in records:
        info = old[str(record["path"])]
        assert isinstance(info, PathInfo)
        assert info.nar_size == record["narSize"]
        assert info.nar_hash.startswith("sha256:")
        assert len(info.nar_hash) == 7 + 64
        refs = record["references"]
        assert isinstance(refs, list)
        assert info.references == tuple(r.rsplit("/", 1)[-1] for r in refs)


tokens = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters='"#'),
    min_size=8,
    max_size=60,
).map(lambda s: "T0K3N" + s)


@given(st.text(max_size=200), tokens)
def test_a_merged_netrc_never_shows_the_token_in_its_repr(text: str, token: str) -> None:
    assume(token not in text)
    merged = netrc.merge(netrc.parse(text), host="cache.example.com", password=token)
    assert token not in repr(merged)
    assert token not in repr(netrc.parse(netrc.render(merged)))
    entry = netrc.lookup(netrc.parse(netrc.render(merged)), "cache.example.com")
    assert entry is not None
    assert entry.password == token


@given(st.text(min_size=1))
def test_a_secret_never_prints_itself(value: str) -> None:
    secret = Secret(value)
    for shown in (str(secret), repr(secret), f"{secret}", f"{secret!r}", f"{[secret]}"):
        assert value not in shown or value in "Secret(***)[]"
