"""The project's real action.yml under nektos/act, a second runner implementation.

act runs in host mode with real Nix (isolated per test, tests/nixenv.py) and the Attic double
on loopback; how it is driven is in tests/e2e/act.py. Each case is also run through the in-repo
harness (tests/actionrun.py), and both must report the same outputs and job summary.

act is not GitHub's runner. Where a test depends on one of its known differences it says so:
act sets INPUT_* variables for composite steps (nektos/act#2874), and once did not use step
``env:`` when evaluating composite inputs (nektos/act#1231: inputs here are literal ``with:``
values, so no test relies on that). No test passes only because of such a difference. Two
product bugs found under act are pinned here: non-canonical ``::add-mask ::`` commands (act
printed the masked values) and ``INPUT_*`` variables reaching the user's command.
"""

from __future__ import annotations

import base64
import subprocess
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.actionrun import (
    DEFAULT_BRANCH,
    dump,
    nix_process_env,
    pull_request_payload,
    push_payload,
    run_nix_job,
)
from tests.attic_double import AtticDouble
from tests.e2e.act import (
    RAW_PREFIX,
    ActRun,
    ActSetup,
    action_cache_of,
    require_act,
    run_act,
)
from tests.e2e.act_commands import ActCommand, parse_act_command
from tests.e2e.compare import comparable_outputs, summary_rows
from tests.harness import FAKE_GITHUB_TOKEN, ActionResult, run_action
from tests.harness.commands import parse_workflow_command
from tests.nixenv import NixEnv, require_nix, write_derivations

CACHE = "team"
PR_NUMBER = 7

# Event payloads for both runners. act derives GITHUB_REF of a pull_request from the payload's
# top-level "number" (pkg/model/github_context.go), GitHub's payload has it too.
EVENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "push": ("push", push_payload()),
    "pull_request": ("pull_request", {**pull_request_payload(fork=False), "number": PR_NUMBER}),
    "fork_pull_request": (
        "pull_request",
        {**pull_request_payload(fork=True), "number": PR_NUMBER},
    ),
}


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the module: act's action cache, whose ``tool_cache`` holds the action's venv
    (built once, used by act and the harness alike)."""
    return tmp_path_factory.mktemp("act")


@pytest.fixture(scope="module")
def act_setup(module_dir: Path) -> ActSetup:
    """act, a copy of this work tree as the action, stand-ins, the shared action cache."""
    return ActSetup.create(require_act(), module_dir)


@pytest.fixture(scope="module")
def tool_cache(module_dir: Path) -> Path:
    """RUNNER_TOOL_CACHE of act's host mode (``<action cache>/tool_cache``)."""
    return action_cache_of(module_dir) / "tool_cache"


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as server:
        server.create_cache(CACHE)  # private: reads need a token
        yield server


def precondition(ok: bool, message: str) -> None:
    """Fail the test outright, not as an assertion: in a strict xfail test (``raises=
    AssertionError``) a broken set-up must not pass for the expected failure."""
    if not ok:
        pytest.fail(f"precondition: {message}")


def token_forms(token: str) -> dict[str, str]:
    """The token and the Basic-auth forms Nix's curl derives from nix-job's netrc entry."""
    return {
        "token": token,
        "base64(':' + token)": base64.b64encode(f":{token}".encode()).decode(),
        "base64('nix-job:' + token)": base64.b64encode(f"nix-job:{token}".encode()).decode(),
    }


def cache_inputs(double: AtticDouble, command: str, **more: str) -> dict[str, str]:
    return {"command": command, "attic-server": double.url, "attic-cache": CACHE, **more}


def act_run(
    setup: ActSetup,
    work: Path,
    *,
    event: str,
    inputs: Mapping[str, str],
    process_env: Mapping[str, str],
    attic_token: str | None = None,
) -> ActRun:
    """nix-job under act; the Attic token, if any, as a secret mapped into the step's env."""
    event_name, payload = EVENTS[event]
    secrets = {"GITHUB_TOKEN": FAKE_GITHUB_TOKEN}
    if attic_token is not None:
        secrets["ATTIC_TOKEN"] = attic_token
    return run_act(
        setup,
        work=work,
        event=event_name,
        payload=payload,
        inputs=inputs,
        process_env=process_env,
        secrets=secrets,
        attic_token_from_secret=attic_token is not None,
    )


def harness_run(
    setup: ActSetup,
    work: Path,
    *,
    event: str,
    inputs: Mapping[str, str],
    process_env: Mapping[str, str],
    attic_token: str | None = None,
) -> ActionResult:
    """The same case through the in-repo harness, sharing act's tool cache."""
    work.mkdir(parents=True)
    (work / "out").mkdir()
    return run_nix_job(
        workspace=work,
        tool_cache=setup.tool_cache,
        inputs=inputs,
        event=event,
        env={"ATTIC_TOKEN": attic_token} if attic_token else {},
        process_env={**process_env, "NIXJOB_TEST_OUT": str(work / "out")},
        payload=EVENTS[event][1],
        secrets=(attic_token,) if attic_token else (),
    )


def assert_agree(act: ActRun, harness: ActionResult) -> None:
    """Same outcome, same outputs (timings aside), same summary rows (times aside)."""
    assert act.outcome == harness.outcome, f"act: {act.tail}\nharness: {dump(harness)}"
    assert comparable_outputs(act.outputs) == comparable_outputs(harness.outputs)
    assert summary_rows(act.summary) == summary_rows(harness.step("run").summary)


def delete_local(nix: NixEnv, *paths: str) -> None:
    """Forget store paths locally, as a fresh runner would not have them."""
    nix.run(["nix-store", "--delete", *paths])
    assert not any(Path(p).exists() for p in paths)


# ------------------------------------------------------------------------------ the cases


@pytest.mark.nix
def test_a_push_to_the_default_branch_publishes_the_closure(
    act_setup: ActSetup, nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    token = double.make_token({CACHE: "rw"})
    # The same command text for both runners; each builds its own, never-built derivations.
    command = 'nix-build "$NIXJOB_TEST_DRV" -A d1'
    inputs = cache_inputs(double, command, **{"push-cache": "true"})
    act_drv = write_derivations(tmp_path / "src-act", count=2, chain=True)

    run = act_run(
        act_setup,
        tmp_path / "act",
        event="push",
        inputs=inputs,
        process_env=nix_process_env(nix, NIXJOB_TEST_DRV=str(act_drv.file)),
        attic_token=token,
    )

    assert run.returncode == 0, run.tail
    assert run.outputs["cache-push"] == "true", run.tail
    top = act_drv.out_paths(nix)["d1"]
    closure = nix.text(["nix-store", "-qR", top]).split()
    assert len(closure) == 2
    for path in closure:
        stored = double.get_object(CACHE, path)
        assert stored is not None, f"{path} was not published\n{run.tail}"
        assert stored.nar == nix.dump(path)
        references = {Path(r).name for r in nix.query("--references", path)}
        assert set(stored.references) == references
    assert int(run.outputs["paths-pushed"]) >= len(closure)

    harness_drv = write_derivations(tmp_path / "src-harness", count=2, chain=True)
    harness = harness_run(
        act_setup,
        tmp_path / "harness",
        event="push",
        inputs=inputs,
        process_env=nix_process_env(nix, NIXJOB_TEST_DRV=str(harness_drv.file)),
        attic_token=token,
    )
    assert_agree(run, harness)


@pytest.mark.nix
@pytest.mark.parametrize("event", ["fork_pull_request", "pull_request"])
def test_a_pull_request_with_a_push_token_only_reads(
    act_setup: ActSetup, nix: NixEnv, double: AtticDouble, tmp_path: Path, event: str
) -> None:
    path = write_derivations(tmp_path / "src", count=1).build(nix)[0]
    double.put_path(CACHE, store_path=path, nar=nix.dump(path))
    delete_local(nix, path)
    token = double.make_token({CACHE: "rw"})
    inputs = cache_inputs(double, f"nix-store --realise {path}", **{"push-cache": "true"})

    run = act_run(
        act_setup,
        tmp_path / "act",
        event=event,
        inputs=inputs,
        process_env=nix_process_env(nix),
        attic_token=token,
    )

    assert run.returncode == 0, run.tail
    assert run.outputs["cache-push"] == "false"
    assert "pull request" in run.outputs["cache-push-reason"]
    writes = [f"{r.method} {r.path}" for r in double.write_requests()]
    assert writes == [], "a pull request sent an upload or get-missing-paths"
    assert any(r.path.endswith(".narinfo") for r in double.requests), "the cache was not read"
    assert Path(path).exists()
    assert f"copying path '{path}'" in run.log, run.tail

    delete_local(nix, path)
    double.clear_requests()
    harness = harness_run(
        act_setup,
        tmp_path / "harness",
        event=event,
        inputs=inputs,
        process_env=nix_process_env(nix),
        attic_token=token,
    )
    assert [f"{r.method} {r.path}" for r in double.write_requests()] == []
    assert_agree(run, harness)


@pytest.mark.nix
def test_attic_disabled_sends_nothing_to_the_server(
    act_setup: ActSetup, nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    token = double.make_token({CACHE: "rw"})
    inputs = cache_inputs(
        double, "nix --version", **{"attic-enabled": "false", "push-cache": "true"}
    )
    env = nix_process_env(nix)

    run = act_run(
        act_setup, tmp_path / "act", event="push", inputs=inputs, process_env=env, attic_token=token
    )

    assert run.returncode == 0, run.tail
    assert double.requests == []
    assert run.outputs["cache-push"] == "false"
    assert "no Attic cache is attached" in run.outputs["cache-push-reason"]
    harness = harness_run(
        act_setup,
        tmp_path / "harness",
        event="push",
        inputs=inputs,
        process_env=env,
        attic_token=token,
    )
    assert double.requests == []
    assert_agree(run, harness)


@pytest.mark.nix
def test_a_bad_input_fails_before_the_command_runs(
    act_setup: ActSetup, nix: NixEnv, tmp_path: Path
) -> None:
    inputs = {"command": 'touch "$NIXJOB_TEST_OUT/ran"', "push-jobs": "0"}
    env = nix_process_env(nix)

    run = act_run(act_setup, tmp_path / "act", event="push", inputs=inputs, process_env=env)

    assert run.returncode != 0, run.tail
    assert run.outcome == "failure"
    assert not (tmp_path / "act" / "out" / "ran").exists()
    assert run.outputs["exit-code"] == ""
    errors = run.annotations("error")
    assert len(errors) == 1, run.tail
    assert "`push-jobs`" in errors[0].data
    harness = harness_run(
        act_setup, tmp_path / "harness", event="push", inputs=inputs, process_env=env
    )
    assert not (tmp_path / "harness" / "out" / "ran").exists()
    assert_agree(run, harness)


@pytest.mark.nix
def test_the_commands_exit_code_is_the_jobs(
    act_setup: ActSetup, nix: NixEnv, tmp_path: Path
) -> None:
    inputs = {"command": "echo about to fail; exit 3", "attic-enabled": "false"}
    env = nix_process_env(nix)

    run = act_run(act_setup, tmp_path / "act", event="push", inputs=inputs, process_env=env)

    assert run.returncode != 0, run.tail
    assert run.outcome == "failure"
    assert run.outputs["exit-code"] == "3"
    assert "about to fail" in run.step_lines
    harness = harness_run(
        act_setup, tmp_path / "harness", event="push", inputs=inputs, process_env=env
    )
    assert harness.exit_code == 3
    assert_agree(run, harness)


# ------------------------------------------------------------------------------ secrets


def publishing_run(
    act_setup: ActSetup,
    nix: NixEnv,
    double: AtticDouble,
    tmp_path: Path,
    token: str,
    *,
    token_as_secret: bool,
) -> ActRun:
    """A push that attaches the cache (netrc written), builds and publishes; the token either
    as a secret (act masks it) or only in act's environment (act knows nothing of it)."""
    drv = write_derivations(tmp_path / "src", count=1)
    inputs = cache_inputs(double, f"nix-build {drv.file}", **{"push-cache": "true"})
    env = nix_process_env(nix)
    if not token_as_secret:
        env["ATTIC_TOKEN"] = token  # host mode hands act's environment to every step
    run = act_run(
        act_setup,
        tmp_path / "act",
        event="push",
        inputs=inputs,
        process_env=env,
        attic_token=token if token_as_secret else None,
    )
    precondition(run.returncode == 0, run.tail)
    precondition(run.outputs.get("cache-push") == "true", run.tail)
    precondition(int(run.outputs.get("paths-pushed") or 0) >= 1, run.tail)
    return run


@pytest.mark.nix
def test_nix_job_prints_no_form_of_the_token(
    act_setup: ActSetup, nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    """The token reaches nix-job only through act's environment, so act masks nothing of it:
    any line that shows it, other than nix-job's own add-mask commands, is nix-job's doing."""
    token = double.make_token({CACHE: "rw"})
    run = publishing_run(act_setup, nix, double, tmp_path, token, token_as_secret=False)

    leaks = [
        line.replace(form, f"<{name}>")
        for line in run.log.splitlines()
        for name, form in token_forms(token).items()
        if form in line and not line.removeprefix(RAW_PREFIX).startswith("::add-mask")
    ]
    assert leaks == [], "\n".join(leaks)


@pytest.mark.nix
def test_no_form_of_the_token_appears_in_acts_output(
    act_setup: ActSetup, nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    """Product bug: nix-job writes ``::add-mask ::VALUE`` (github-action-utils' space); GitHub's
    runner accepts it, act's parser (and Gitea's, Forgejo's) does not, so the line is printed
    as text and the derived base64 forms, which only nix-job knows, show in the log."""
    token = double.make_token({CACHE: "rw"})
    run = publishing_run(act_setup, nix, double, tmp_path, token, token_as_secret=True)

    forms = {**token_forms(token), "GitHub token": FAKE_GITHUB_TOKEN}
    leaks = [
        line.replace(form, f"<{name}>")
        for line in run.log.splitlines()
        for name, form in forms.items()
        if form in line
    ]
    assert leaks == [], "\n".join(leaks)


@dataclass(frozen=True, slots=True)
class CommandEnv:
    """The environment the user's command got under act, and the Attic token of that run."""

    variables: dict[str, str] = field(repr=False)  # values may hold secrets
    attic_token: str = field(repr=False)


@pytest.fixture
def command_env(
    act_setup: ActSetup, nix: NixEnv, double: AtticDouble, tmp_path: Path
) -> CommandEnv:
    """A push reading the cache with a push-capable token (push-cache off) and a GitHub token
    given to nix-job (`github-token`); the command dumps its environment."""
    token = double.make_token({CACHE: "rw"})
    inputs = cache_inputs(
        double, 'env -0 > "$NIXJOB_TEST_OUT/cmd-env"', **{"github-token": FAKE_GITHUB_TOKEN}
    )
    run = act_run(
        act_setup,
        tmp_path / "act",
        event="push",
        inputs=inputs,
        process_env=nix_process_env(nix),
        attic_token=token,
    )
    precondition(run.returncode == 0, run.tail)
    entries = (tmp_path / "act" / "out" / "cmd-env").read_text().split("\0")
    variables = dict(entry.split("=", 1) for entry in entries if entry)
    return CommandEnv(variables=variables, attic_token=token)


@pytest.mark.nix
def test_the_command_never_sees_the_attic_token(command_env: CommandEnv) -> None:
    assert "ATTIC_TOKEN" not in sorted(command_env.variables)
    holding = [k for k, v in command_env.variables.items() if command_env.attic_token in v]
    assert holding == []


@pytest.mark.nix
def test_the_command_sees_neither_the_github_token_nor_inputs(command_env: CommandEnv) -> None:
    """Product bug, seen only under act (nektos/act#2874 sets INPUT_* for composite steps;
    GitHub's runner does not): ``INPUT_GITHUB-TOKEN`` and every other ``INPUT_*`` reach the
    user's command because nix-job keeps them in its environment."""
    assert [k for k in sorted(command_env.variables) if k.startswith("INPUT_")] == []
    assert [k for k, v in command_env.variables.items() if FAKE_GITHUB_TOKEN in v] == []


# ------------------------------------------------------------------------------ act's grammar


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("::add-mask::s3cret", ActCommand(name="add-mask", data="s3cret"), id="mask"),
        pytest.param("::add-mask ::s3cret", None, id="space-without-properties-is-text"),
        pytest.param(
            "::warning title=a%3Ab,file=x.py::one%0Atwo",
            ActCommand(
                name="warning", properties={"title": "a:b", "file": "x.py"}, data="one\ntwo"
            ),
            id="properties-unescaped",
        ),
        pytest.param("::group::Build", ActCommand(name="group", data="Build"), id="group"),
        pytest.param("::endgroup::", ActCommand(name="endgroup"), id="endgroup"),
        pytest.param("  ::add-mask::x", None, id="indented-is-text"),
        pytest.param(
            "::error title=a=b::m", ActCommand(name="error", data="m"), id="two-equals-dropped"
        ),
        pytest.param(
            "::add-mask::a::b", ActCommand(name="add-mask::a", data="b"), id="colons-move-into-name"
        ),
        pytest.param("##[add-mask]x", ActCommand(name="add-mask", data="x"), id="azure-form"),
        pytest.param("plain text", None, id="text"),
    ],
)
def test_acts_command_grammar(line: str, expected: ActCommand | None) -> None:
    assert parse_act_command(line) == expected


@dataclass(frozen=True, slots=True)
class EmittingCase:
    """A harness run of nix-job and the workflow commands it must emit (so that there is
    something to check)."""

    event: str
    inputs: dict[str, str]
    emitted: frozenset[str]


def command_head(line: str) -> str:
    """A command line without its data (which may hold a secret), for failure messages."""
    end = line.find("::", 2)
    return line[: end + 2] + "…" if end > 0 else line[:20] + "…"


@pytest.mark.nix
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            EmittingCase(  # masks, groups, the push-token warning, the read-only notice
                "pull_request",
                {"command": "true", "push-cache": "true"},
                frozenset({"add-mask", "group", "endgroup", "warning", "notice"}),
            ),
            id="pull-request",
        ),
        pytest.param(
            EmittingCase(
                "push", {"command": "true", "push-jobs": "0"}, frozenset({"add-mask", "error"})
            ),
            id="bad-input",
        ),
    ],
)
def test_every_workflow_command_nix_job_emits_means_the_same_to_act(
    nix: NixEnv, double: AtticDouble, tool_cache: Path, tmp_path: Path, case: EmittingCase
) -> None:
    """Product bug (masks not applied under act): each ``::`` line of nix-job's step, parsed
    by GitHub's runner grammar (the harness's) and by act's (tests/e2e/act_commands.py), must be
    the same command with the same properties and data, i.e. canonical: ``::add-mask::VALUE``,
    ``::group::title``, ``::warning title=…::msg``. Runs through the harness; no act needed."""
    token = double.make_token({CACHE: "rw"})
    (tmp_path / "ws").mkdir()
    result = run_nix_job(
        workspace=tmp_path / "ws",
        tool_cache=tool_cache,
        inputs={**cache_inputs(double, ""), **case.inputs},
        event=case.event,
        env={"ATTIC_TOKEN": token},
        process_env=nix_process_env(nix),
        payload=EVENTS[case.event][1],
        secrets=(token,),
    )
    lines = [line for line in result.step("run").raw_output.splitlines() if line.startswith("::")]
    kinds = {c.name for c in map(parse_workflow_command, lines) if c is not None}
    precondition(case.emitted <= kinds, f"expected {set(case.emitted)} among {kinds}")

    disagreements = []
    for line in lines:
        runner = parse_workflow_command(line)
        act = parse_act_command(line)
        as_runner = (
            None
            if runner is None
            else ActCommand(name=runner.name, properties=runner.properties, data=runner.data)
        )
        as_act = (
            None
            if act is None
            else ActCommand(
                name=act.name,
                properties={k: v for k, v in act.properties.items() if v},
                data=act.data,
            )
        )
        if as_runner is None or as_act != as_runner:
            seen = "text" if as_act is None else f"command {as_act.name!r}"
            disagreements.append(f"{command_head(line)} runner: command, act: {seen}")
    assert disagreements == [], "\n".join(disagreements)


# ------------------------------------------------------------------------------ a toy action

TOY_ACTION = """
name: toy
inputs:
  who: {required: true}
outputs:
  greeting: {value: "${{ steps.hello.outputs.greeting }}"}
runs:
  using: composite
  steps:
    - id: hello
      shell: bash
      env: {WHO: "${{ inputs.who }}"}
      run: |
        echo "greeting=hi $WHO" >> "$GITHUB_OUTPUT"
        echo "FROM_ENV_FILE=yes" >> "$GITHUB_ENV"
    - id: later
      shell: bash
      run: echo "later-step env=$FROM_ENV_FILE input-vars=$(env | grep -c '^INPUT_' || true)"
"""

TOY_WORKFLOW = """
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - id: toy
        uses: ./toy
        with: {who: world}
      - run: echo "action-output=${{ steps.toy.outputs.greeting }}"
"""


def test_act_and_the_harness_agree_on_a_toy_action(act_setup: ActSetup, tmp_path: Path) -> None:
    """Depends on nektos/act#2874 on purpose: the harness imitates act's INPUT_* here, and the
    ``later`` step's count of them must match."""
    repo = tmp_path / "repo"
    (repo / "toy").mkdir(parents=True)
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / "toy" / "action.yml").write_text(textwrap.dedent(TOY_ACTION))
    (repo / ".github" / "workflows" / "toy.yml").write_text(textwrap.dedent(TOY_WORKFLOW))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", DEFAULT_BRANCH], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "toy"], check=True)

    act = subprocess.run(
        [
            act_setup.act,
            "push",
            "--platform",
            "ubuntu-latest=-self-hosted",
            "--action-cache-path",
            str(act_setup.action_cache),
            "--no-cache-server",
            "--secret",
            f"GITHUB_TOKEN={FAKE_GITHUB_TOKEN}",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert act.returncode == 0, act.stdout[-4000:] + act.stderr[-4000:]
    harness = run_action(
        repo / "toy",
        inputs={"who": "world"},
        env={},
        event_name="push",
        event_payload={"repository": {"default_branch": DEFAULT_BRANCH}},
        ref=f"refs/heads/{DEFAULT_BRANCH}",
        workspace=repo,
        imitate_act=True,
    )
    harness.assert_success()
    assert harness.outputs == {"greeting": "hi world"}
    assert "action-output=hi world" in act.stdout
    later = harness.step("later").output.strip()
    assert later in act.stdout, f"harness printed {later!r}; act did not"
