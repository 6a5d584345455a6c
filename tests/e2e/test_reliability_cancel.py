"""Cancelling at every phase: prompt exit, nothing of the command survives, nothing left behind.

The harness cancels like the runner: SIGINT to the step's entry process (``target="leader"``:
action.yml ``exec``s python, so nix-job itself gets it), SIGTERM 7.5 s later, SIGKILL 2.5 s after
that. nix-job must be gone before the SIGKILL, with the command's process group dead, the netrc
removed, the configuration restored and the job summary written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attic_double import Faults
from tests.e2e.test_reliability_support import (
    Bed,
    Run,
    assert_cache_is_sound,
    assert_no_trace,
    bed_for,
    kill_group_quietly,
    leaks,
    live_members,
    only,
    shared_tool_cache,  # noqa: F401 - fixture
    upload_counts,
)
from tests.harness import Cancel
from tests.nixenv import require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

CANCELLED_CODES = (130, 143)  # SIGINT, or SIGTERM when it came before nix-job finished


@pytest.fixture
def bed(tmp_path: Path, shared_tool_cache: Path) -> Iterator[Bed]:  # noqa: F811
    require_nix()
    with bed_for(tmp_path, shared_tool_cache) as b:
        yield b


def cancel_on(line_part: str, after_s: float = 0.5) -> Cancel:
    return Cancel(
        step="run",
        target="leader",
        when_output=lambda line: line_part in line,
        after_s=after_s,
    )


def command_group(run: Run) -> int | None:
    """The process group the command recorded (``pgid`` file), if it ran."""
    path = run.workspace / "pgid"
    return int(path.read_text().split()[0]) if path.exists() else None


def assert_cancelled_cleanly(run: Run, bed: Bed, *, summary_says_cancelled: bool = True) -> None:
    result = run.result
    step = result.step("run")
    assert result.cancelled, run.dump()
    assert step.exit_code in CANCELLED_CODES, run.dump()
    assert "SIGKILL" not in step.signals_sent, f"nix-job had to be killed: {run.dump()}"
    pgid = command_group(run)
    if pgid is not None:
        survivors = live_members(pgid)
        kill_group_quietly(pgid)
        assert survivors == [], f"the command's processes outlived the run: {survivors}"
    alive = [
        p
        for p in run.processes.descendants_of_nix_job()
        if Path(f"/proc/{p.pid}/cmdline").exists()
        and Path(f"/proc/{p.pid}/cmdline").read_bytes() == p.cmdline
    ]
    assert alive == [], f"processes nix-job started are still running: {alive}"
    if summary_says_cancelled:  # see test_a_run_cancelled_during_the_drain_says_so_in_the_summary
        assert "nix-job: cancelled" in step.summary, step.summary
    assert leaks(run, bed.nix) == []
    assert_no_trace(run, bed)
    assert_cache_is_sound(bed)


def test_cancel_while_attaching_the_cache_never_runs_the_command(bed: Bed) -> None:
    bed.double.faults = Faults(response_delay_s=2.0)
    run = bed.run(
        "touch ran",
        token=bed.token(),
        inputs={"push-cache": "true", "push-exclude": ".*"},
        cancel=cancel_on("nix-job: Attic cache", after_s=0.5),
    )
    assert not (run.workspace / "ran").exists(), run.dump()
    assert_cancelled_cleanly(run, bed)


@pytest.mark.parametrize(
    ("command", "slow_uploads"),
    [
        pytest.param(
            "(sleep 300; touch survived) &\nsleep 300 &\nwait\n",
            False,
            id="background-children",
        ),
        # The worst case for the runner's 10 s budget: the command must be killed, and the
        # drain still has an upload pending (the server holds its answer for 30 s).
        pytest.param(
            "trap '' INT TERM\n(sleep 300; touch survived) &\nsleep 300\n",
            True,
            id="command-ignoring-int-and-term-with-uploads-pending",
        ),
    ],
)
def test_cancel_during_the_command_kills_its_whole_process_group(
    bed: Bed, command: str, slow_uploads: bool
) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    if slow_uploads:
        bed.double.faults = Faults(upload_delay_s=30.0)
    script = (
        "read -r _ _ _ _ pgid _ < /proc/$$/stat; echo $pgid > pgid\n"
        f"nix-build {drv.file}\n"
        "echo command-is-running\n" + command
    )
    started = time.monotonic()
    run = bed.run(
        script,
        token=bed.token(),
        inputs={"push-cache": "true", "drain-timeout": "60", "push-exclude": only(drv.tag)},
        cancel=cancel_on("command-is-running"),
    )
    assert time.monotonic() - started < 60, "the cancellation was not prompt"
    assert command_group(run) is not None, run.dump()
    assert not (run.workspace / "survived").exists()
    assert_cancelled_cleanly(run, bed)
    # What the command built before the cancellation was still published.
    assert bed.double.has_path("team", drv.out_paths(bed.nix)["d0"]), run.dump()


def test_cancel_during_the_drain_stops_within_the_grace(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=2, chain=True)
    bed.double.faults = Faults(upload_delay_s=30.0)
    run = bed.run(
        f"nix-build {drv.file} -A d1",
        token=bed.token(),
        inputs={
            "push-cache": "true",
            "drain-timeout": "120",
            "push-jobs": "1",
            "push-exclude": only(drv.tag),
        },
        cancel=cancel_on("nix-job: pushing the command's outputs"),
    )
    step = run.result.step("run")
    assert step.exit_code == 130, f"not done before the runner's SIGTERM: {run.dump()}"
    assert step.signals_sent == ("SIGINT",)
    assert_cancelled_cleanly(run, bed, summary_says_cancelled=False)
    assert run.result.outputs["exit-code"] == "0"
    counts = upload_counts(run.summary)  # the summary was written, with what was left
    assert counts["left_over"] + counts["during"] + counts["final"] == 2, run.summary


def test_a_run_cancelled_during_the_drain_says_so_in_the_summary(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    bed.double.faults = Faults(upload_delay_s=30.0)
    run = bed.run(
        f"nix-build {drv.file}",
        token=bed.token(),
        inputs={"push-cache": "true", "drain-timeout": "120", "push-exclude": only(drv.tag)},
        cancel=cancel_on("nix-job: pushing the command's outputs"),
    )
    summary = run.result.step("run").summary
    assert run.result.step("run").exit_code == 130, run.dump()
    assert "nix-job: cancelled" in summary, summary
