"""Fake Nix stores: ``FakeStore`` for the push session (paths, references, NARs) and ``StoreDir``
(a directory laid out like a store, with Nix's lock dance) for the watcher."""

from __future__ import annotations

import errno
import hashlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import STORE_DIR
from nix_job.nix.nar import NarReadError, verified
from nix_job.nix.path_info import PathInfo
from nix_job.nix.store import BuildClosure


@dataclass
class FakeStore:
    """Store paths with references, NAR bytes and signatures; paths can be 'collected'.

    ``nar`` (the in-process stream) reads ``files`` where a path has an entry there (a
    tampered copy of its NAR), else its registered NAR, and checks it as ``NixStore.nar``
    does; ``dump`` always gives the registered NAR. ``nar_calls``/``dump_calls`` count them.
    """

    in_process_nar: bool = True
    store_dir: str = STORE_DIR
    real_store_dir: str | None = STORE_DIR
    files: dict[str, bytes] = field(default_factory=dict)
    files_elsewhere: bool = False  # valid paths whose files are not under real_store_dir
    nar_calls: int = 0
    dump_calls: int = 0
    nars: dict[str, bytes] = field(default_factory=dict)
    refs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sigs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    derivers: dict[str, str] = field(default_factory=dict)  # output -> .drv path
    build_inputs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # .drv -> inputs
    collected: set[str] = field(default_factory=set)
    collect_on_dump: set[str] = field(default_factory=set)
    broken_dumps: set[str] = field(default_factory=set)
    closure_error: Exception | None = None
    closure_calls: int = 0

    def add(self, path: str, *refs: str, size: int = 100, sigs: tuple[str, ...] = ()) -> str:
        self.nars[path] = path.encode() * (size // len(path) + 1)
        self.nars[path] = self.nars[path][:size]
        self.refs[path] = refs
        self.sigs[path] = sigs
        return path

    def info(self, path: str) -> PathInfo:
        nar = self.nars[path]
        return PathInfo(
            path=path,
            nar_hash="sha256:" + hashlib.sha256(nar).hexdigest(),
            nar_size=len(nar),
            references=tuple(r.removeprefix(STORE_DIR + "/") for r in self.refs[path]),
            sigs=self.sigs[path],
        )

    def _valid(self, path: str) -> bool:
        return path in self.nars and path not in self.collected

    def valid(self, paths: Iterable[str]) -> set[str]:
        return {p for p in paths if self._valid(p)}

    def closure(self, paths: Iterable[str]) -> list[str]:
        self.closure_calls += 1
        if self.closure_error is not None:
            raise self.closure_error
        out: dict[str, None] = {}

        def visit(p: str) -> None:
            if p in out or not self._valid(p):
                return
            for r in self.refs[p]:
                visit(r)
            out[p] = None

        for p in paths:
            visit(p)
        return list(out)

    def registered_since(self, since: float) -> list[str] | None:
        del since
        return None  # no database: the watcher lists the store instead

    def build_closure(self, paths: Iterable[str]) -> BuildClosure:
        """Closure of the roots, plus the closure of each root's derivation's build inputs
        (when that derivation is "in the store", i.e. valid)."""
        roots = [p for p in paths if self._valid(p)]
        extra: list[str] = []
        unknown: list[str] = []
        for root in roots:
            drv = self.derivers.get(root)
            if drv is None or not self._valid(drv):
                unknown.append(root)
                continue
            extra += self.build_inputs.get(drv, ())
        closure = self.closure([*roots, *extra])
        return BuildClosure(
            paths=tuple(p for p in closure if not p.endswith(".drv")),
            without_derivation=tuple(unknown),
        )

    def query_infos(self, paths: Iterable[str]) -> dict[str, PathInfo]:
        return {p: self.info(p) for p in paths if self._valid(p)}

    @contextmanager
    def nar(self, info: PathInfo) -> Iterator[Iterator[bytes]]:
        self.nar_calls += 1
        path = info.path
        if path in self.collect_on_dump:
            self.collected.add(path)
        physical = (self.real_store_dir or "") + path.removeprefix(self.store_dir)
        if not self._valid(path) or self.files_elsewhere:
            raise NarReadError(
                f"lstat of {physical!r} failed (ENOENT)", path=physical, errno=errno.ENOENT
            )
        if path in self.broken_dumps:
            raise NarReadError(f"reading {path!r} failed (EIO)", path=path, errno=errno.EIO)
        data = self.files.get(path, self.nars[path])
        stream = verified(
            iter([data[:10], data[10:]]), nar_hash=info.nar_hash, nar_size=info.nar_size, path=path
        )
        with closing(stream):
            yield stream

    @contextmanager
    def dump(self, path: str) -> Iterator[Iterator[bytes]]:
        self.dump_calls += 1
        if path in self.collect_on_dump:
            self.collected.add(path)
        if not self._valid(path) or path in self.broken_dumps:
            raise StoreError(f"`nix-store --dump {path}` failed: No such file or directory")
        nar = self.nars[path]
        yield iter([nar[:10], nar[10:]])


class FakeNix:
    """is_valid double: a set of valid logical paths, call log, and scripted failures."""

    def __init__(self, *, fail_first: int = 0, fail_names: Sequence[str] = ()) -> None:
        self.valid: set[str] = set()
        self.calls: list[list[str]] = []
        self._fail_left = fail_first
        self._fail_names = set(fail_names)
        self.release = threading.Event()
        self.release.set()

    def __call__(self, paths: Sequence[str]) -> set[str]:
        self.calls.append(list(paths))
        self.release.wait()
        if self._fail_left and any(p.rsplit("/", 1)[1] in self._fail_names for p in paths):
            self._fail_left -= 1
            raise RuntimeError("nix-store --check-validity exited 1")
        return {p for p in paths if p in self.valid}


class StoreDir:
    """A tmp_path directory laid out like a store, with Nix's lock dance and a FakeNix."""

    def __init__(self, root: Path, nix: FakeNix, logical: str = "/nix/store") -> None:
        self.dir = root
        self.nix = nix
        self.logical = logical

    def logical_path(self, name: str) -> str:
        return f"{self.logical}/{name}"

    def lock(self, name: str) -> None:
        (self.dir / f"{name}.lock").touch()

    def unlock(self, name: str) -> None:
        (self.dir / f"{name}.lock").unlink()

    def add(self, name: str, *, valid: bool = True, lock: bool = True) -> str:
        """Create the path the way Nix does: lock, contents, register, delete the lock."""
        if lock:
            self.lock(name)
        (self.dir / name).mkdir()
        if valid:
            self.nix.valid.add(self.logical_path(name))
        if lock:
            self.unlock(name)
        return self.logical_path(name)
