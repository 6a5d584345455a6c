"""``nix-job run``: flags and NIX_JOB_* variables from the one input table, the command after
``--``, front ends by environment, usage errors; and the entrypoint's other commands."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from nix_job import __main__ as entry
from nix_job import cli, frontends
from nix_job.args import UsageError
from nix_job.core.decision import GateInputs
from nix_job.core.input_specs import INPUT_SPECS
from nix_job.frontends.generic import GenericFrontend, decide_generic
from nix_job.frontends.github.frontend import GitHubFrontend
from nix_job.frontends.gitlab.frontend import GitLabFrontend

ROOT = Path(__file__).resolve().parent.parent


def flags(**given: str) -> dict[str, str | None]:
    parsed = cli.parser().parse_args([f"--{k.replace('_', '-')}={v}" for k, v in given.items()])
    return vars(parsed)


def test_every_input_but_credentials_is_a_flag_and_a_variable() -> None:
    options = {a.dest: a.option_strings for a in cli.parser()._actions}
    for spec in INPUT_SPECS:
        if spec.secret:
            assert spec.field not in options, f"{spec.name} is a credential, never a flag"
        else:
            assert options[spec.field] == [f"--{spec.name}"]


@pytest.mark.parametrize(
    ("env", "given", "command", "expected"),
    [
        pytest.param({}, {}, [], {}, id="nothing-given"),
        pytest.param(
            {"NIX_JOB_PUSH_CACHE": "true"}, {}, [], {"NIX_JOB_PUSH_CACHE": "true"}, id="variable"
        ),
        pytest.param(
            {"NIX_JOB_PUSH_CACHE": "true"},
            {"push_cache": "false"},
            [],
            {"NIX_JOB_PUSH_CACHE": "false"},
            id="a-flag-wins-over-the-variable",
        ),
        pytest.param(
            {},
            {},
            ["nix", "build", ".#a b"],
            {"NIX_JOB_COMMAND": "nix build '.#a b'"},
            id="command-after-double-dash-is-quoted",
        ),
        pytest.param(
            {"NIX_JOB_COMMAND": "make"},
            {},
            ["nix", "flake", "check"],
            {"NIX_JOB_COMMAND": "nix flake check"},
            id="words-after-double-dash-win-over-the-variable",
        ),
        pytest.param(
            {"NIX_JOB_GITHUB_TOKEN": "ghs_x", "OTHER": "y"},
            {},
            [],
            {},
            id="credentials-and-other-variables-are-not-inputs",
        ),
    ],
)
def test_input_values_come_from_flags_over_variables_over_defaults(
    env: dict[str, str], given: dict[str, str], command: list[str], expected: dict[str, str]
) -> None:
    assert cli.input_values(flags(**given), command, env) == expected


def test_the_command_cannot_be_given_twice() -> None:
    with pytest.raises(UsageError, match="either as --command or after --"):
        cli.input_values(flags(command="make"), ["make"], {})


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        pytest.param({"GITHUB_ACTIONS": "true"}, GitHubFrontend, id="github"),
        pytest.param({"GITLAB_CI": "true"}, GitLabFrontend, id="gitlab"),
        pytest.param({"GITLAB_CI": "false"}, GenericFrontend, id="gitlab-ci-local-default"),
        pytest.param({"CI": "true"}, GenericFrontend, id="another-ci"),
        pytest.param({}, GenericFrontend, id="a-workstation"),
    ],
)
def test_the_front_end_follows_the_environment(
    env: dict[str, str], kind: type, tmp_path: Path
) -> None:
    chosen = frontends.select(
        env, github_token=None, publish=False, summary_file=None, cwd=tmp_path
    )
    assert isinstance(chosen, kind)


@pytest.mark.parametrize("env", [{"GITHUB_ACTIONS": "true"}, {"GITLAB_CI": "true"}])
def test_publish_is_refused_where_a_ci_gate_decides(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(frontends.SelectionError, match="only outside"):
        frontends.select(env, github_token=None, publish=True, summary_file=None, cwd=tmp_path)


GATE_ALL = GateInputs(push_cache=True, token_present=True, cache_attached=True)


@pytest.mark.parametrize(
    ("publish", "gate", "allowed", "says"),
    [
        pytest.param(False, GATE_ALL, False, "publishes only with --publish", id="no-flag"),
        pytest.param(True, GATE_ALL, True, "no CI gate was applied", id="flag"),
        pytest.param(
            True,
            GateInputs(push_cache=False, token_present=True, cache_attached=True),
            False,
            "push-cache is false",
            id="flag-but-push-cache-false",
        ),
        pytest.param(
            True,
            GateInputs(push_cache=True, token_present=False, cache_attached=True),
            False,
            "ATTIC_TOKEN is not set",
            id="flag-without-token",
        ),
        pytest.param(
            True,
            GateInputs(push_cache=True, token_present=True, cache_attached=False),
            False,
            "no Attic cache",
            id="flag-without-cache",
        ),
    ],
)
def test_the_generic_front_end_publishes_only_when_the_caller_says_so(
    publish: bool, gate: GateInputs, allowed: bool, says: str
) -> None:
    decision = decide_generic(publish=publish, gate=gate)
    assert decision.allowed is allowed
    assert says in decision.reason


def test_usage_errors_exit_2_and_name_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--no-such-flag", "x"], {}, {}) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert cli.main(["--publish"], {"GITLAB_CI": "true"}, {}) == 2
    assert "under GitLab CI the CI's own gate decides" in capsys.readouterr().err


def test_the_entrypoint_knows_its_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("nix-job ")
    assert entry.main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_the_runtime_lock_in_the_package_is_the_lock() -> None:
    assert (
        Path(entry.runtime_lock()).read_bytes() == (ROOT / "requirements/runtime.txt").read_bytes()
    )


# Run the entry point in a fresh interpreter where the runtime packages cannot be imported, as
# right after `pip install --no-deps nix-job` (templates/nix-job.yml installs it that way).
WITHOUT_RUNTIME_PACKAGES = """
import sys
blocked = {"httpx", "jinja2", "inotify_simple", "tenacity", "anyio", "httpcore", "markupsafe"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not installed yet")
        return None
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1])
from nix_job.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("command", "prints"),
    [
        pytest.param("runtime-lock", str(ROOT / "nix_job" / "runtime-lock.txt"), id="runtime-lock"),
        pytest.param("--version", "nix-job ", id="version"),
    ],
)
def test_runtime_lock_and_version_need_no_runtime_package(command: str, prints: str) -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-c", WITHOUT_RUNTIME_PACKAGES, str(ROOT), command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(prints), done.stdout


def test_run_help_lists_every_flag() -> None:
    out = io.StringIO()
    cli.parser().print_help(out)
    for spec in INPUT_SPECS:
        assert (f"--{spec.name}" in out.getvalue()) is not spec.secret


def test_python_m_nix_job_run_works_outside_any_ci(tmp_path: Path) -> None:
    """The CLI as a process, outside any CI: the command runs, nothing is published."""
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            str(ROOT / "runtime" / "start.py"),
            "run",
            "--attic-enabled",
            "false",
            "--nix-installer",
            "none",
            "--",
            "sh",
            "-c",
            "echo ran > ran",
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "NIX_REMOTE": "local"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "ran").read_text() == "ran\n"
    assert "NIX_JOB_CACHE_PUSH=false" in done.stdout
