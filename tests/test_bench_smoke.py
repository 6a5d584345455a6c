"""./scripts/bench runs end to end in its smallest size: checks it runs, not the numbers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.nixenv import require_nix

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_KEYS = {
    "push_vs_copy_small",
    "push_vs_copy_large",
    "push_vs_dump",
    "nix_processes_per_path",
    "cpu_ms_per_path",
    "overlap",
    "end_of_build_vs_build",
    "latency_p50_s",
    "latency_p95_s",
    "cold_start_s",
    "cold_vs_warm_start",
    "warm_start_s",
    "warm_drain_s",
    "peak_rss_mib",
}


@pytest.mark.nix
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_smoke_run_ends_with_the_summary_line_and_writes_its_files(tmp_path: Path) -> None:
    require_nix()
    results = tmp_path / "results.json"
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nProse the run must keep.\n")

    done = subprocess.run(
        ["./scripts/bench", "--smoke", "--results", str(results), "--doc", str(doc)],
        cwd=ROOT,
        capture_output=True,
        timeout=140,
        check=False,
    )

    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output + done.stderr.decode(errors="replace")
    last = json.loads(output.strip().splitlines()[-1])
    assert set(last) == SUMMARY_KEYS
    assert all(isinstance(value, int | float) for value in last.values()), last
    written = json.loads(results.read_text())
    assert written["mode"] == "smoke"
    assert written["summary"] == last
    text = doc.read_text()
    assert "Prose the run must keep." in text
    assert "<!-- bench:begin" in text
    assert "`push_vs_copy_small`" in text
