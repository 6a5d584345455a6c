"""The real action.yml, run as the GitHub runner runs a composite action (tests/harness)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.actionrun import dump, run_nix_job

pytestmark = pytest.mark.nix

TOKEN = "attic-secret-token-4f1c9b"


@pytest.fixture(scope="session")
def tool_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One action venv for the whole session, like a runner's RUNNER_TOOL_CACHE."""
    return tmp_path_factory.mktemp("toolcache")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


def test_a_successful_command_succeeds_with_outputs(workspace: Path, tool_cache: Path) -> None:
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": "echo built > out.txt", "attic-enabled": "false"},
    )
    assert result.exit_code == 0, dump(result)
    assert (workspace / "out.txt").read_text() == "built\n"
    assert result.outputs["exit-code"] == "0"
    assert result.outputs["cache-push"] == "false"
    assert result.outputs["cache-push-reason"]
    summary = result.step("run").summary
    assert "command succeeded" in summary
    assert "disabled" in summary


def test_the_commands_exit_code_is_the_actions(workspace: Path, tool_cache: Path) -> None:
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": "echo about to fail; exit 3", "attic-enabled": "false"},
    )
    assert result.exit_code == 3, dump(result)
    assert result.outcome == "failure"
    assert result.outputs["exit-code"] == "3"
    assert "about to fail" in result.output
    assert "exit code 3" in result.step("run").summary


def test_the_command_never_sees_the_token(workspace: Path, tool_cache: Path) -> None:
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={
            "command": 'echo "token=[${ATTIC_TOKEN:-}]"; env > env.txt',
            "attic-enabled": "false",
        },
        env={"ATTIC_TOKEN": TOKEN},
    )
    assert result.exit_code == 0, dump(result)
    assert "token=[]" in result.raw_output
    assert TOKEN not in (workspace / "env.txt").read_text()
    assert "NIX_JOB_GITHUB_TOKEN" not in (workspace / "env.txt").read_text()
    assert not result.leaks(TOKEN)


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        pytest.param({"push-cache": "yes"}, "`push-cache`", id="bad-boolean"),
        pytest.param({"attic-server": "cache.example.com"}, "`attic-server`", id="url-no-scheme"),
        pytest.param({"working-directory": "nope"}, "`working-directory`", id="missing-dir"),
        pytest.param({"push-jobs": "-1"}, "`push-jobs`", id="negative-number"),
    ],
)
def test_bad_input_is_a_clear_error_and_nothing_runs(
    workspace: Path, tool_cache: Path, inputs: dict[str, str], named: str
) -> None:
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": "touch ran", **inputs},
    )
    assert result.exit_code == 1, dump(result)
    assert not (workspace / "ran").exists()
    errors = [a for a in result.annotations_of("error") if a.source == "command"]
    assert len(errors) == 1, dump(result)
    assert named in errors[0].message
    assert "nothing was run" in errors[0].message
    assert "invalid inputs" in result.step("run").summary


def test_the_command_runs_in_the_working_directory(workspace: Path, tool_cache: Path) -> None:
    (workspace / "sub").mkdir()
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": "pwd > where", "working-directory": "sub", "attic-enabled": "false"},
    )
    assert result.exit_code == 0, dump(result)
    assert (workspace / "sub" / "where").read_text().strip() == str((workspace / "sub").resolve())


def test_shell_metacharacters_run_as_written_not_injected(
    workspace: Path, tool_cache: Path
) -> None:
    command = "x='$(touch injected)'; echo \"$x\" > literal\necho second-line >> literal"
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": command, "attic-enabled": "false"},
    )
    assert result.exit_code == 0, dump(result)
    assert not (workspace / "injected").exists()
    assert (workspace / "literal").read_text() == "$(touch injected)\nsecond-line\n"


def test_second_run_reuses_the_python_environment(workspace: Path, tool_cache: Path) -> None:
    inputs = {"command": "true", "attic-enabled": "false"}
    run_nix_job(workspace=workspace, tool_cache=tool_cache, inputs=inputs)
    result = run_nix_job(workspace=workspace, tool_cache=tool_cache, inputs=inputs)
    assert result.exit_code == 0, dump(result)
    assert "reusing the Python environment" in result.step("venv").output
