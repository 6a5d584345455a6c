"""The real action.yml, run as the GitHub runner runs a composite action (tests/harness)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.actionrun import dump, host_env, run_nix_job

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


def test_the_action_needs_no_pip_no_package_index_and_no_tool_cache(
    workspace: Path, tmp_path: Path
) -> None:
    """A cold runner: an empty tool cache, no package index reachable, pip broken. The runtime
    packages ship in runtime/vendor, so the action starts anyway and writes no environment."""
    tool_cache = tmp_path / "empty-toolcache"
    tool_cache.mkdir()
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    for name in ("pip", "pip3"):
        (broken / name).write_text("#!/bin/sh\necho pip was called >&2\nexit 99\n")
        (broken / name).chmod(0o755)
    host = host_env()
    host["PATH"] = f"{broken}:{host['PATH']}"
    host["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple"  # nothing listens there
    host["PIP_NO_INDEX"] = "1"
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": "echo started > started", "attic-enabled": "false"},
        process_env=host,
    )
    assert result.exit_code == 0, dump(result)
    assert (workspace / "started").read_text() == "started\n"
    assert "pip was called" not in result.raw_output
    assert list(tool_cache.iterdir()) == []


def test_a_python_environment_planted_in_the_tool_cache_is_never_run(
    workspace: Path, tmp_path: Path
) -> None:
    """Earlier versions reused a venv under RUNNER_TOOL_CACHE trusted by a marker file: on a
    persistent runner an earlier job could plant one (issue 16.8). Nothing there runs now."""
    tool_cache = tmp_path / "toolcache"
    marker = tmp_path / "planted-python-ran"
    for key in ("cpython3.11-x86_64-c70f8dfae2bd17fb", "cpython3.12-x86_64-0000000000000000"):
        venv = tool_cache / "nix-job" / f"venv-{key}"
        (venv / "bin").mkdir(parents=True)
        (venv / ".nix-job-complete").touch()
        python = venv / "bin" / "python"
        python.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
        python.chmod(0o755)
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": "true", "attic-enabled": "false"},
    )
    assert result.exit_code == 0, dump(result)
    assert not marker.exists()


def test_modules_on_the_runners_pythonpath_are_never_imported(
    workspace: Path, tool_cache: Path, tmp_path: Path
) -> None:
    """nix-job runs with `python -I`: a PYTHONPATH or user site set by an earlier step cannot
    put its own httpx (or anything) in place of the vendored one."""
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "planted-module-imported"
    for module in ("httpx", "jinja2", "nix_job"):
        (planted / f"{module}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    host = host_env()
    host["PYTHONPATH"] = str(planted)
    result = run_nix_job(
        workspace=workspace,
        tool_cache=tool_cache,
        inputs={"command": "true", "attic-enabled": "false"},
        process_env=host,
    )
    assert result.exit_code == 0, dump(result)
    assert not marker.exists()
