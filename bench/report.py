"""What a benchmark run reports: the console table, ``results.json``, the docs block, the
final JSON line. Pure apart from reading facts about the machine and writing the two files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import ROOT, Figure, Profile

SUMMARY_KEYS = (
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
)
BEGIN = "<!-- bench:begin (written by ./scripts/bench; edit the text outside this block) -->"
END = "<!-- bench:end -->"
_BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, check=False, timeout=30, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = done.stdout.decode(errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"


def _read(path: str, pattern: str) -> str:
    try:
        found = re.search(pattern, Path(path).read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return found.group(1).strip() if found else "unknown"


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare figures between runs."""
    mem_kib = _read("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    dirty = _first_line(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": _read("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kib) / 1024 / 1024, 1) if mem_kib.isdigit() else None,
        "os": _read("/etc/os-release", r'^PRETTY_NAME="?([^"\n]+)"?'),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nix": _first_line(["nix", "--version"]),
        "commit": _first_line(["git", "rev-parse", "--short", "HEAD"]),
        "worktree_dirty": dirty not in ("", "unknown"),
        "load_average_start": list(os.getloadavg()),
    }


def summary(figures: Mapping[str, Figure]) -> dict[str, float | None]:
    """The final line's object: exactly ``SUMMARY_KEYS``, each the figure's median or null."""
    return {
        key: (round(figures[key].value.median, 4) if key in figures else None)
        for key in SUMMARY_KEYS
    }


def results(
    profile: Profile,
    figures: Mapping[str, Figure],
    facts: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    return {
        "mode": profile.mode,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
        "machine": {**facts, "load_average_end": list(os.getloadavg())},
        "profile": dataclasses.asdict(profile),
        "summary": summary(figures),
        "figures": {key: figure.to_json() for key, figure in figures.items()},
    }


def _num(value: float, unit: str) -> str:
    if unit == "MiB":
        return f"{value:.0f}"
    return f"{value:.2f}" if value >= 0.1 or value == 0 else f"{value:.3f}"


def _verdict(figure: Figure) -> str:
    if figure.met is None:
        return "–"
    return "yes" if figure.met else "**no**"


def table(figures: Mapping[str, Figure]) -> list[str]:
    """The figures as a Markdown table (also what the console shows)."""
    rows = [
        "| Figure | Median | Spread (min–max) | Target | Met |",
        "|---|---|---|---|---|",
    ]
    for key in SUMMARY_KEYS:
        figure = figures.get(key)
        if figure is None:
            continue
        v = figure.value
        spread = (
            f"{_num(v.low, figure.unit)}–{_num(v.high, figure.unit)}"
            if len(v.samples) > 1
            else "(one pooled value)"
        )
        rows.append(
            f"| {figure.title} (`{key}`) | {_num(v.median, figure.unit)} {figure.unit} | "
            f"{spread} | {figure.target or 'none'} | {_verdict(figure)} |"
        )
    return rows


def baselines(figures: Mapping[str, Figure]) -> list[str]:
    """The absolute numbers behind the ratios."""
    lines = []
    for label in ("small", "large"):
        push = figures.get(f"push_vs_copy_{label}")
        if push:
            d = push.details
            lines.append(
                f"- Push ({label}): {d['paths']} paths, {d['nar_mib']} MiB of NAR, {d['jobs']} "
                f"upload jobs: push_once {d['push_s']['median']:.2f} s ({d['push_mib_s']} "
                f"MiB/s); `nix copy` to file:// {d['nix_copy_s']['median']:.2f} s "
                f"({d['nix_copy_mib_s']} MiB/s); `nix-store --dump` {d['jobs']} at a time "
                f"{d['dump_concurrent_s']['median']:.2f} s ({d['dump_mib_s']} MiB/s); Nix "
                f"processes per pushed path {d['nix_processes_per_path']['median']:g}."
            )
    over = figures.get("overlap")
    if over:
        d = over.details
        lines.append(
            f"- Build: {d['derivations']} derivations (sleep {d['sleep_s']} s, write "
            f"{d['mib_each']} MiB each, max-jobs {d['max_jobs']}): alone "
            f"{d['build_s']['median']:.2f} s, with the watcher and drain "
            f"{d['build_with_watcher_s']['median']:.2f} s, then push after "
            f"{d['build_then_push_s']['median']:.2f} s. CPU time of the build and of nix-job "
            f"(its threads and Nix subprocesses; the double's excluded): "
            f"{d['cpu_s_build']['median']:.2f} s alone, "
            f"{d['cpu_s_build_with_watcher']['median']:.2f} s with the watcher."
        )
    warm = figures.get("warm_drain_s")
    if warm:
        d = warm.details
        lines.append(
            f"- Warm cache: {d['paths']} paths, requests sent per push "
            f"{d['requests_sent']['median']:g} (cache-config excluded)."
        )
    lat = figures.get("latency_p50_s")
    if lat:
        d = lat.details
        lines.append(
            f"- Latency: {d['paths']} watched uploads pooled over the overlap runs; "
            f"slowest {d['max']:.2f} s."
        )
    cold = figures.get("cold_start_s")
    if cold:
        d = cold.details
        lines.append(
            f"- Start-up: cold {d['cold_s']['median']:.2f} s (fresh copy of the action, no "
            f"byte-code, empty tool cache, package index unreachable), warm "
            f"{d['warm_s']['median']:.2f} s (the same copy again)."
        )
    rss = figures.get("peak_rss_mib")
    if rss:
        d = rss.details
        lines.append(
            f"- Memory: one {d['nar_mib']} MiB NAR; largest child process (from wait4) "
            f"{d['wait4_maxrss_mib']['median']:.0f} MiB."
        )
    return lines


def doc_block(data: Mapping[str, Any], figures: Mapping[str, Figure]) -> str:
    m = data["machine"]
    dirty = " (uncommitted changes)" if m["worktree_dirty"] else ""
    load = ", ".join(f"{x:.2f}" for x in m["load_average_start"])
    load_end = ", ".join(f"{x:.2f}" for x in m["load_average_end"])
    lines = [
        BEGIN,
        "",
        f"Run `{data['mode']}` on {data['date']}, commit `{m['commit']}`{dirty}, "
        f"{data['seconds']:.0f} s in all.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"kernel {m['kernel']}, {m['nix']}, Python {m['python']}; load average (1, 5, 15 min) "
        f"{load} at the start, {load_end} at the end.",
        "",
        *table(figures),
        "",
        *baselines(figures),
        "",
        END,
    ]
    return "\n".join(lines)


def update_doc(path: Path, block: str) -> None:
    """Replace the generated block in ``path`` (append it if the file has none)."""
    text = path.read_text() if path.exists() else "# nix-job benchmarks\n\n"
    if _BLOCK.search(text):
        text = _BLOCK.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_results(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
