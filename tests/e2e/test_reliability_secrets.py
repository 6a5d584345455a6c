"""The token never leaks, whatever the run does: success, failure, pull requests, debug logging,
a pasted token with a newline. (Faults and cancellations check the same in their own modules.)

Looked for, in every derived form (``secret_forms``): the raw log of every step, every command
file, the outputs, the annotations, the job summary, the argv of every process that appeared
during the run (sampled every 20 ms), the command's environment, and every file left under
RUNNER_TEMP, the workspace and the Nix home/XDG directories.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_reliability_support import (
    Bed,
    assert_no_trace,
    bed_for,
    environ_leaks,
    leaks,
    only,
    shared_tool_cache,  # noqa: F401 - fixture
)
from tests.nixenv import require_nix, write_derivations

pytestmark = [pytest.mark.nix, pytest.mark.slow]


@pytest.fixture
def bed(tmp_path: Path, shared_tool_cache: Path) -> Iterator[Bed]:  # noqa: F811
    require_nix()
    with bed_for(tmp_path, shared_tool_cache) as b:
        yield b


@pytest.mark.parametrize(
    ("event", "exit_code", "extra", "publishes"),
    [
        pytest.param("push", 0, {}, True, id="push-success"),
        pytest.param("push", 5, {}, True, id="push-failure"),
        pytest.param("pull_request", 0, {}, False, id="same-repo-pull-request"),
        pytest.param("fork_pull_request", 0, {}, False, id="fork-pull-request"),
        pytest.param("push", 0, {"RUNNER_DEBUG": "1"}, True, id="debug-logging"),
        pytest.param("push", 0, {"newline": "1"}, True, id="token-pasted-with-newline"),
    ],
)
def test_the_token_is_found_nowhere(
    bed: Bed, event: str, exit_code: int, extra: dict[str, str], publishes: bool
) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    token = bed.token()
    command = (
        "env > env.txt\n"
        "nix show-config > nix-config.txt 2>&1 || true\n"
        f"nix-build {drv.file}\n"
        f"exit {exit_code}\n"
    )
    inputs = {"push-cache": "true", "drain-timeout": "30", "push-exclude": only(drv.tag)}
    if extra.get("RUNNER_DEBUG"):
        inputs["command"] = "set -x\n" + command
    run = bed.run(
        inputs.pop("command", command),
        token=token,
        event=event,
        inputs=inputs,
        token_value=token + "\n" if extra.get("newline") else None,
        debug=bool(extra.get("RUNNER_DEBUG")),
    )
    assert run.result.exit_code == exit_code, run.dump()
    assert run.result.outputs["cache-push"] == str(publishes).lower(), run.dump()
    if publishes:
        assert bed.double.has_path("team", drv.out_paths(bed.nix)["d0"]), run.dump()
    else:
        assert bed.double.write_requests() == []
    env_text = (run.workspace / "env.txt").read_text()
    assert "ATTIC_TOKEN" not in env_text
    inputs_seen = [v for v in env_text.splitlines() if v.startswith("NIX_JOB_")]
    assert inputs_seen == ["NIX_JOB_CACHE_PUSH=" + str(publishes).lower()]
    assert run.processes.samples > 10, "the argv sampler barely ran"
    assert run.processes.descendants_of_nix_job(), "the sampler saw nothing nix-job started"
    assert leaks(run, bed.nix) == []
    assert_no_trace(run, bed)


def test_no_process_nix_job_starts_has_the_token_in_its_environment(bed: Bed) -> None:
    drv = write_derivations(bed.root / "src", count=1)
    run = bed.run(
        f"nix-build {drv.file}",
        token=bed.token(),
        inputs={"push-cache": "true", "push-exclude": only(drv.tag)},
    )
    assert run.result.exit_code == 0, run.dump()
    assert run.processes.descendants_of_nix_job()
    assert environ_leaks(run) == []
