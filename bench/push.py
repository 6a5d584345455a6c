"""Push throughput against Nix's own uploader and against ``nix-store --dump``, the Nix
processes the push starts, and the pusher's peak memory.

Every push goes to an empty cache of the double running in its own process. The baselines read
the same paths from the same warm page cache: ``nix copy --to file://DIR?compression=none``
(Nix's binary-cache writer: it serialises, hashes and writes every NAR plus its narinfo) and
``nix-store --dump`` of every path with the upload concurrency, to /dev/null.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import (
    MIB,
    PYTHON,
    ROOT,
    DoubleProcess,
    Figure,
    Profile,
    PushSize,
    Workspace,
    at_most,
    random_sizes,
    stats,
    timer,
    write_random_files,
)
from nix_job.push.command import push_once

#: The issue's targets: push / `nix copy` for the small and the large workload.
COPY_TARGETS = {"small": 2.0, "large": 1.5}


def _dump_concurrently(ws: Workspace, paths: list[str], jobs: int) -> None:
    def dump(path: str) -> None:
        subprocess.run(
            ["nix-store", "--dump", path],
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=ws.env,
            check=True,
        )

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(dump, paths))


def _nix_copy(ws: Workspace, paths: list[str]) -> None:
    target = Path(tempfile.mkdtemp(prefix="nix-copy-", dir=ws.dir))
    try:
        done = subprocess.run(
            ["nix", "copy", "--to", f"file://{target}?compression=none", *paths],
            env=ws.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"nix copy failed: {done.stderr.decode(errors='replace')[-2000:]}")
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _add_paths(ws: Workspace, size: PushSize) -> tuple[list[str], int]:
    sizes = random_sizes(size.paths, size.mib * MIB, seed=9)
    files = write_random_files(ws.dir / f"push-{size.label}", sizes, f"nixjob-bench-{ws.salt()}")
    paths = ws.add_files(files)
    for f in files:
        f.unlink()
    return paths, sum(i.nar_size for i in ws.store.query_infos(paths).values())


def push_throughput(ws: Workspace, profile: Profile) -> list[Figure]:
    """For each workload: push_once / ``nix copy`` (and / concurrent dumps), interleaved."""
    figures: list[Figure] = []
    for size in profile.push_sizes:
        paths, total = _add_paths(ws, size)
        _nix_copy(ws, paths)  # warm the page cache for every side alike
        vs_copy: list[float] = []
        vs_dump: list[float] = []
        push_s: list[float] = []
        copy_s: list[float] = []
        dump_s: list[float] = []
        processes: list[float] = []
        for _ in range(profile.repeats):
            with timer() as t_copy:
                _nix_copy(ws, paths)
            with timer() as t_dump:
                _dump_concurrently(ws, paths, profile.jobs)
            with DoubleProcess(ws.dir) as double:
                client = double.client(profile.jobs)
                config = client.cache_config()
                started = ws.store.processes
                with timer() as t_push:
                    report = push_once(
                        paths,
                        store=ws.store,
                        client=client,
                        upstream_key_names=config.upstream_cache_key_names,
                        jobs=profile.jobs,
                        timeout_s=600,
                    )
                processes.append((ws.store.processes - started) / len(paths))
            if report.pushed.paths != len(paths) or not report.complete or report.nar_fallbacks:
                raise RuntimeError(
                    f"push benchmark: pushed {report.pushed.paths} of {len(paths)} paths "
                    f"(failed {report.failed.paths}, NARs from nix-store --dump "
                    f"{report.nar_fallbacks}, failures {report.failures[:3]})"
                )
            copy_s.append(t_copy[0])
            dump_s.append(t_dump[0])
            push_s.append(t_push[0])
            vs_copy.append(t_push[0] / t_copy[0])
            vs_dump.append(t_push[0] / t_dump[0])
        mib = total / MIB
        details = {
            "paths": len(paths),
            "nar_mib": round(mib, 1),
            "jobs": profile.jobs,
            "push_s": stats(push_s).to_json(),
            "nix_copy_s": stats(copy_s).to_json(),
            "dump_concurrent_s": stats(dump_s).to_json(),
            "push_mib_s": round(mib / stats(push_s).median, 1),
            "nix_copy_mib_s": round(mib / stats(copy_s).median, 1),
            "dump_mib_s": round(mib / stats(dump_s).median, 1),
            "nix_processes_per_path": stats(processes).to_json(),
        }
        figures.append(
            at_most(
                f"push_vs_copy_{size.label}",
                f"Push of {len(paths)} paths ({mib:.0f} MiB): push_once / "
                "`nix copy --to file://…?compression=none`",
                "ratio",
                stats(vs_copy),
                COPY_TARGETS[size.label],
                **details,
            )
        )
        if size.label == "large":
            figures.append(
                Figure(
                    key="push_vs_dump",
                    title=f"Push of {len(paths)} paths: push_once / `nix-store --dump` of each "
                    f"path, {profile.jobs} at a time",
                    unit="ratio",
                    value=stats(vs_dump),
                    details=details,
                )
            )
    return figures


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def peak_memory(ws: Workspace, profile: Profile) -> Figure:
    """Peak RSS of ``python -m nix_job push`` uploading one NAR of ``memory_mib``."""
    files = write_random_files(
        ws.dir / "memory-data", [profile.memory_mib * MIB], f"nixjob-bench-big-{ws.salt()}"
    )
    [path] = ws.add_files(files)
    files[0].unlink()
    peaks: list[float] = []
    with_children: list[float] = []
    for _ in range(profile.memory_repeats):
        with DoubleProcess(ws.dir) as double:
            out = ws.dir / "memory-push.log"
            with out.open("wb") as log:
                proc = subprocess.Popen(
                    [PYTHON, "-m", "nix_job", "push", "--jobs", str(profile.jobs), path],
                    cwd=ROOT,
                    env={
                        **ws.env,
                        "ATTIC_SERVER": double.url,
                        "ATTIC_CACHE": double.cache,
                        "ATTIC_TOKEN": double.token,
                    },
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                hwm = 0
                while True:
                    hwm = max(hwm, _vm_hwm_kib(proc.pid) or 0)
                    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                    if pid:
                        proc.returncode = os.waitstatus_to_exitcode(status)
                        break
                    time.sleep(0.02)
            text = out.read_text(errors="replace")
            if proc.returncode != 0 or "Pushed 1 path(s)" not in text:
                raise RuntimeError(
                    f"memory benchmark: the push failed ({proc.returncode}):\n{text}"
                )
        peaks.append(hwm / 1024)
        with_children.append(usage.ru_maxrss / 1024)
    return at_most(
        "peak_rss_mib",
        f"Peak RSS of `python -m nix_job push` uploading one {profile.memory_mib} MiB NAR",
        "MiB",
        stats(peaks),
        60,
        nar_mib=profile.memory_mib,
        wait4_maxrss_mib=stats(with_children).to_json(),
    )
