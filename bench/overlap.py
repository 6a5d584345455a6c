"""A build with the watcher and push session against the same build alone: the time, the CPU
and the Nix processes nix-job adds per uploaded path, the end-of-build push for comparison, and
per-path latency from lock removal to upload.

Uses the entrypoint's publishing lifecycle (``nix_job.push.publisher.Publisher``, with the
action's defaults: no push-exclude): the watcher hands newly valid paths to the push session;
after the build, stop, sweep, push the outputs, drain.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    MIB,
    DoubleInfo,
    DoubleProcess,
    Figure,
    Profile,
    Workspace,
    at_most,
    percentile,
    stats,
    timer,
)
from nix_job.push.command import push_once
from nix_job.push.publisher import Publisher
from nix_job.push.report import PushReport
from nix_job.push.store_events import EventSource, InotifyEventSource, StoreEvent, lock_target
from tests.nixenv import Derivations, write_derivations

DRAIN_TIMEOUT_S = 120.0  # the action's drain-timeout default
PREFIX = "nixjob-bench"


class TimedEvents:
    """An inotify event source that notes when each store path's lock deletion was read."""

    def __init__(self, directory: Path, seen: dict[str, float]) -> None:
        self._inner = InotifyEventSource(directory)
        self._seen = seen

    def read(self, timeout_s: float) -> list[StoreEvent]:
        events = self._inner.read(timeout_s)
        now = time.monotonic()
        for event in events:
            target = lock_target(event.name)
            if target is not None:
                self._seen.setdefault(target, now)
        return events

    def wake(self) -> None:
        self._inner.wake()

    def close(self) -> None:
        self._inner.close()


def _cpu_s() -> float:
    """CPU seconds of this process (all threads) and of its reaped children so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _derivations(ws: Workspace, profile: Profile) -> Derivations:
    return write_derivations(
        ws.dir / "drv",
        count=profile.overlap_drvs,
        sleep_s=profile.overlap_sleep_s,
        size=int(profile.overlap_mib_each * MIB),
        tag=ws.salt(),
        prefix=PREFIX,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    outputs: list[str]
    cpu_s: float  # nix-build's own CPU, its builders included (from wait4)


def _build(ws: Workspace, drvs: Derivations) -> Built:
    argv = ["nix-build", "--no-out-link", str(drvs.file)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=ws.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"nix-build failed: {err.read().decode(errors='replace')[-2000:]}")
        outputs = out.read().decode().split()
    ws.own(outputs)
    return Built(outputs=outputs, cpu_s=usage.ru_utime + usage.ru_stime)


def _check(report: PushReport, outputs: list[str], what: str) -> None:
    uploaded = {done.path for done in report.completions}
    if not uploaded >= set(outputs) or not report.complete:
        raise RuntimeError(
            f"{what}: pushed {report.pushed.paths} of {len(outputs)} outputs "
            f"(failed {report.failed.paths}, left over {report.left_over.paths}, "
            f"failures {report.failures[:3]})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Watched:
    seconds: float
    cpu_s: float  # this process's threads and its children (the build); not the double's
    nix_job_cpu_s: float  # of that, nix-job's: its threads and the Nix processes it started
    nix_processes: int  # started by nix-job (the build's own excluded)
    uploaded: int
    latencies: list[float]


def build_with_watcher(ws: Workspace, profile: Profile, double: DoubleInfo) -> Watched:
    """Build + drain with the watcher."""
    drvs = _derivations(ws, profile)
    client = double.client(profile.jobs)
    config = client.cache_config()
    seen: dict[str, float] = {}

    def events(directory: Path) -> EventSource:
        return TimedEvents(directory, seen)

    cpu_before = _cpu_s()
    processes_before = ws.store.processes
    with timer() as elapsed:
        # The entrypoint's own publishing lifecycle, with lock removals timed for latency.
        publisher = Publisher(
            client=client,
            store=ws.store,
            upstream_key_names=config.upstream_cache_key_names,
            exclude=None,
            jobs=profile.jobs,
            cancel_grace_s=5.0,
            event_source=events,
        )
        publisher.start()
        try:
            built = _build(ws, drvs)
            outputs = built.outputs
            report = publisher.finish(
                roots=outputs, timeout_s=DRAIN_TIMEOUT_S, cancelled=lambda: False
            ).report
        finally:
            publisher.close()
    cpu = _cpu_s() - cpu_before
    _check(report, outputs, "build with the watcher")
    latencies = []
    for done in report.completions:
        name = done.path.rsplit("/", 1)[1]
        if name in seen:  # watched or, for the last paths of the build, final
            latencies.append(done.completed_at - seen[name])
    return Watched(
        seconds=elapsed[0],
        cpu_s=cpu,
        nix_job_cpu_s=cpu - built.cpu_s,
        nix_processes=ws.store.processes - processes_before,
        uploaded=report.pushed.paths,
        latencies=latencies,
    )


def overlap(ws: Workspace, profile: Profile) -> list[Figure]:
    """Overlap, end-of-build and latency figures from interleaved builds."""
    plain: list[float] = []
    watched: list[float] = []
    after: list[float] = []
    overlap_ratios: list[float] = []
    after_ratios: list[float] = []
    latencies: list[float] = []
    per_run_p50: list[float] = []
    cpu_plain: list[float] = []
    cpu_watch: list[float] = []
    cpu_ms_per_path: list[float] = []
    cpu_ms_difference: list[float] = []
    processes_per_path: list[float] = []
    for _ in range(profile.repeats):
        drvs = _derivations(ws, profile)
        cpu_before = _cpu_s()
        with timer() as t_plain:
            _build(ws, drvs)
        cpu_plain.append(_cpu_s() - cpu_before)
        with DoubleProcess(ws.dir) as double:
            run = build_with_watcher(ws, profile, double)
        t_watch, lat = run.seconds, run.latencies
        cpu_watch.append(run.cpu_s)
        cpu_ms_per_path.append(1000 * run.nix_job_cpu_s / run.uploaded)
        cpu_ms_difference.append(1000 * (run.cpu_s - cpu_plain[-1]) / run.uploaded)
        processes_per_path.append(run.nix_processes / run.uploaded)
        with DoubleProcess(ws.dir) as double:
            client = double.client(profile.jobs)
            config = client.cache_config()
            drvs = _derivations(ws, profile)
            with timer() as t_after:
                outputs = _build(ws, drvs).outputs
                report = push_once(
                    outputs,
                    store=ws.store,
                    client=client,
                    upstream_key_names=config.upstream_cache_key_names,
                    jobs=profile.jobs,
                    timeout_s=DRAIN_TIMEOUT_S,
                )
        _check(report, outputs, "build then push")
        plain.append(t_plain[0])
        watched.append(t_watch)
        after.append(t_after[0])
        overlap_ratios.append(t_watch / t_plain[0])
        after_ratios.append(t_after[0] / t_plain[0])
        if not lat:
            raise RuntimeError("no watched upload could be matched to its lock removal")
        latencies += lat
        per_run_p50.append(percentile(lat, 50))
    common = {
        "derivations": profile.overlap_drvs,
        "sleep_s": profile.overlap_sleep_s,
        "mib_each": profile.overlap_mib_each,
        "max_jobs": 2,
        "push_jobs": profile.jobs,
        "build_s": stats(plain).to_json(),
        "build_with_watcher_s": stats(watched).to_json(),
        "build_then_push_s": stats(after).to_json(),
        "cpu_s_build": stats(cpu_plain).to_json(),
        "cpu_s_build_with_watcher": stats(cpu_watch).to_json(),
    }
    lat_stats = stats(latencies)
    lat_details = {
        "paths": len(latencies),
        "p50_per_run": stats(per_run_p50).to_json(),
        "max": lat_stats.high,
    }
    p50 = percentile(latencies, 50)
    p95 = percentile(latencies, 95)
    return [
        at_most(
            "overlap",
            "Overlap: (build + drain with the watcher) / build alone",
            "ratio",
            stats(overlap_ratios),
            1.04,
            **common,
        ),
        Figure(
            key="end_of_build_vs_build",
            title="End-of-build push: (build + push after) / build alone",
            unit="ratio",
            value=stats(after_ratios),
            details=common,
        ),
        at_most(
            "cpu_ms_per_path",
            "CPU nix-job spends per uploaded path during a build (its threads and any Nix "
            "process it starts; the build's own CPU from wait4 taken out)",
            "ms",
            stats(cpu_ms_per_path),
            8,
            **common,
            build_difference_ms_per_path=stats(cpu_ms_difference).to_json(),
        ),
        at_most(
            "nix_processes_per_path",
            "Nix processes nix-job starts per uploaded path during a build",
            "count",
            stats(processes_per_path),
            0.1,
            **common,
        ),
        Figure(
            key="latency_p50_s",
            title="Latency p50: lock removal → upload complete",
            unit="s",
            value=stats([p50]),
            target="≤ 0.6",
            met=p50 <= 0.6,
            details=lat_details,
        ),
        Figure(
            key="latency_p95_s",
            title="Latency p95: lock removal → upload complete",
            unit="s",
            value=stats([p95]),
            target="≤ 1.5",
            met=p95 <= 1.5,
            details=lat_details,
        ),
    ]
