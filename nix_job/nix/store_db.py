"""Validity, path info and closures read from the local Nix store's database, without a process.

Every ``nix-store``/``nix path-info`` call costs a Nix start-up (10-30 ms of CPU, more on a
loaded machine) taken from the build; the push path asks these questions for every batch of
new store paths. The answers are rows of Nix's SQLite database, which a read-only connection
reads in well under a millisecond without taking any lock a writer waits on (Nix keeps the
database in WAL mode, where readers never block writers).

Facts from NixOS/nix, src/libstore/schema.sql and local-store.cc/hh (schema version 10 since
Nix 1.12, unchanged through 2.3x): ``ValidPaths(id, path, hash, registrationTime, deriver,
narSize, ultimate, sigs, ca)``, where ``hash`` is the NAR hash as ``sha256:<base16>``, ``sigs``
is space-separated and ``deriver`` a full path; ``Refs(referrer, reference)`` by id, a path's
own id included when it refers to itself; the database is ``<state dir>/db/db.sqlite`` and its
version is in ``<state dir>/db/schema``.

Anything unexpected (another schema version, no permission, a busy or damaged database) makes
``StoreDb.open`` return None or a query raise ``StoreDbError``; the caller then asks Nix.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from nix_job.core.nixhash import to_attic_sha256
from nix_job.nix.path_info import PathInfo

log = logging.getLogger(__name__)

#: The only schema version read; any other makes nix-job ask Nix instead.
SCHEMA_VERSION = "10"
# The paths or ids of a query go in as one JSON array parameter, read with ``json_each`` (built
# into SQLite since 3.38, and in most builds before): constant statements, no limit on host
# parameters. ``StoreDb.open`` checks that it works.
#: How long a query waits for a lock (only a database in rollback-journal mode takes one).
_BUSY_TIMEOUT_S = 1.0


class StoreDbError(Exception):
    """A query could not be answered from the database; ask Nix instead."""


class StoreDb:
    """Read-only queries of one Nix database. Thread-safe: one connection behind a lock, each
    query one read transaction (a consistent snapshot)."""

    def __init__(self, connection: sqlite3.Connection, store_dir: str, path: Path) -> None:
        self._db = connection
        self._lock = threading.Lock()
        self._prefix = store_dir.rstrip("/") + "/"
        self.path = path

    @classmethod
    def open(cls, state_dir: str, store_dir: str) -> StoreDb | None:
        """The database under ``state_dir`` (e.g. ``/nix/var/nix``), or None (logged) when it
        is missing, unreadable or of another schema version."""
        db_dir = Path(state_dir) / "db"
        path = db_dir / "db.sqlite"
        try:
            version = (db_dir / "schema").read_text().strip()
        except OSError as exc:
            log.debug("no Nix database at %s (%s); asking Nix for store queries", db_dir, exc)
            return None
        if version != SCHEMA_VERSION:
            log.info(
                "the Nix database at %s has schema version %s, not %s; store queries go "
                "through Nix",
                path,
                version,
                SCHEMA_VERSION,
            )
            return None
        try:
            # mode=ro: never create, write or take a write lock; not immutable, as Nix writes.
            connection = sqlite3.connect(
                f"{path.as_uri()}?mode=ro",
                uri=True,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
            )
            connection.execute(
                "select id, path, hash, narSize, deriver, sigs, ca from ValidPaths limit 1"
            ).fetchall()
            connection.execute("select referrer, reference from Refs limit 1").fetchall()
            connection.execute("select drv, id, path from DerivationOutputs limit 1").fetchall()
        except sqlite3.Error as exc:
            log.info(
                "cannot read the Nix database at %s (%s); store queries go through Nix", path, exc
            )
            return None
        return cls(connection, store_dir, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # Queries -------------------------------------------------------------------------------

    def valid(self, paths: Iterable[str]) -> set[str]:
        with self._snapshot() as db:
            rows = db.execute(
                "select path from ValidPaths where path in (select value from json_each(?))",
                _json(paths),
            )
            return {row[0] for row in rows}

    def query_infos(self, paths: Iterable[str]) -> tuple[dict[str, PathInfo], list[str]]:
        """Path info of the valid ``paths``, and the valid paths whose row lacks its NAR size
        (registered by a very old Nix), for the caller to ask Nix about."""
        with self._snapshot() as db:
            rows: dict[int, tuple[str, str, int | None, str | None, str | None, str | None]] = {
                row[0]: row[1:]
                for row in db.execute(
                    "select id, path, hash, narSize, deriver, sigs, ca from ValidPaths"
                    " where path in (select value from json_each(?))",
                    _json(paths),
                )
            }
            refs = self._references(db, list(rows))
        infos: dict[str, PathInfo] = {}
        unsized: list[str] = []
        for row_id, (path, nar_hash, nar_size, deriver, sigs, ca) in rows.items():
            if not nar_size:
                unsized.append(path)
                continue
            try:
                infos[path] = PathInfo(
                    path=path,
                    nar_hash=to_attic_sha256(nar_hash),
                    nar_size=nar_size,
                    references=tuple(sorted(self._base(r) for r in refs.get(row_id, ()))),
                    deriver=self._base(deriver) if deriver else None,
                    sigs=tuple(sigs.split()) if sigs else (),
                    ca=ca or None,
                )
            except ValueError as exc:
                raise StoreDbError(f"unreadable row for {path}: {exc}") from exc
        return infos, unsized

    def closure(self, paths: Iterable[str]) -> list[str]:
        """The closure of the valid ``paths`` (invalid ones skipped), every path after the
        paths it refers to, as ``nix-store --query --requisites`` orders them."""
        with self._snapshot() as db:
            ids = self._closure_ids(db, paths)
            refs = self._references(db, list(ids))
        return _dependencies_first(ids, refs)

    def registered_since(self, since: int) -> list[str]:
        """The valid paths registered at or after ``since`` (seconds since the epoch)."""
        with self._snapshot() as db:
            rows = db.execute("select path from ValidPaths where registrationTime >= ?", (since,))
            return [row[0] for row in rows]

    def derivers(self, paths: Iterable[str]) -> dict[str, str]:
        """The deriver (a ``.drv`` path) Nix recorded for each of the valid ``paths`` that has
        one; the derivation itself may no longer be in the store."""
        with self._snapshot() as db:
            return dict(
                db.execute(
                    "select path, deriver from ValidPaths where deriver is not null"
                    " and path in (select value from json_each(?))",
                    _json(paths),
                ).fetchall()
            )

    def build_inputs(self, derivations: Iterable[str]) -> list[str]:
        """Every valid path needed to build ``derivations`` again, as ``nix-store --query
        --requisites --include-outputs`` lists it: their closure (derivations and sources) and
        the valid outputs of every derivation in it. Unordered; closures are the caller's."""
        with self._snapshot() as db:
            ids = self._closure_ids(db, derivations)
            outputs = [
                row[0]
                for row in db.execute(
                    "select ValidPaths.path from DerivationOutputs join ValidPaths"
                    " on ValidPaths.path = DerivationOutputs.path"
                    " where DerivationOutputs.drv in (select value from json_each(?))",
                    _json(ids),
                )
            ]
        return sorted(set(ids.values()) | set(outputs))

    # Helpers -------------------------------------------------------------------------------

    def _closure_ids(self, db: sqlite3.Connection, paths: Iterable[str]) -> dict[int, str]:
        """Row id → path for the closure of the valid ``paths`` (one recursive query)."""
        return dict(
            db.execute(
                "with recursive closure(id) as ("
                " select id from ValidPaths where path in (select value from json_each(?))"
                " union select Refs.reference from Refs"
                " join closure on Refs.referrer = closure.id)"
                " select ValidPaths.id, ValidPaths.path from closure"
                " join ValidPaths on ValidPaths.id = closure.id",
                _json(paths),
            ).fetchall()
        )

    def _references(self, db: sqlite3.Connection, ids: Iterable[int]) -> dict[int, list[str]]:
        refs: dict[int, list[str]] = {}
        for referrer, path in db.execute(
            "select Refs.referrer, ValidPaths.path from Refs join ValidPaths"
            " on ValidPaths.id = Refs.reference"
            " where Refs.referrer in (select value from json_each(?))",
            _json(ids),
        ):
            refs.setdefault(referrer, []).append(path)
        return refs

    def _base(self, path: str) -> str:
        return path.removeprefix(self._prefix)

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(self._db, self._lock)


class _Snapshot:
    """One read transaction under the connection's lock; sqlite errors become StoreDbError."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("begin")
        except sqlite3.Error as exc:
            self._lock.release()
            raise StoreDbError(str(exc)) from exc
        return self._db

    def __exit__(self, kind: object, exc: BaseException | None, _tb: object) -> None:
        try:
            self._db.execute("rollback")  # a read transaction: nothing to commit
        except sqlite3.Error:
            pass
        finally:
            self._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise StoreDbError(str(exc)) from exc


def _json(items: Iterable[str] | Iterable[int]) -> tuple[str]:
    """Query parameters: the items as one JSON array, for ``json_each(?)``."""
    return (json.dumps(list(items)),)


def _dependencies_first(paths: dict[int, str], refs: dict[int, list[str]]) -> list[str]:
    """``paths`` ordered so every path comes after those it refers to (self-references and
    references outside ``paths`` ignored); ties in path order, so the result is stable."""
    by_path = {p: i for i, p in paths.items()}
    order: list[str] = []
    done: set[str] = set()
    for start in sorted(by_path):
        if start in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [
            (start, iter(sorted(refs.get(by_path[start], ()))))
        ]
        done.add(start)
        while stack:
            path, pending = stack[-1]
            for ref in pending:
                if ref not in done and ref in by_path:
                    done.add(ref)
                    stack.append((ref, iter(sorted(refs.get(by_path[ref], ())))))
                    break
            else:
                stack.pop()
                order.append(path)
    return order
