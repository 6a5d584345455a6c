"""Cancelling a GitLab job: SIGTERM to the job's process group.

GitLab Runner cancels a job on the shell executor by sending SIGTERM to the process group of
the stage's shell, and SIGKILL when the group outlives its graceful timeout
(gitlab-runner ``helpers/process/killer_unix.go``, ``killer.go``); other executors stop the
container or pod, with SIGTERM first. gitlab-ci-local does not simulate a cancel, so this test
starts ``nix-job run`` the way a job's script does, in its own process group, with a GitLab
job's variables, and signals the group. nix-job must pass the signal to the command (whose
process group it kills if the command ignores it), drain briefly, remove the netrc and be gone
with 143, well within the window, leaving none of the command's processes behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_job.command import KILL_AFTER_S
from nix_job.frontends.gitlab.frontend import CANCEL_GRACE_S, DOTENV_FILE, SUMMARY_FILE
from nix_job.run import CANCELLED_RESTORE_S
from tests.attic_double import AtticDouble, Faults
from tests.e2e.test_reliability_support import (
    find_in_bytes,
    kill_group_quietly,
    leaks_in_tree,
    live_members,
    netrc_files,
    secret_forms,
)
from tests.gitlab.local import REPO_ROOT
from tests.nixenv import NixEnv, require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

CACHE = "team"
# The longest nix-job may take after SIGTERM: the command is killed KILL_AFTER_S after it was
# passed the signal, the drain gets CANCEL_GRACE_S, each wait of the restore at most
# CANCELLED_RESTORE_S; plus a margin for a loaded machine. The shell executor's graceful
# timeout is 10 minutes; this bound is what nix-job promises, not the runner's window.
PROMPT_S = KILL_AFTER_S + CANCEL_GRACE_S + CANCELLED_RESTORE_S + 3.0
RUNNING = "command-is-running"


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as server:
        server.create_cache(CACHE)
        yield server


def gitlab_job_env(nix: NixEnv, project: Path, double: AtticDouble, token: str) -> dict[str, str]:
    """A protected default-branch push job's environment, as the runner gives it."""
    return {
        **nix.env({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}),
        "GITLAB_CI": "true",
        "CI": "true",
        "CI_PIPELINE_SOURCE": "push",
        "CI_DEFAULT_BRANCH": "main",
        "CI_COMMIT_BRANCH": "main",
        "CI_COMMIT_REF_NAME": "main",
        "CI_COMMIT_REF_PROTECTED": "true",
        "CI_PROJECT_DIR": str(project),
        "CI_JOB_ID": "4242",
        "ATTIC_TOKEN": token,
        "NIX_JOB_ATTIC_SERVER": double.url,
        "NIX_JOB_ATTIC_CACHE": CACHE,
        "NIX_JOB_PUSH_CACHE": "true",
        "NIX_JOB_DRAIN_TIMEOUT": "120",
    }


@pytest.mark.parametrize(
    ("command", "uploads_hang", "command_exit"),
    [
        pytest.param(
            "(sleep 300; touch survived) &\nsleep 300 &\nwait\n",
            False,
            143,  # bash ended by the SIGTERM nix-job passed on
            id="command-with-background-children",
        ),
        # The slow end: the command ignores SIGTERM (nix-job kills its group) and the drain
        # still has an upload the server holds for 30 s.
        pytest.param(
            "trap '' TERM\n(trap '' TERM; sleep 300; touch survived) &\nsleep 300\n",
            True,
            137,  # killed by nix-job
            id="command-ignoring-sigterm-with-an-upload-pending",
        ),
    ],
)
def test_sigterm_to_the_jobs_process_group_ends_the_run_promptly_and_cleanly(
    tmp_path: Path, double: AtticDouble, command: str, uploads_hang: bool, command_exit: int
) -> None:
    require_nix()
    nix = NixEnv.create(tmp_path / "nix")
    project = tmp_path / "project"
    project.mkdir()
    drv = write_derivations(tmp_path / "src", count=1)
    if uploads_hang:
        double.faults = Faults(upload_delay_s=30.0)
    token = double.make_token({CACHE: "rw"})
    script = (
        "read -r _ _ _ _ pgid _ < /proc/$$/stat; echo $pgid > pgid\n"
        f"nix-build {drv.file}\n"
        f"echo {RUNNING}\n" + command
    )
    env = {**gitlab_job_env(nix, project, double, token), "NIX_JOB_COMMAND": script}

    with subprocess.Popen(
        [sys.executable, "-I", str(REPO_ROOT / "runtime" / "start.py"), "run"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a job's shell on the runner
    ) as proc:
        assert proc.stdout is not None
        lines: list[bytes] = []
        seen = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if RUNNING.encode() in line:
                    seen.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert seen.wait(120), b"".join(lines).decode(errors="replace")
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGTERM)  # what the runner does on cancel
            signalled = time.monotonic()
            code = proc.wait(timeout=PROMPT_S + 30)
            took = time.monotonic() - signalled
        finally:
            kill_group_quietly(proc.pid)
        reader.join(10)
    output = b"".join(lines)
    shown = output.decode(errors="replace")

    assert code == 143, shown
    assert took < PROMPT_S, f"nix-job took {took:.1f} s after SIGTERM:\n{shown}"
    pgid = int((project / "pgid").read_text().split()[0])
    survivors = live_members(pgid)
    kill_group_quietly(pgid)
    assert survivors == [], f"the command's processes outlived the run: {survivors}"
    assert not (project / "survived").exists()
    assert netrc_files(nix.root / "tmp") == [], "the netrc was left behind"
    # The reports are written: the command's own exit code, and that the run was cancelled.
    report = (project / DOTENV_FILE).read_text().splitlines()
    assert f"NIX_JOB_EXIT_CODE={command_exit}" in report
    assert "cancelled" in (project / SUMMARY_FILE).read_text()
    # What the command built before the cancel was still published.
    assert double.has_path(CACHE, drv.out_paths(nix)["d0"]), shown
    forms = secret_forms(token)
    assert find_in_bytes(output, forms) == []
    assert leaks_in_tree(tmp_path, forms) == []
