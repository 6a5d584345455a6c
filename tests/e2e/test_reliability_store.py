"""Store churn while publishing: paths collected before their upload, thousands of new paths at
once, stale locks left by failed builds. Nothing is lost, nothing is miscounted as a failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attic_double import Faults
from tests.e2e.test_reliability_support import (
    Bed,
    assert_cache_is_sound,
    assert_no_trace,
    bed_for,
    leaks,
    only,
    shared_tool_cache,  # noqa: F401 - fixture
    upload_counts,
)
from tests.nixenv import require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]

UPLOAD_TITLES = ("nix-job: uploads incomplete", "nix-job: uploads refused")


@pytest.fixture
def bed(tmp_path: Path, shared_tool_cache: Path) -> Iterator[Bed]:  # noqa: F811
    require_nix()
    with bed_for(tmp_path, shared_tool_cache) as b:
        yield b


def test_paths_collected_before_their_upload_are_skipped_not_failed(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=3, size=4096)
    outputs = drv.out_paths(bed.nix)
    # One upload at a time, each answered 5 s after its NAR arrived: while the first upload
    # waits for its answer, the command deletes the paths; the others' NARs cannot be read.
    # (The paths are not written into the command: Nix would find them in nix-job's environment
    # (NIX_JOB_COMMAND) as runtime roots and refuse to delete them.)
    bed.double.faults = Faults(upload_delay_s=5.0)
    command = (
        f"nix-build --no-out-link {drv.file} > outs\n"
        "sleep 2\n"
        "for p in $(cat outs); do\n"
        "  if nix-store --delete $p; then echo $p >> deleted; fi\n"
        "done\n"
        "touch deleted\n"
    )
    run = bed.run(
        command,
        token=bed.token(),
        inputs={
            "push-cache": "true",
            "push-jobs": "1",
            "drain-timeout": "60",
            "push-exclude": only(drv.tag),
        },
    )
    assert run.result.exit_code == 0, run.dump()
    deleted = set((run.workspace / "deleted").read_text().split())
    stored = {o.store_path for o in bed.double.objects("team")}
    never_uploaded = deleted - stored
    assert never_uploaded, f"the scenario did not happen: deleted {deleted}, stored {stored}"
    counts = upload_counts(run.summary)
    assert counts["vanished"] >= len(never_uploaded), run.summary
    assert counts["failed"] == 0, run.summary
    assert counts["left_over"] == 0, run.summary
    assert counts["during"] + counts["final"] + counts["vanished"] == len(outputs), run.summary
    assert run.result.outputs["paths-failed"] == "0"
    assert [a for a in run.annotations("warning") if a.title in UPLOAD_TITLES] == [], run.dump()
    assert_cache_is_sound(bed)


def test_two_thousand_new_paths_at_once_all_reach_the_cache(bed: Bed) -> None:
    tag = uuid.uuid4().hex
    command = (
        "mkdir files\n"
        f"for i in $(seq 2000); do echo $i > files/{tag}-$i; done\n"
        "nix-store --add files/* > added\n"
    )
    run = bed.run(
        command,
        token=bed.token(),
        inputs={
            "push-cache": "true",
            "push-jobs": "8",
            "drain-timeout": "120",
            "push-exclude": only(tag),
        },
    )
    assert run.result.exit_code == 0, run.dump()
    added = set((run.workspace / "added").read_text().split())
    assert len(added) == 2000
    stored = {o.store_path for o in bed.double.objects("team")}
    missing = added - stored
    assert not missing, (
        f"{len(missing)} path(s) never reached the cache, e.g. {sorted(missing)[:3]}"
    )
    assert run.result.outputs["paths-failed"] == "0", run.dump()
    counts = upload_counts(run.summary)
    assert counts["during"] + counts["final"] == 2000, run.summary
    assert leaks(run, bed.nix) == []
    assert_no_trace(run, bed)


def test_a_stale_lock_from_a_failed_build_is_never_published(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=2, fail=[1])
    outputs = drv.out_paths(bed.nix)
    failed, good = outputs["d1"], outputs["d0"]
    bed.nix.run(["nix-build", "--no-out-link", str(drv.file), "-A", "d1"], check=False)
    lock = Path(failed + ".lock")
    assert lock.exists(), "Nix left no stale lock to test with"
    assert not Path(failed).exists()

    command = (
        f"nix-build {drv.file} -A d0\n"
        f"nix-build --no-out-link {drv.file} -A d1 || echo 'the failing build failed again'\n"
        f"rm -f {lock}\n"  # the stale lock goes away while the watcher looks
    )
    run = bed.run(
        command,
        token=bed.token(),
        inputs={"push-cache": "true", "drain-timeout": "30", "push-exclude": only(drv.tag)},
    )
    assert run.result.exit_code == 0, run.dump()
    assert "failed again" in run.result.output
    assert bed.double.has_path("team", good), run.dump()
    assert not bed.double.has_path("team", failed)
    assert run.result.outputs["paths-failed"] == "0", run.dump()
    assert not [a for a in run.annotations("warning") if a.title in UPLOAD_TITLES], run.dump()
    assert failed not in run.summary
    assert_cache_is_sound(bed)
