"""Planning a batch of queued store paths: which closure it covers (per ``push-closure``), what
each path is (upstream-signed, excluded, too large, a candidate) and what Attic lacks.

Talks to the store and to Attic (one get-missing-paths request per batch, retried); holds no
session state: the session passes what it already decided and applies the plan under its lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence

from tenacity import Retrying

from nix_job.nix.path_info import PathInfo
from nix_job.push.exclude import Verdict
from nix_job.push.plan import BatchPlan, PushPolicy, sort_paths
from nix_job.push.types import Excluder, PushClient, PushStore

log = logging.getLogger(__name__)


def _hash(path: str) -> str:
    return path.rsplit("/", 1)[-1][:32]


class Planner:
    def __init__(
        self,
        *,
        store: PushStore,
        client: PushClient,
        exclude: Excluder | None,
        upstream_key_names: frozenset[str],
        policy: PushPolicy,
        retrying: Callable[[], Retrying],
    ) -> None:
        self._upstream = upstream_key_names
        self._store = store
        self._client = client
        self._exclude = exclude
        self.policy = policy
        self._retrying = retrying

    def final_closure(self, roots: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
        """What the final push takes for ``roots`` under ``push-closure``; and, in build mode,
        the roots whose build inputs could not be found."""
        if not roots:
            return [], ()
        if self.policy.closure == "outputs":
            valid = self._store.valid(roots)
            return [r for r in roots if r in valid], ()
        if self.policy.closure == "build":
            built = self._store.build_closure(roots)
            return list(built.paths), built.without_derivation
        return self._store.closure(roots), ()

    def plan(
        self,
        *,
        watch_roots: Sequence[str],
        final_roots: Sequence[str],
        decided: Callable[[Collection[str]], set[str]],
    ) -> BatchPlan:
        """Plan one batch. ``decided(hashes)`` says which of ``hashes`` the session has already
        settled (uploaded, cached, filtered); those are not looked at again."""
        final, without_derivation = self.final_closure(final_roots)
        watched = self._store.closure(watch_roots) if watch_roots else []
        # Derivations are never pushed (Nix re-creates them by evaluation; caches serve
        # outputs), as the watcher never queues them; a .drv in push-paths pushes nothing.
        closure = [p for p in dict.fromkeys([*watched, *final]) if not p.endswith(".drv")]
        covered = set(closure) | {r for r in (*watch_roots, *final_roots) if r.endswith(".drv")}
        vanished = sum(1 for r in (*watch_roots, *final_roots) if r not in covered)
        settled = decided([_hash(p) for p in closure])
        fresh = [p for p in closure if _hash(p) not in settled]
        infos = self._store.query_infos(fresh)
        vanished += sum(1 for p in fresh if p not in infos)
        listed = [infos[p] for p in fresh if p in infos]
        verdict = self._excluded(listed)
        split = sort_paths(
            listed,
            upstream_key_names=self._upstream,
            excluded_paths=verdict.excluded | frozenset(verdict.undecided),
            max_size=self.policy.max_size,
        )
        return BatchPlan(
            closure=tuple(closure),
            vanished=vanished,
            sorted=split,
            undecided=len(verdict.undecided),
            missing=self.missing([i.hash for i in split.candidates]),
            without_derivation=without_derivation,
        )

    def missing(self, hashes: Sequence[str]) -> frozenset[str]:
        """The ``hashes`` Attic lacks: one get-missing-paths request, retried."""
        if not hashes:
            return frozenset()
        missing: set[str] = set()
        for attempt in self._retrying():
            with attempt:
                missing = self._client.missing_paths(hashes)
        return frozenset(missing)

    def _excluded(self, listed: list[PathInfo]) -> Verdict:
        # push-exclude runs in its own process with a time limit (nix_job.push.exclude): a slow
        # pattern must stall neither queue() nor drain(). Upstream-signed paths stay home
        # anyway, so they are not matched.
        if self._exclude is None:
            return Verdict(excluded=frozenset(), undecided=())
        return self._exclude.match([i.path for i in listed if not i.sig_key_names & self._upstream])
