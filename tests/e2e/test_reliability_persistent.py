"""A persistent self-hosted runner: two jobs in a row on one machine, the first one cancelled
while it builds and uploads. The second starts clean and publishes normally.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attic_double import Faults
from tests.e2e.test_reliability_support import (
    NIX_CONF,
    Bed,
    Run,
    assert_cache_is_sound,
    assert_no_trace,
    bed_for,
    kill_group_quietly,
    leaks,
    live_members,
    netrc_files,
    nix_conf_blocks,
    only,
    shared_tool_cache,  # noqa: F401 - fixture
)
from tests.harness import Cancel
from tests.nixenv import require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

UPLOAD_TITLES = ("nix-job: uploads incomplete", "nix-job: uploads refused")


@pytest.fixture
def bed(tmp_path: Path, shared_tool_cache: Path) -> Iterator[Bed]:  # noqa: F811
    require_nix()
    with bed_for(tmp_path, shared_tool_cache) as b:
        yield b


def survivors_of(run: Run) -> list[str]:
    """Live processes of the first job: its command's group, or anything nix-job started."""
    alive: list[str] = []
    pgid_file = run.workspace / "pgid"
    if pgid_file.exists():
        pgid = int(pgid_file.read_text().split()[0])
        alive += live_members(pgid)
        kill_group_quietly(pgid)
    for p in run.processes.descendants_of_nix_job():
        cmdline = Path(f"/proc/{p.pid}/cmdline")
        if cmdline.exists() and cmdline.read_bytes() == p.cmdline:
            alive.append(f"{p.pid} {p.cmdline!r}")
    return alive


def test_a_job_after_a_cancelled_one_starts_clean_and_publishes(bed: Bed) -> None:
    runner_temp = bed.root / "runner-temp"  # the same machine: same RUNNER_TEMP, same workspace
    workspace = bed.root / "work"
    drv = write_derivations(bed.root / "src", count=3, chain=True)
    outputs = drv.out_paths(bed.nix)
    inputs = {"push-cache": "true", "drain-timeout": "60", "push-exclude": only(drv.tag)}

    # Job 1: builds d0, uploads it slowly, and is cancelled while its command still runs.
    bed.double.faults = Faults(upload_delay_s=3.0)
    first = bed.run(
        "read -r _ _ _ _ pgid _ < /proc/$$/stat; echo $pgid > pgid\n"
        f"nix-build {drv.file} -A d0\n"
        "echo first-job-built\n"
        "sleep 300 &\nsleep 300\n",
        token=bed.token(),
        inputs=inputs,
        workspace=workspace,
        runner_temp=runner_temp,
        cancel=Cancel(
            step="run",
            target="leader",
            when_output=lambda line: "first-job-built" in line,
            after_s=0.3,
        ),
    )
    assert first.result.cancelled, first.dump()
    assert first.result.step("run").exit_code in (130, 143), first.dump()
    assert leaks(first, bed.nix) == []

    # What the second job finds on the machine.
    assert survivors_of(first) == []
    assert netrc_files(runner_temp) == []
    assert nix_conf_blocks(first.run_id) == []
    conf = NIX_CONF.read_text(errors="replace") if NIX_CONF.exists() else ""
    assert bed.url.rstrip("/") not in conf
    assert bed.public_key not in conf
    user_conf = bed.nix.root / "xdg-config" / "nix" / "nix.conf"
    assert not user_conf.exists() or bed.url.rstrip("/") not in user_conf.read_text()

    # Job 2: the server behaves again; the rest of the chain builds and everything is published.
    bed.double.faults = Faults()
    second = bed.run(
        f"nix-build {drv.file} -A d2",
        token=bed.token(),
        inputs=inputs,
        workspace=workspace,
        runner_temp=runner_temp,
    )
    assert second.result.exit_code == 0, second.dump()
    assert second.result.outputs["paths-failed"] == "0", second.dump()
    stored = {o.store_path for o in bed.double.objects("team")}
    assert set(outputs.values()) <= stored, second.dump()
    assert not [a for a in second.annotations("warning") if a.title in UPLOAD_TITLES]
    assert leaks(second, bed.nix) == []
    assert_no_trace(second, bed)
    assert_cache_is_sound(bed)
