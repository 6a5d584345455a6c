"""Figures 1 and 5: push throughput against ``nix-store --dump``, and the pusher's peak memory.

Both push to an empty cache of the double running in its own process.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from bench.common import (
    MIB,
    PYTHON,
    ROOT,
    DoubleProcess,
    Figure,
    Profile,
    Workspace,
    at_most,
    random_sizes,
    stats,
    timer,
    write_random_files,
)
from nix_job.push.command import push_once


def _dump_all(ws: Workspace, paths: list[str]) -> None:
    for path in paths:
        subprocess.run(
            ["nix-store", "--dump", path],
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=ws.env,
            check=True,
        )


def push_throughput(ws: Workspace, profile: Profile) -> Figure:
    """push_once of ~N paths of mixed sizes to an empty cache, / dumping them to /dev/null."""
    sizes = random_sizes(profile.push_paths, profile.push_mib * MIB, seed=9)
    files = write_random_files(ws.dir / "push-data", sizes, f"nixjob-bench-{ws.salt()}")
    paths = ws.add_files(files)
    for f in files:
        f.unlink()
    total = sum(i.nar_size for i in ws.store.query_infos(paths).values())
    _dump_all(ws, paths)  # warm the page cache for both sides alike
    ratios: list[float] = []
    push_s: list[float] = []
    dump_s: list[float] = []
    for _ in range(profile.repeats):
        with timer() as t_dump:
            _dump_all(ws, paths)
        with DoubleProcess(ws.dir) as double:
            client = double.client(profile.jobs)
            config = client.cache_config()
            with timer() as t_push:
                report = push_once(
                    paths,
                    store=ws.store,
                    client=client,
                    upstream_key_names=config.upstream_cache_key_names,
                    jobs=profile.jobs,
                    timeout_s=600,
                )
        if report.pushed.paths != len(paths) or not report.complete:
            raise RuntimeError(
                f"push benchmark: pushed {report.pushed.paths} of {len(paths)} paths "
                f"(failed {report.failed.paths}, failures {report.failures[:3]})"
            )
        dump_s.append(t_dump[0])
        push_s.append(t_push[0])
        ratios.append(t_push[0] / t_dump[0])
    mib = total / MIB
    return at_most(
        "push_vs_dump",
        "Push throughput: push_once / nix-store --dump of the same paths",
        "ratio",
        stats(ratios),
        1.25,
        paths=len(paths),
        nar_mib=round(mib, 1),
        jobs=profile.jobs,
        push_s=stats(push_s).to_json(),
        dump_s=stats(dump_s).to_json(),
        push_mib_s=round(mib / stats(push_s).median, 1),
        dump_mib_s=round(mib / stats(dump_s).median, 1),
    )


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
        100,
        nar_mib=profile.memory_mib,
        wait4_maxrss_mib=stats(with_children).to_json(),
    )
