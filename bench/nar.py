"""Throughput of the in-process NAR writer against ``nix-store --dump``, and of ``verified``.

Run ``.venv/bin/python -m bench.nar [--quick]``. Builds plain directory trees in a temporary
directory (``nix-store --dump`` archives any path), warms the page cache, then times each way
of producing the NAR; every way must produce the same sha256 or the run fails. Stdlib and
nix_job only; prints figures, asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nix_job.nix.nar import CHUNK_SIZE, nar_chunks, verified

MIB = 1024 * 1024
MB = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One way of producing the NARs of some paths: wall and CPU seconds over the repeats."""

    median_s: float
    best_s: float
    cpu_s: float  # median; this process plus the waited-for children


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _drain(chunks: Iterable[bytes]) -> None:
    for _ in chunks:
        pass


def _hashed(chunks: Iterable[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        size += len(chunk)
        digest.update(chunk)
    return size, "sha256:" + digest.hexdigest()


def _dump(path: Path) -> Iterator[bytes]:
    """``nix-store --dump`` read to EOF in CHUNK_SIZE reads, as the uploader's fallback does."""
    with subprocess.Popen(
        ["nix-store", "--dump", str(path)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as proc:
        stdout = proc.stdout
        if stdout is None:
            raise RuntimeError("Popen gave no stdout pipe")
        while chunk := stdout.read(CHUNK_SIZE):
            yield chunk
    if proc.returncode != 0:
        raise RuntimeError(f"nix-store --dump {path} exited {proc.returncode}")


def _time(paths: list[Path], produce: Callable[[Path], object], repeats: int) -> Sample:
    walls, cpus = [], []
    for _ in range(repeats):
        cpu0, wall0 = _cpu(), time.perf_counter()
        for p in paths:
            produce(p)
        walls.append(time.perf_counter() - wall0)
        cpus.append(_cpu() - cpu0)
    return Sample(
        median_s=statistics.median(walls), best_s=min(walls), cpu_s=statistics.median(cpus)
    )


def _write_large(root: Path, files: int, size: int) -> None:
    root.mkdir()
    block = random.Random(1).randbytes(MIB)  # noqa: S311 - benchmark data, not cryptography
    for i in range(files):
        with (root / f"blob-{i}").open("wb") as f:
            for _ in range(size // MIB):
                f.write(block)
    (root / "blob-0").chmod(0o755)


def _write_small(root: Path, files: int, rng: random.Random) -> int:
    """``files`` files of 0-4 KiB, 100 per directory, 10 directories per parent; entries."""
    entries = 1
    for i in range(files):
        directory = root / f"d{i // 1000:02}" / f"e{i // 100 % 10}"
        if not directory.exists():
            directory.mkdir(parents=True)
            entries += 2 if i % 1000 == 0 else 1
        (directory / f"f{i:05}").write_bytes(rng.randbytes(rng.randint(0, 4096)))
        entries += 1
    return entries


def _write_typical(root: Path, count: int, rng: random.Random) -> list[Path]:
    """``count`` store-path-like trees: one directory with three small files."""
    paths = []
    for i in range(count):
        path = root / f"path-{i:04}"
        path.mkdir(parents=True)
        for name in ("bin-wrapper", "lib.so", "share-doc"):
            (path / name).write_bytes(rng.randbytes(rng.randint(100, 3000)))
        paths.append(path)
    return paths


def _report(name: str, paths: list[Path], entries: int, repeats: int) -> None:
    infos = {p: _hashed(_dump(p)) for p in paths}  # also warms the page cache
    for p, info in infos.items():
        if _hashed(nar_chunks(p)) != info:
            sys.exit(f"{name}: nar_chunks and nix-store --dump disagree on {p}; this is a bug")

    def check(chunks: Iterable[bytes], p: Path) -> Iterator[bytes]:
        size, sha = infos[p]
        return verified(chunks, nar_hash=sha, nar_size=size)

    ways: dict[str, Callable[[Path], object]] = {
        "nix-store --dump": lambda p: _drain(_dump(p)),
        "nar_chunks": lambda p: _drain(nar_chunks(p)),
        "nar_chunks + sha256 loop": lambda p: _hashed(nar_chunks(p)),
        "verified(nar_chunks)": lambda p: _drain(check(nar_chunks(p), p)),
        "verified(nix-store --dump)": lambda p: _drain(check(_dump(p), p)),
    }
    size = sum(info[0] for info in infos.values())
    print(
        f"\n{name}: {len(paths)} path(s), {entries} entries, NAR {size / MIB:.1f} MiB; "
        f"median (best) of {repeats}"
    )
    print(f"  {'way':<27} {'wall ms':>17} {'cpu ms':>8} {'MB/s':>6} {'µs/path':>9} {'µs/entry':>8}")
    for way, produce in ways.items():
        s = _time(paths, produce, repeats)
        wall = f"{s.median_s * 1e3:.1f} ({s.best_s * 1e3:.1f})"
        print(
            f"  {way:<27} {wall:>17} {s.cpu_s * 1e3:8.1f} {size / MB / s.median_s:6.0f} "
            f"{s.median_s * 1e6 / len(paths):9.1f} {s.median_s * 1e6 / entries:8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller trees, fewer repeats")
    args = parser.parse_args()
    large_files, small_files, typical, repeats = (4, 20_000, 200, 7)
    large_mib = 64
    if args.quick:
        large_files, large_mib, small_files, typical, repeats = (2, 8, 2000, 50, 3)
    rng = random.Random(7)  # noqa: S311 - benchmark data shape, not cryptography
    load = os.getloadavg()
    print(
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}, chunk {CHUNK_SIZE // 1024} KiB"
    )
    with tempfile.TemporaryDirectory(prefix="bench-nar-") as tmp:
        work = Path(tmp)
        _write_large(work / "large", large_files, large_mib * MIB)
        _report(
            f"(a) {large_files} files of {large_mib} MiB",
            [work / "large"],
            1 + large_files,
            repeats,
        )
        entries = _write_small(work / "small", small_files, rng)
        _report(f"(b) {small_files} files of 0-4 KiB", [work / "small"], entries, repeats)
        paths = _write_typical(work / "typical", typical, rng)
        _report(f"(c) {typical} typical small paths (3 files each)", paths, 4 * typical, repeats)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
