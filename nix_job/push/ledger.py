"""What a push session has decided about each store path hash, and the counts behind its report.
Pure: the session holds its lock around every call.

A hash is settled once it is planned for upload, uploaded, found in the cache, or kept home
(upstream-signed, excluded, too large); settled hashes are not planned again unless the
reconcile finds them missing from the cache.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

from nix_job.nix.path_info import PathInfo
from nix_job.push.plan import BatchPlan
from nix_job.push.report import Completion, Origin, Tally, UploadOutcome

Known = Literal["planned", "uploaded", "cached", "upstream", "excluded", "oversize"]
#: What this cache is not expected to hold (the reconcile leaves them out).
NOT_EXPECTED = frozenset({"upstream", "excluded", "oversize"})


@dataclass(slots=True, kw_only=True)
class Task:
    info: PathInfo
    origin: Origin
    queued_at: float


def path_hash(path: str) -> str:
    return path.rsplit("/", 1)[-1][:32]


@dataclass(slots=True)
class Ledger:
    known: dict[str, Known] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)

    def settled(self, hashes: Collection[str]) -> set[str]:
        return {h for h in hashes if h in self.known}

    def record(self, plan: BatchPlan, batch: dict[str, tuple[Origin, float]]) -> list[Task]:
        """Count a plan's decisions; the uploads it needs, as tasks (their hashes planned)."""
        origin: Origin = "watch" if any(o == "watch" for o, _ in batch.values()) else "final"
        queued = min(t for _, t in batch.values())
        split, tally = plan.sorted, self.tally
        tally.vanished += plan.vanished
        tally.exclude_undecided += plan.undecided
        tally.without_derivation.update(plan.without_derivation)
        for info in split.upstream:
            if self.known.setdefault(info.hash, "upstream") == "upstream":
                tally.upstream = tally.upstream.plus(info.nar_size)
        for info in split.excluded:
            if self.known.setdefault(info.hash, "excluded") == "excluded":
                tally.excluded = tally.excluded.plus(info.nar_size)
        for info in split.oversize:
            if self.known.setdefault(info.hash, "oversize") == "oversize":
                tally.too_large(info.path, info.nar_size)
        tasks: list[Task] = []
        for info in split.candidates:
            if info.hash in self.known:
                continue
            if info.hash not in plan.missing:
                self.known[info.hash] = "cached"
                tally.already_cached = tally.already_cached.plus(info.nar_size)
                continue
            path_origin, queued_at = batch.get(info.path, (origin, queued))
            self.known[info.hash] = "planned"
            tasks.append(Task(info=info, origin=path_origin, queued_at=queued_at))
        return tasks

    def expected(self, paths: Collection[str]) -> list[str]:
        """Of ``paths``, those this cache should hold."""
        return [p for p in paths if self.known.get(path_hash(p)) not in NOT_EXPECTED]

    def reopen(self, paths: Collection[str]) -> None:
        """Forget that ``paths`` were uploaded or cached: the cache lacks them after all."""
        for path in paths:
            if self.known.get(path_hash(path)) in ("cached", "uploaded"):
                del self.known[path_hash(path)]

    def finished(self, task: Task, outcome: UploadOutcome, done_at: float) -> None:
        """Count one upload's outcome (a refusal is the session's to handle)."""
        info, tally = task.info, self.tally
        if outcome.fallback is not None:
            tally.fell_back(outcome.fallback)
        if outcome.status in ("uploaded", "deduplicated"):
            self.known[info.hash] = "uploaded"
            completion = Completion(
                path=info.path,
                origin=task.origin,
                queued_at=task.queued_at,
                completed_at=done_at,
                nar_size=info.nar_size,
            )
            tally.uploaded(completion, deduplicated=outcome.status == "deduplicated")
            return
        self.known.pop(info.hash, None)
        if outcome.status == "failed":
            tally.fail(info.path, info.nar_size, outcome.reason)
        elif outcome.status == "vanished":
            tally.vanished += 1
