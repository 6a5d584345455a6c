"""The benchmark driver: ``python -m bench.run [--quick | --smoke] [--only FIG ...]``.

Runs each figure against a baseline measured in the same run, prints a table, writes
``bench/results.json`` and the generated block of ``docs/benchmarks.md``, and prints one JSON
object (the medians, keys ``report.SUMMARY_KEYS``) as its last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import overlap, push, report, startup, warm
from bench.common import PROFILES, ROOT, Figure, Mode, Profile, Workspace
from tests.nixenv import nix_available

GROUPS = ("startup", "warm", "push", "memory", "overlap")
Runner = Callable[[Workspace, Profile], list[Figure]]
RUNNERS: dict[str, Runner] = {
    "startup": startup.startup,
    "warm": lambda ws, p: [warm.warm_cache(ws, p)],
    "push": push.push_throughput,
    "memory": lambda ws, p: [push.peak_memory(ws, p)],
    "overlap": overlap.overlap,
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/bench",
        description="Measure nix-job against baselines taken in the same run (real Nix, the "
        "Attic double over loopback). Default: the full run docs/benchmarks.md reports.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, about two minutes")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one repetition: checks the benchmark runs (writes no files unless "
        "--results/--doc are given)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=GROUPS,
        help="run only these figures (writes no files unless --results/--doc are given)",
    )
    parser.add_argument("--results", type=Path, help="results JSON (default bench/results.json)")
    parser.add_argument("--doc", type=Path, help="Markdown to update (default docs/benchmarks.md)")
    parser.add_argument("--keep", action="store_true", help="keep the store paths created")
    parser.add_argument("--verbose", action="store_true", help="log the uploader's batches")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    mode: Mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    profile = PROFILES[mode]
    partial = args.smoke or bool(args.only)  # never overwrite the reported figures
    results_path = args.results or (None if partial else ROOT / "bench" / "results.json")
    doc_path = args.doc or (None if partial else ROOT / "docs" / "benchmarks.md")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(name)s: %(message)s"
    )
    if not nix_available() or shutil.which("nix-build") is None:
        print(
            "bench: nix, nix-store and nix-build must be on PATH (./scripts/setup)", file=sys.stderr
        )
        return 2
    facts = report.machine()
    started = time.perf_counter()
    figures: dict[str, Figure] = {}
    ws = Workspace(keep=args.keep)
    try:
        for group in args.only or GROUPS:
            t0 = time.perf_counter()
            print(f"bench: {group} …", file=sys.stderr, flush=True)
            for figure in RUNNERS[group](ws, profile):
                figures[figure.key] = figure
            print(f"bench: {group} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    finally:
        ws.cleanup()
    data = report.results(profile, figures, facts, time.perf_counter() - started)
    print("\n".join(report.table(figures)))
    print("\n".join(report.baselines(figures)))
    if results_path is not None:
        report.write_results(results_path, data)
        print(f"bench: wrote {results_path}", file=sys.stderr)
    if doc_path is not None:
        report.update_doc(doc_path, report.doc_block(data, figures))
        print(f"bench: updated {doc_path}", file=sys.stderr)
    print(json.dumps(data["summary"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
