"""The Nix store as the push path sees it: batched Nix CLI queries (path info, closure,
validity) and NAR streams, read in-process from the store's files or from ``nix-store --dump``.

The JSON shapes are read by ``nix_job.nix.path_info`` (pure), the NAR format is
``nix_job.nix.nar``'s. Argv lists only; no shell, no secrets.
"""

from __future__ import annotations

import itertools
import logging
import shlex
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import (
    BASE_NAME_RE,
    STORE_DIR,
)
from nix_job.nix.nar import nar_chunks, verified
from nix_job.nix.path_info import PathInfo, parse_path_info_json
from nix_job.nix.store_db import StoreDb, StoreDbError
from nix_job.nix.store_uri import physical_state_dir, physical_store_dir, store_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildClosure:
    """``NixStore.build_closure``: the paths, and the roots whose build inputs are unknown."""

    paths: tuple[str, ...]
    without_derivation: tuple[str, ...]  # no deriver recorded, or its .drv is not in the store


#: Paths per CLI call: 4000 store paths of at most 256 bytes are 1 MiB of argv, half of
#: Linux's usual ARG_MAX (2 MiB); typical paths are about 100 bytes. Each call costs a Nix
#: start-up (tens of ms), so fewer, bigger calls (docs/benchmarks.md, warm cache).
ARGV_BATCH = 4000
#: Bytes per NAR chunk read from ``nix-store --dump``; what is in memory per upload.
DUMP_CHUNK = 256 * 1024
#: A query that takes longer than this is treated as a hung Nix.
QUERY_TIMEOUT_S = 600.0
_STDERR_TAIL = 2000


# --- the store adapter --------------------------------------------------------------------------


class NixStore:
    """The Nix store as the pusher sees it, through ``nix-store`` and ``nix`` subprocesses.

    ``env`` is the complete environment for Nix (``NIX_CONFIG``, ``NIX_REMOTE``, ``PATH``…;
    ``None`` inherits ours) and must not carry the Attic token. ``store_dir`` is the logical
    store directory; ``nix_bin_dir`` pins the binaries, otherwise they come from ``PATH``.

    ``real_store_dir`` is where the files of store paths are on this machine: as given, else
    derived from the store URI in ``env`` (``nix_job.nix.store_uri``); None when they are
    elsewhere (a remote store) or ``in_process_nar`` is False, and then every NAR comes from
    ``nix-store --dump`` (of the physical path when it is known).
    Validity, path info and closures are read from the store's database
    (``nix_job.nix.store_db``) when it is readable and ``read_db`` is True, else asked of Nix,
    in batches either way. ``processes`` counts the Nix processes started.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        store_dir: str = STORE_DIR,
        nix_bin_dir: Path | None = None,
        *,
        in_process_nar: bool = True,
        read_db: bool = True,
        real_store_dir: str | None = None,
    ) -> None:
        self._env = dict(env) if env is not None else None
        self.store_dir = store_dir.rstrip("/")
        self._nix_store = str(nix_bin_dir / "nix-store") if nix_bin_dir else "nix-store"
        self._nix = str(nix_bin_dir / "nix") if nix_bin_dir else "nix"
        physical = real_store_dir or physical_store_dir(store_uri(self._env), self.store_dir)
        self.real_store_dir = physical.rstrip("/") if in_process_nar and physical else None
        self._started = itertools.count(1)
        self._processes = 0
        uri = store_uri(self._env)
        state_dir = physical_state_dir(uri, (self._env or {}).get("NIX_STATE_DIR"))
        self._db = StoreDb.open(state_dir, self.store_dir) if read_db and state_dir else None

    @property
    def reads_database(self) -> bool:
        """Whether queries are answered from the store's database (no Nix process)."""
        return self._db is not None

    def close(self) -> None:
        """Close the database connection, if any; queries then go through Nix."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _from_db(self, error: StoreDbError) -> None:
        """A database query failed: ask Nix from now on (the same answers, slower)."""
        if self._db is not None:
            log.info(
                "reading the Nix database %s failed (%s); store queries go through Nix",
                self._db.path,
                error,
            )
            self.close()

    @property
    def processes(self) -> int:
        """Nix processes started so far (queries and ``nix-store --dump``)."""
        return self._processes

    def _count_process(self) -> None:
        # next() on itertools.count is atomic under the GIL: safe from the upload threads.
        self._processes = next(self._started)

    # Queries -------------------------------------------------------------------------------

    def valid(self, paths: Iterable[str]) -> set[str]:
        """The subset of ``paths`` Nix holds as valid. Non-store paths are simply not valid."""
        candidates = self._store_paths(paths)
        if self._db is not None:
            try:
                return self._db.valid(candidates)
            except StoreDbError as exc:
                self._from_db(exc)
        valid: set[str] = set()
        for chunk in _chunks(candidates):
            out = self._run([self._nix_store, "--check-validity", "--print-invalid", *chunk])
            invalid = set(out.split())
            valid.update(p for p in chunk if p not in invalid)
        return valid

    def closure(self, paths: Iterable[str]) -> list[str]:
        """Closure of the valid roots (invalid roots skipped), dependencies before dependents.

        Roots are usually all valid (the watcher checked them, outputs were just built), so
        ``--requisites`` is asked directly: one Nix call per batch. Only when it fails (a root
        is invalid) are the valid roots sorted out first.
        """
        roots = self._store_paths(paths)
        if not roots:
            return []
        if self._db is not None:
            try:
                return self._db.closure(roots)
            except StoreDbError as exc:
                self._from_db(exc)
        try:
            return self._requisites(roots)
        except StoreError:
            pass
        try:
            return self._requisites(self.valid(roots))
        except StoreError:
            # A root may have been garbage-collected between the two calls: look once more.
            return self._requisites(self.valid(roots))

    def registered_since(self, since: float) -> list[str] | None:
        """The valid paths Nix registered at or after ``since`` (a wall-clock time), from the
        store's database; None when there is no database to ask (no Nix CLI equivalent)."""
        if self._db is not None:
            try:
                return self._db.registered_since(int(since))
            except StoreDbError as exc:
                self._from_db(exc)
        return None

    def build_closure(self, paths: Iterable[str]) -> BuildClosure:
        """What another machine needs to use *and rebuild* ``paths``: their closure, plus for
        each one whose derivation is in the store, everything that derivation's build reads
        (sources, fetched inputs, the outputs of the derivations it depends on) with closures.
        Derivations themselves are left out (Nix re-creates them by evaluation)."""
        roots = sorted(self.valid(paths))
        derivers = self._derivers(roots)
        present = self.valid(derivers.values())
        extra = self._build_inputs(sorted(present)) if present else []
        closure = self.closure([*roots, *(p for p in extra if not p.endswith(".drv"))])
        return BuildClosure(
            paths=tuple(p for p in closure if not p.endswith(".drv")),
            without_derivation=tuple(r for r in roots if derivers.get(r) not in present),
        )

    def _derivers(self, roots: list[str]) -> dict[str, str]:
        if self._db is not None:
            try:
                return self._db.derivers(roots)
            except StoreDbError as exc:
                self._from_db(exc)
        found: dict[str, str] = {}
        for chunk in _chunks(roots):
            lines = self._run([self._nix_store, "--query", "--deriver", *chunk]).split()
            found.update((r, d) for r, d in zip(chunk, lines, strict=False) if d.endswith(".drv"))
        return found

    def _build_inputs(self, derivations: list[str]) -> list[str]:
        if self._db is not None:
            try:
                return self._db.build_inputs(derivations)
            except StoreDbError as exc:
                self._from_db(exc)
        seen: dict[str, None] = {}
        for chunk in _chunks(derivations):
            argv = [self._nix_store, "--query", "--requisites", "--include-outputs", *chunk]
            seen.update(dict.fromkeys(self._run(argv).split()))
        return list(seen)

    def _requisites(self, roots: Iterable[str]) -> list[str]:
        seen: dict[str, None] = {}
        for chunk in _chunks(sorted(roots)):
            out = self._run([self._nix_store, "--query", "--requisites", *chunk])
            seen.update(dict.fromkeys(out.split()))
        return list(seen)

    def query_infos(self, paths: Iterable[str]) -> dict[str, PathInfo]:
        """Path info for every valid path given; invalid or collected paths are left out."""
        candidates = self._store_paths(paths)
        wanted = set(candidates)
        infos: dict[str, PathInfo] = {}
        if self._db is not None:
            try:
                infos, unsized = self._db.query_infos(candidates)
            except StoreDbError as exc:
                self._from_db(exc)
            else:
                # Rows without a NAR size (a very old Nix registered them) are asked of Nix.
                candidates = unsized
        for chunk in _chunks(candidates):
            out = self._run(
                [
                    self._nix,
                    "--extra-experimental-features",
                    "nix-command",
                    "path-info",
                    "--json",
                    *chunk,
                ]
            )
            infos.update(parse_path_info_json(out, self.store_dir))
        return {p: i for p, i in infos.items() if p in wanted}

    # NAR streams ---------------------------------------------------------------------------

    @property
    def in_process_nar(self) -> bool:
        """Whether ``nar`` can read store paths' files here (else only ``dump`` works)."""
        return self.real_store_dir is not None

    @contextmanager
    def nar(self, info: PathInfo) -> Iterator[Iterator[bytes]]:
        """The NAR of ``info.path`` written in-process from its files, checked as it streams.

        The stream never ends with bytes whose sha256 or size differ from the registered
        ``narHash``/``narSize``: it raises ``NarMismatch`` instead, and ``NarReadError`` when a
        file cannot be read (both ``StoreError``). No Nix process is started.
        """
        if self.real_store_dir is None:
            raise StoreError(
                f"the files of {self.store_dir} are not on this machine; use dump() instead"
            )
        physical = self._physical(info.path)
        stream = verified(
            nar_chunks(physical), nar_hash=info.nar_hash, nar_size=info.nar_size, path=info.path
        )
        with closing(stream):
            yield stream

    @contextmanager
    def dump(self, path: str) -> Iterator[Iterator[bytes]]:
        """Stream the NAR of ``path`` from ``nix-store --dump`` in chunks of ``DUMP_CHUNK``.

        The NAR is never whole in memory. Leaving the block early kills the process; a dump
        that fails raises StoreError (with the stderr tail) from the iterator, after its
        last chunk.
        """
        # nix-store --dump archives a file-system path, so a chroot store's is its physical one.
        argv = [self._nix_store, "--dump", self._physical(path)]
        with tempfile.TemporaryFile() as stderr:
            self._count_process()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                    env=self._env,
                )
            except OSError as exc:
                raise self._spawn_error(argv, exc) from exc
            try:
                yield _read_dump(proc, argv, stderr)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()

    # Helpers -------------------------------------------------------------------------------

    def _physical(self, path: str) -> str:
        """Where the files of store path ``path`` are on this machine (itself when unknown)."""
        if self.real_store_dir is None or not path.startswith(self.store_dir + "/"):
            return path
        return self.real_store_dir + path[len(self.store_dir) :]

    def _store_paths(self, paths: Iterable[str]) -> list[str]:
        """Well-formed top-level store paths, in order, without duplicates."""
        prefix = self.store_dir + "/"
        out: dict[str, None] = {}
        for p in paths:
            if p.startswith(prefix) and BASE_NAME_RE.match(p[len(prefix) :]):
                out[p] = None
        return list(out)

    def _run(self, argv: list[str]) -> str:
        log.debug("running %s", shlex.join(argv))
        self._count_process()
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                env=self._env,
                timeout=QUERY_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StoreError(
                f"`{_short(argv)}` did not finish within {QUERY_TIMEOUT_S:.0f} s. "
                "Nix may be waiting for a lock held by another process or a busy daemon."
            ) from exc
        except OSError as exc:
            raise self._spawn_error(argv, exc) from exc
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-_STDERR_TAIL:].strip()
            raise StoreError(
                f"`{_short(argv)}` failed with exit code {done.returncode}: "
                f"{tail or '(no output)'}\n"
                "Check that the Nix store is usable (`nix-store --verify`)."
            )
        return done.stdout.decode()

    def _spawn_error(self, argv: list[str], exc: OSError) -> StoreError:
        path = (self._env or {}).get("PATH", "(this process's)")
        return StoreError(
            f"could not start `{argv[0]}`: {exc}. Nix must be installed and on PATH "
            f"(PATH={path!r}), or its bin directory passed as `nix_bin_dir`."
        )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), ARGV_BATCH):
        yield items[start : start + ARGV_BATCH]


def _short(argv: list[str]) -> str:
    """The command line for messages, with long path lists cut."""
    shown = argv if len(argv) <= 8 else [*argv[:8], f"… ({len(argv) - 8} more)"]
    return shlex.join(shown)


def _read_dump(
    proc: subprocess.Popen[bytes], argv: list[str], stderr: IO[bytes]
) -> Iterator[bytes]:
    stdout = proc.stdout
    if stdout is None:  # pragma: no cover - Popen was given stdout=PIPE
        raise StoreError(f"`{shlex.join(argv)}` has no output pipe; this is a nix-job bug.")
    while chunk := stdout.read(DUMP_CHUNK):
        yield chunk
    code = proc.wait()
    if code != 0:
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace")[-_STDERR_TAIL:].strip()
        raise StoreError(
            f"`{shlex.join(argv)}` failed with exit code {code}: {tail or '(no output)'}\n"
            "The path may have been garbage-collected or the store is damaged; "
            f"check it with `nix-store --verify-path {argv[-1]}`."
        )
