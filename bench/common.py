"""Shared benchmark plumbing: run sizes, statistics, the Nix workspace and the double process.

The workspace owns everything a run puts in the Nix store (GC roots and deletion at the end);
``DoubleProcess`` runs the Attic double in a separate process (real HTTP over loopback).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nix_job.cache.attic import AtticClient
from nix_job.core.secret import Secret
from nix_job.nix.store import NixStore
from tests.nixenv import NixEnv

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MIB = 1024 * 1024
GCROOTS = Path("/nix/var/nix/gcroots")

Mode = Literal["full", "quick", "smoke"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PushSize:
    """One push workload: ``paths`` store paths of mixed sizes totalling ``mib`` MiB of NAR."""

    label: str  # "small" or "large": the figure's key suffix
    paths: int
    mib: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """The sizes of one run; ``full`` is what docs/benchmarks.md reports."""

    mode: Mode
    repeats: int
    push_sizes: tuple[PushSize, PushSize]  # small, large
    overlap_drvs: int
    overlap_sleep_s: float
    overlap_mib_each: float
    warm_paths: int
    warm_repeats: int  # cheap and absolute (not a ratio): more samples for a steadier median
    memory_mib: int
    memory_repeats: int
    startup_repeats: int
    jobs: int = 6  # the action's push-jobs default


PROFILES: dict[Mode, Profile] = {
    "full": Profile(
        mode="full",
        repeats=5,
        push_sizes=(
            PushSize(label="small", paths=100, mib=64),
            PushSize(label="large", paths=200, mib=256),
        ),
        overlap_drvs=40,
        overlap_sleep_s=0.3,
        overlap_mib_each=2,
        warm_paths=2000,
        warm_repeats=9,
        memory_mib=1024,
        memory_repeats=3,
        startup_repeats=7,
    ),
    "quick": Profile(
        mode="quick",
        repeats=3,
        push_sizes=(
            PushSize(label="small", paths=100, mib=64),
            PushSize(label="large", paths=150, mib=128),
        ),
        overlap_drvs=24,
        overlap_sleep_s=0.3,
        overlap_mib_each=2,
        warm_paths=2000,
        warm_repeats=5,
        memory_mib=256,
        memory_repeats=2,
        startup_repeats=5,
    ),
    "smoke": Profile(
        mode="smoke",
        repeats=1,
        push_sizes=(
            PushSize(label="small", paths=20, mib=4),
            PushSize(label="large", paths=30, mib=8),
        ),
        overlap_drvs=6,
        overlap_sleep_s=0.1,
        overlap_mib_each=0.25,
        warm_paths=100,
        warm_repeats=1,
        memory_mib=16,
        memory_repeats=1,
        startup_repeats=1,
    ),
}


# --- statistics -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """Median and spread (min to max, and the quartiles) of repeated samples."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def quartiles(self) -> tuple[float, float]:
        if len(self.samples) < 2:
            return (self.samples[0], self.samples[0])
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return (q[0], q[2])

    def to_json(self) -> dict[str, Any]:
        q1, q3 = self.quartiles()
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "q1": q1,
            "q3": q3,
            "samples": list(self.samples),
        }


def stats(samples: Sequence[float]) -> Stats:
    if not samples:
        raise ValueError("no samples: the measurement did not run")
    return Stats(samples=tuple(samples))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a real observed latency)."""
    if not values:
        raise ValueError("no values for a percentile")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One reported figure: its value (a median), spread, target and the notes behind it."""

    key: str
    title: str
    unit: str
    value: Stats
    target: str | None = None  # e.g. "≤ 1.25"; None: reported, no target
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            **self.value.to_json(),
            "details": self.details,
        }


def at_most(key: str, title: str, unit: str, value: Stats, limit: float, **details: Any) -> Figure:
    return Figure(
        key=key,
        title=title,
        unit=unit,
        value=value,
        target=f"≤ {limit:g}",
        met=value.median <= limit,
        details=details,
    )


# --- the Nix workspace ----------------------------------------------------------------------


class Workspace:
    """A temporary directory, an isolated offline Nix env, and the store paths a run created.

    Paths are rooted under ``/nix/var/nix/gcroots/nix-job-bench-<id>`` while the run lasts;
    ``cleanup()`` removes the roots and deletes the paths (``nix-store --delete``).
    """

    def __init__(self, *, keep: bool = False) -> None:
        self.id = uuid.uuid4().hex[:10]
        self.dir = Path(tempfile.mkdtemp(prefix=f"nix-job-bench-{self.id}-"))
        self.nix = NixEnv.create(self.dir / "nix", extra_conf=("max-jobs = 2",))
        self.env = self.nix.env()
        self.store = NixStore(self.env)
        self.roots = GCROOTS / f"nix-job-bench-{self.id}"
        self.roots.mkdir(parents=True, exist_ok=True)
        self.created: dict[str, None] = {}
        self.keep = keep
        self._salt = 0

    def salt(self) -> str:
        self._salt += 1
        return f"{self.id}{self._salt:03d}"

    def own(self, paths: Sequence[str]) -> None:
        """Root ``paths`` for the run and delete them at the end."""
        for path in paths:
            if path in self.created:
                continue
            self.created[path] = None
            link = self.roots / path.rsplit("/", 1)[1]
            if not link.is_symlink():
                link.symlink_to(path)

    def add_files(self, files: Sequence[Path]) -> list[str]:
        """``nix-store --add`` each file (one call per 500); their store paths, in order."""
        out: list[str] = []
        for start in range(0, len(files), 500):
            chunk = [str(f) for f in files[start : start + 500]]
            out += self.nix.text(["nix-store", "--add", *chunk]).split()
        if len(out) != len(files):
            raise RuntimeError(f"nix-store --add gave {len(out)} paths for {len(files)} files")
        self.own(out)
        return out

    def cleanup(self) -> None:
        shutil.rmtree(self.roots, ignore_errors=True)
        if self.created and not self.keep:
            drvs = self._derivers(list(self.created))
            paths = list(self.created) + drvs
            for start in range(0, len(paths), 500):
                proc = self.nix.run(
                    ["nix-store", "--delete", *paths[start : start + 500]], check=False
                )
                if proc.returncode != 0:
                    tail = proc.stderr.decode(errors="replace").strip()[-400:]
                    print(f"bench: could not delete some store paths: {tail}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _derivers(self, paths: list[str]) -> list[str]:
        found: list[str] = []
        for start in range(0, len(paths), 500):
            proc = self.nix.run(
                ["nix-store", "--query", "--deriver", *paths[start : start + 500]], check=False
            )
            found += [
                p for p in proc.stdout.decode().split() if p.endswith(".drv") and os.path.exists(p)
            ]
        return list(dict.fromkeys(found))


def random_sizes(count: int, total: int, seed: int) -> list[int]:
    """``count`` sizes summing to about ``total``: log-uniform, so a few big and many small."""
    rng = random.Random(seed)  # noqa: S311 - benchmark data shape, not cryptography
    weights = [2 ** rng.uniform(0, 14) for _ in range(count)]
    scale = total / sum(weights)
    return [max(1, int(w * scale)) for w in weights]


def write_random_files(directory: Path, sizes: Sequence[int], prefix: str) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i, size in enumerate(sizes):
        path = directory / f"{prefix}-{i}"
        with path.open("wb") as handle:
            left = size
            while left > 0:
                n = min(left, 8 * MIB)
                handle.write(os.urandom(n))
                left -= n
        files.append(path)
    return files


def nar_of_regular_file(contents: bytes) -> bytes:
    """The NAR serialisation of one non-executable regular file (as ``nix-store --add``)."""

    def s(data: bytes) -> bytes:
        return len(data).to_bytes(8, "little") + data + b"\0" * (-len(data) % 8)

    return b"".join(
        s(x) for x in (b"nix-archive-1", b"(", b"type", b"regular", b"contents", contents, b")")
    )


# --- the double in its own process ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DoubleInfo:
    url: str
    cache: str
    token: str
    log: dict[str, Any] = field(default_factory=dict)

    def client(self, jobs: int) -> AtticClient:
        """A client as the action builds one (``push-jobs`` + 1 connections)."""
        return AtticClient(
            endpoint=self.url,
            cache=self.cache,
            token=Secret(self.token),
            max_connections=jobs + 1,
        )


class DoubleProcess:
    """``python -m bench.double`` as a context manager; ``log`` holds request counts after."""

    def __init__(self, workdir: Path, *, seed: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="double-", dir=workdir))
        self._seed = seed
        self._proc: subprocess.Popen[bytes] | None = None
        self.info: DoubleInfo | None = None
        self.log: dict[str, Any] = {}

    def __enter__(self) -> DoubleInfo:
        state = self._dir / "state.json"
        argv = [
            PYTHON,
            "-m",
            "bench.double",
            "--state-file",
            str(state),
            "--log-file",
            str(self._dir / "log.json"),
        ]
        if self._seed is not None:
            argv += ["--seed", str(self._seed)]
        self._proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not state.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(
                    "the Attic double (python -m bench.double) did not start; see its stderr"
                )
            time.sleep(0.02)
        data = json.loads(state.read_text())
        self.info = DoubleInfo(url=data["url"], cache=data["cache"], token=data["token"])
        return self.info

    def __exit__(self, *_exc: object) -> None:
        self._stop()
        log_file = self._dir / "log.json"
        if log_file.exists():
            self.log = json.loads(log_file.read_text())
        shutil.rmtree(self._dir, ignore_errors=True)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def timer() -> Iterator[list[float]]:
    """``with timer() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)
