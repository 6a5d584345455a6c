"""What became of each path, seen at the push session's seams.

The session talks to Nix and Attic only through ``PushStore``, ``PushClient`` and
``Excluder`` (``nix_job.push.types``). Wrapping them tells the service, path by path, what the
session decided without changing it: a root missing from the closure or a path missing from
the path info was collected (vanished); an upstream-signed path or a matched path stays home;
a hash get-missing-paths does not return is cached; an upload that returns is done. Failures
are reported as they pass through: per path (the upload or the NAR failed), per batch (a
query failed), or about the server (unavailable, the token refused, the cache unusable).

The session's planner is one thread and plans one batch at a time (closure, path info,
exclude, get-missing-paths), so one ``Batch`` is enough to connect a hash to its path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Literal, Protocol

from nix_job.cache.answers import AtticUnavailableError
from nix_job.cache.attic import UploadResult
from nix_job.core.errors import AtticApiError, AtticAuthError
from nix_job.nix.path_info import PathInfo
from nix_job.nix.store import BuildClosure
from nix_job.push.exclude import Verdict
from nix_job.push.types import Excluder, PushClient, PushStore

Kind = Literal["uploaded", "deduplicated", "cached", "upstream", "excluded", "vanished"]


class Sink(Protocol):
    """Where outcomes go (``nix_job.service.ledger.Ledger``)."""

    def confirmed(self, items: Sequence[tuple[str, int]], kind: Kind) -> None:
        """``(path, nar_size)`` pairs that need nothing more (0 when the size is unknown)."""
        ...

    def path_failed(self, generation: int, path: str, reason: str) -> None: ...
    def batch_failed(self, generation: int, roots: Sequence[str], reason: str) -> None: ...


class Health(Protocol):
    """How the server answers (``nix_job.service.pipeline.ServerHealth``)."""

    def available(self) -> None: ...
    def unavailable(self, reason: str) -> None: ...
    def refused(self, generation: int, reason: str) -> None: ...
    def unusable(self, generation: int, reason: str) -> None: ...


def reason_of(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else f"{type(exc).__name__}: {exc}"


class Batch:
    """The batch being planned: its roots, and the hashes of paths waiting for
    get-missing-paths."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.roots: list[str] = []
        self.by_hash: dict[str, tuple[str, int]] = {}


class ObservedStore:
    """A ``PushStore`` that reports collected and upstream paths, and failed queries."""

    def __init__(
        self,
        store: PushStore,
        *,
        sink: Sink,
        generation: int,
        upstream_key_names: Iterable[str],
        batch: Batch,
    ) -> None:
        self._store = store
        self._sink = sink
        self._generation = generation
        self._upstream = frozenset(upstream_key_names)
        self._batch = batch

    def closure(self, paths: Iterable[str]) -> list[str]:
        roots = list(paths)
        with self._batch.lock:
            self._batch.roots = roots
            self._batch.by_hash.clear()
        try:
            closure = self._store.closure(roots)
        except Exception as exc:
            self._sink.batch_failed(self._generation, roots, reason_of(exc))
            raise
        found = set(closure)
        self._sink.confirmed([(r, 0) for r in roots if r not in found], "vanished")
        return closure

    def query_infos(self, paths: Iterable[str]) -> Mapping[str, PathInfo]:
        asked = list(paths)
        try:
            infos = self._store.query_infos(asked)
        except Exception as exc:
            self._sink.batch_failed(self._generation, self._roots(), reason_of(exc))
            raise
        upstream: list[tuple[str, int]] = []
        with self._batch.lock:
            for info in infos.values():
                if info.sig_key_names & self._upstream:
                    upstream.append((info.path, info.nar_size))
                else:
                    self._batch.by_hash[info.hash] = (info.path, info.nar_size)
        self._sink.confirmed([(p, 0) for p in asked if p not in infos], "vanished")
        self._sink.confirmed(upstream, "upstream")
        return infos

    def valid(self, paths: Iterable[str]) -> set[str]:
        asked = list(paths)
        valid = self._store.valid(asked)
        self._sink.confirmed([(p, 0) for p in asked if p not in valid], "vanished")
        return valid

    def dump(self, path: str) -> AbstractContextManager[Iterator[bytes]]:
        return self._store.dump(path)

    def registered_since(self, since: float) -> list[str] | None:
        return self._store.registered_since(since)

    def nar(self, info: PathInfo) -> AbstractContextManager[Iterator[bytes]]:
        return self._store.nar(info)

    def build_closure(self, paths: Iterable[str]) -> BuildClosure:
        return self._store.build_closure(paths)

    @property
    def store_dir(self) -> str:
        return self._store.store_dir

    @property
    def real_store_dir(self) -> str | None:
        return self._store.real_store_dir

    @property
    def in_process_nar(self) -> bool:
        return self._store.in_process_nar

    def _roots(self) -> list[str]:
        with self._batch.lock:
            return list(self._batch.roots)


class ObservedExcluder:
    """An ``Excluder`` that reports what stays home (undecided paths too: they are not
    uploaded either)."""

    def __init__(self, excluder: Excluder, *, sink: Sink, batch: Batch) -> None:
        self._excluder = excluder
        self._sink = sink
        self._batch = batch

    def match(self, paths: Sequence[str]) -> Verdict:
        verdict = self._excluder.match(paths)
        home = [*verdict.excluded, *verdict.undecided]
        with self._batch.lock:
            sizes = {p: s for p, s in self._batch.by_hash.values()}
            for path in home:
                self._batch.by_hash.pop(path.rsplit("/", 1)[-1][:32], None)
        self._sink.confirmed([(p, sizes.get(p, 0)) for p in home], "excluded")
        return verdict

    def close(self) -> None:
        self._excluder.close()


class ObservedClient:
    """A ``PushClient`` that reports cached and uploaded paths and how the server answers."""

    def __init__(
        self, client: PushClient, *, sink: Sink, health: Health, generation: int, batch: Batch
    ) -> None:
        self._client = client
        self._sink = sink
        self._health = health
        self._generation = generation
        self._batch = batch
        self._closed = threading.Event()

    def missing_paths(self, hashes: Iterable[str]) -> set[str]:
        asked = list(hashes)
        try:
            missing = self._client.missing_paths(asked)
        except Exception as exc:
            if not self._server_trouble(exc):
                with self._batch.lock:
                    roots = list(self._batch.roots)
                reason = reason_of(exc)
                self._report(lambda: self._sink.batch_failed(self._generation, roots, reason))
            raise
        self._report(self._health.available)
        cached: list[tuple[str, int]] = []
        with self._batch.lock:
            for h in asked:
                entry = self._batch.by_hash.pop(h, None)
                if entry is not None and h not in missing:
                    cached.append(entry)
        self._sink.confirmed(cached, "cached")
        return missing

    def upload(self, info: PathInfo, nar_chunks: Iterable[bytes]) -> UploadResult:
        try:
            result = self._client.upload(info, nar_chunks)
        except Exception as exc:
            if not self._server_trouble(exc):
                reason = reason_of(exc)
                self._report(lambda: self._sink.path_failed(self._generation, info.path, reason))
            raise
        self._report(self._health.available)
        kind: Kind = "deduplicated" if result.kind == "Deduplicated" else "uploaded"
        self._sink.confirmed([(info.path, info.nar_size)], kind)
        return result

    def close(self) -> None:
        self._closed.set()  # what fails from now on fails because of the close
        self._client.close()

    def _server_trouble(self, exc: Exception) -> bool:
        """Report a failure that is the server's, not the path's; True if it was."""
        reason = reason_of(exc)
        if isinstance(exc, AtticUnavailableError):
            self._report(lambda: self._health.unavailable(reason))
        elif isinstance(exc, AtticAuthError):
            self._report(lambda: self._health.refused(self._generation, reason))
        elif isinstance(exc, AtticApiError) and exc.status == 404:
            self._report(lambda: self._health.unusable(self._generation, reason))
        else:
            return False
        return True

    def _report(self, call: Callable[[], None]) -> None:
        if not self._closed.is_set():
            call()
