"""The command runner: exit codes, environment scrubbing, signals, no stray processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from nix_job.command import Cancellation, exit_code_of, run_command
from nix_job.process import scrubbed_env


def run(
    script: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    cancellation: Cancellation | None = None,
) -> tuple[int, bool]:
    result = run_command(
        script,
        cwd=tmp_path,
        env=env or {"PATH": os.environ["PATH"]},
        script_dir=tmp_path / "scripts",
        cancellation=cancellation or Cancellation(),
        kill_after=2.0,
    )
    return result.exit_code, result.cancelled


@pytest.mark.parametrize(
    ("script", "code"),
    [
        pytest.param("true", 0, id="success"),
        pytest.param("exit 3", 3, id="exit-3"),
        pytest.param("false\necho not reached", 1, id="errexit-stops-at-first-failure"),
        pytest.param("false | true", 1, id="pipefail"),
        pytest.param("kill -TERM $$", 143, id="killed-by-signal-is-128-plus-n"),
    ],
)
def test_exit_code_is_the_commands(tmp_path: Path, script: str, code: int) -> None:
    assert run(script, tmp_path) == (code, False)


def test_runs_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "marker").write_text("here")
    assert run("test -f marker", tmp_path)[0] == 0


def test_the_scrubbed_env_drops_the_token_inputs_and_act_inputs_and_adds_ours() -> None:
    base = {
        "ATTIC_TOKEN": "s3cret",
        "NIX_JOB_GITHUB_TOKEN": "ghs_x",
        "NIX_JOB_COMMAND": "x",
        "INPUT_GITHUB-TOKEN": "ghs_x",  # act sets INPUT_* for composite steps (nektos/act#2874)
        "INPUT_COMMAND": "x",
        "ATTIC_SERVER": "https://cache.example/",
        "ACTIONS_ID_TOKEN_REQUEST_URL": "https://example/",
        "HOME": "/home/u",
    }
    env = scrubbed_env(base, {"NIX_JOB_CACHE_PUSH": "true"})
    # GitHub's ID-token request pair goes too: with it, code could mint this job's ID tokens.
    assert env == {
        "HOME": "/home/u",
        "ATTIC_SERVER": "https://cache.example/",
        "NIX_JOB_CACHE_PUSH": "true",
    }


def test_the_command_does_not_see_the_token(tmp_path: Path) -> None:
    env = scrubbed_env({"PATH": os.environ["PATH"], "ATTIC_TOKEN": "s3cret"})
    code, _ = run('test -z "${ATTIC_TOKEN:-}" && env > env.txt', tmp_path, env)
    assert code == 0
    assert "s3cret" not in (tmp_path / "env.txt").read_text()


def test_script_is_not_on_argv(tmp_path: Path) -> None:
    code, _ = run(
        "cat /proc/$$/cmdline | tr '\\0' ' ' > argv.txt; echo unique-marker >/dev/null", tmp_path
    )
    assert code == 0
    argv = (tmp_path / "argv.txt").read_text()
    assert "unique-marker" not in argv
    assert "command.sh" in argv


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cancellation_is_forwarded_and_exit_code_is_conventional(
    tmp_path: Path, signum: int
) -> None:
    cancellation = Cancellation()
    threading.Timer(0.5, cancellation.trigger, args=(signum,)).start()
    started = time.monotonic()
    code, cancelled = run(
        "trap 'echo got-signal > caught; exit 7' INT TERM\nsleep 30 & wait",
        tmp_path,
        cancellation=cancellation,
    )
    assert cancelled
    assert code == 7  # the command's own answer to the forwarded signal
    assert (tmp_path / "caught").read_text().strip() == "got-signal"
    assert time.monotonic() - started < 10
    assert cancellation.exit_code == 128 + signum


def test_a_command_ignoring_the_signal_is_killed_after_the_grace(tmp_path: Path) -> None:
    cancellation = Cancellation()
    threading.Timer(0.3, cancellation.trigger).start()
    code, cancelled = run("trap '' INT TERM\nsleep 30", tmp_path, cancellation=cancellation)
    assert cancelled
    assert code == 128 + signal.SIGKILL


def test_background_children_do_not_outlive_the_command(tmp_path: Path) -> None:
    code, _ = run("sleep 60 &\necho $! > bg.pid", tmp_path)
    assert code == 0
    pid = int((tmp_path / "bg.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # a zombie until reaped by init counts as gone
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the background child survived the command")


def test_cancelled_before_start_runs_nothing(tmp_path: Path) -> None:
    cancellation = Cancellation()
    cancellation.trigger(signal.SIGINT)
    code, cancelled = run("touch ran", tmp_path, cancellation=cancellation)
    assert (code, cancelled) == (130, True)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(("returncode", "code"), [(0, 0), (5, 5), (-15, 143), (-9, 137)])
def test_exit_code_of(returncode: int, code: int) -> None:
    assert exit_code_of(returncode) == code
