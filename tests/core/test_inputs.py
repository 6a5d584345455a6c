"""Input parsing: strict values, every problem reported at once, naming the input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nix_job.core.errors import InputError
from nix_job.core.input_specs import INPUT_SPECS
from nix_job.core.inputs import Inputs, parse_inputs

KEY = "cache-1:" + "A" * 43 + "="  # 32 zero-ish bytes in base64


def env_of(**values: str) -> dict[str, str]:
    return {"NIX_JOB_" + k.upper(): v for k, v in values.items()}


def parse(**values: str) -> Inputs:
    return parse_inputs(env_of(**values), is_dir=lambda p: p in (".", "sub", "a/b"))


def problems_of(**values: str) -> list[str]:
    with pytest.raises(InputError) as info:
        parse(**values)
    return info.value.problems


def test_defaults_parse_to_the_documented_values() -> None:
    inputs = parse()
    assert inputs.command == "nix build .#default"
    assert inputs.push_cache is False
    assert inputs.attic_enabled is True
    assert inputs.require_cache_push is False
    assert inputs.attic_server is None
    assert inputs.push_jobs == 6
    assert inputs.drain_timeout == 120
    assert inputs.nix_installer == "auto"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("true", True, id="lower-true"),
        pytest.param("TRUE", True, id="upper-true"),
        pytest.param(" False ", False, id="padded-false"),
        pytest.param("false", False, id="lower-false"),
    ],
)
def test_booleans_accept_only_true_or_false_in_any_case(value: str, expected: bool) -> None:
    assert parse(push_cache=value).push_cache is expected


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        pytest.param("push_cache", "yes", "`push-cache` must be true or false", id="bool-yes"),
        pytest.param("push_cache", "1", "`push-cache` must be true or false", id="bool-1"),
        pytest.param("attic_enabled", "", "`attic-enabled` must be true or false", id="bool-empty"),
        pytest.param("require_cache_push", "flase", "'flase'", id="bool-typo-named"),
        pytest.param("attic_server", "ftp://x/", "https://", id="url-scheme"),
        pytest.param("attic_server", "https://", "has no host", id="url-no-host"),
        pytest.param("attic_server", "https://u:p@h/", "credentials", id="url-credentials"),
        pytest.param("attic_server", "https://h/ x", "whitespace", id="url-space"),
        pytest.param("attic_server", "https://h/?a=1", "query", id="url-query"),
        pytest.param("attic_server", "https://h:99999/", "attic-server", id="url-bad-port"),
        pytest.param("attic_cache", "-leading", "attic-cache", id="cache-leading-dash"),
        pytest.param("attic_cache", "a" * 51, "attic-cache", id="cache-too-long"),
        pytest.param("attic_cache", "bad/name", "attic-cache", id="cache-slash"),
        pytest.param("attic_public_key", "nokey", "name:base64", id="key-no-colon"),
        pytest.param("attic_public_key", "k:!!!", "invalid base64", id="key-bad-base64"),
        pytest.param("attic_public_key", "k:AAAA", "32-byte", id="key-short"),
        pytest.param(
            "attic_public_key",
            "#\npost-build-hook = /tmp/evil.sh\nk:" + "A" * 43 + "=",
            "key name",
            id="key-name-with-newlines",
        ),
        pytest.param("extra_conf", "# END nix-job", "block marker", id="conf-end-marker"),
        pytest.param(
            "push_exclude", r"^/nix/store/(\w+)+-doc$", "repeats a group", id="exclude-nested"
        ),
        pytest.param("extra_conf", "a = b\x0bc = d", "control character", id="conf-control"),
        pytest.param("push_jobs", "0", "`push-jobs` must be a whole number", id="jobs-zero"),
        pytest.param("push_jobs", "-3", "from 1 to 64", id="jobs-negative"),
        pytest.param("push_jobs", "65", "from 1 to 64", id="jobs-huge"),
        pytest.param("push_jobs", "2.5", "from 1 to 64", id="jobs-fraction"),
        pytest.param("drain_timeout", "99999999999", "0 to 3600", id="drain-huge"),
        pytest.param("push_exclude", "(", "not a valid regex", id="exclude-bad-regex"),
        pytest.param("nix_installer", "brew", "auto, upstream", id="installer-unknown"),
        pytest.param("nix_version", "latest", "2.24.10", id="version-word"),
        pytest.param("nix_installer_url", "file:///x", "https://", id="installer-url-file"),
        pytest.param("nix_installer_sha256", "abc", "64 hexadecimal", id="sha-short"),
        pytest.param("extra_conf", "not a setting", "line 1", id="conf-no-equals"),
        pytest.param("push_max_size", "lots", "`push-max-size` must be a size", id="size-word"),
        pytest.param("push_max_size", "0", "above zero", id="size-zero"),
        pytest.param("push_max_size", "-5M", "'-5M'", id="size-negative"),
        pytest.param("push_max_size", "5 PB", "'5 PB'", id="size-unknown-unit"),
        pytest.param("push_closure", "all", "runtime, build, outputs", id="closure-unknown"),
        pytest.param("command", "   ", "`command` is empty", id="command-blank"),
        pytest.param("command", "echo \x00", "NUL", id="command-nul"),
        pytest.param("working_directory", "missing", "does not exist", id="workdir-missing"),
    ],
)
def test_bad_values_name_the_input_and_the_value(name: str, value: str, fragment: str) -> None:
    problems = problems_of(**{name: value})
    assert len(problems) == 1, problems
    assert fragment in problems[0]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(push_cache="maybe", attic_server="nope", push_jobs="x", nix_version="z")
    assert len(problems) == 4
    joined = "\n".join(problems)
    for name in ("push-cache", "attic-server", "push-jobs", "nix-version"):
        assert f"`{name}`" in joined


def test_error_message_lists_problems_and_says_nothing_ran() -> None:
    with pytest.raises(InputError) as info:
        parse(push_cache="nah")
    assert "nothing was run" in info.value.message
    assert "'nah'" in info.value.message


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("echo $HOME; ls | wc -l && false || true", id="metacharacters"),
        pytest.param("set -x\nnix build\nnix flake check\n", id="multi-line"),
        pytest.param("echo '${{ github.token }}'", id="expression-lookalike"),
    ],
)
def test_commands_are_taken_verbatim(command: str) -> None:
    assert parse(command=command).command == command


def test_valid_values_are_normalised() -> None:
    inputs = parse(
        attic_server="https://cache.example.com/attic/",
        attic_cache="team+main",
        attic_public_key=KEY,
        push_paths="./result\n/nix/store/x  other",
        nix_installer="Determinate",
        nix_installer_sha256="A" * 64,
        extra_conf="# comment\nkeep-outputs = true\n\nmax-jobs = 4",
        working_directory="a/b",
    )
    assert inputs.attic_server == "https://cache.example.com/attic/"
    assert inputs.push_paths == ("./result", "/nix/store/x", "other")
    assert inputs.nix_installer == "determinate"
    assert inputs.nix_installer_sha256 == "a" * 64
    assert inputs.working_directory == "a/b"


def test_specs_have_unique_names_envs_and_match_the_dataclass() -> None:
    names = [s.name for s in INPUT_SPECS]
    assert len(names) == len(set(names))
    assert {s.field for s in INPUT_SPECS if not s.secret} == set(Inputs.__dataclass_fields__)


@given(st.dictionaries(st.sampled_from([s.env for s in INPUT_SPECS]), st.text(max_size=40)))
def test_parser_either_parses_or_raises_input_error(env: dict[str, str]) -> None:
    problems: list[str] = []
    try:
        parse_inputs(env, is_dir=lambda p: True)
    except InputError as error:
        problems = error.problems or ["<empty InputError>"]
    assert all(isinstance(p, str) and p and p != "<empty InputError>" for p in problems)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", None, id="empty-no-limit"),
        pytest.param("500M", 500 * 1024**2, id="mebibytes"),
        pytest.param(" 2g ", 2 * 1024**3, id="case-and-blanks"),
        pytest.param("1.5GiB", int(1.5 * 1024**3), id="fraction-iec"),
        pytest.param("750MB", 750 * 1024**2, id="mb-is-binary-too"),
        pytest.param("4096", 4096, id="bytes"),
    ],
)
def test_push_max_size_reads_sizes(value: str, expected: int | None) -> None:
    env = {"NIX_JOB_PUSH_MAX_SIZE": value}
    assert parse_inputs(env, is_dir=lambda _p: True).push_max_size == expected


@pytest.mark.parametrize("mode", ["runtime", "build", "outputs", " Build "])
def test_push_closure_takes_the_three_modes(mode: str) -> None:
    env = {"NIX_JOB_PUSH_CLOSURE": mode}
    assert parse_inputs(env, is_dir=lambda _p: True).push_closure == mode.strip().lower()


# --- the token exchange ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange", "audience", "expected"),
    [
        pytest.param("", "", (None, None), id="off"),
        pytest.param(
            "https://attic-exchange.example.com/",
            "",
            ("https://attic-exchange.example.com/", "https://attic-exchange.example.com"),
            id="audience-defaults-to-the-origin",
        ),
        pytest.param(
            "https://Exchange.Example.com:443/prefix/",
            "",
            ("https://Exchange.Example.com:443/prefix/", "https://exchange.example.com"),
            id="origin-lower-case-without-default-port-or-path",
        ),
        pytest.param(
            "http://127.0.0.1:8787",
            "",
            ("http://127.0.0.1:8787", "http://127.0.0.1:8787"),
            id="plain-http-on-loopback",
        ),
        pytest.param(
            "https://attic-exchange.example.com",
            "https://attic.example.com",
            ("https://attic-exchange.example.com", "https://attic.example.com"),
            id="an-explicit-audience-wins",
        ),
    ],
)
def test_the_exchange_and_its_audience(
    exchange: str, audience: str, expected: tuple[str | None, str | None]
) -> None:
    inputs = parse(attic_token_exchange=exchange, oidc_audience=audience)
    assert (inputs.attic_token_exchange, inputs.oidc_audience) == expected


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        pytest.param(
            {"attic_token_exchange": "http://exchange.example.com"},
            "`attic-token-exchange` 'http://exchange.example.com' must use https://",
            id="plain-http-elsewhere",
        ),
        pytest.param(
            {"attic_token_exchange": "http://127.attacker.example"},
            "must use https://",
            id="a-name-that-looks-like-loopback",
        ),
        pytest.param(
            {"attic_token_exchange": "https://u:secret@exchange.example.com"},
            "must not contain credentials",
            id="credentials",
        ),
        pytest.param(
            {"attic_token_exchange": "https://x.example", "oidc_audience": "a b"},
            "`oidc-audience` 'a b' contains whitespace",
            id="audience-with-space",
        ),
        pytest.param(
            {"oidc_audience": "https://attic.example.com"},
            "`oidc-audience` is set but `attic-token-exchange` is empty",
            id="audience-without-exchange",
        ),
    ],
)
def test_bad_exchange_inputs_are_named(values: dict[str, str], fragment: str) -> None:
    (problem,) = problems_of(**values)
    assert fragment in problem
    assert "secret" not in problem
