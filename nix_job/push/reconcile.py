"""The reconcile after the final push: are the command's outputs, and what ``push-closure`` takes
with them, really in the cache?

A pusher that only uploads what it saw being built misses outputs that were valid before the
run (a warm self-hosted store) and cannot tell a failed upload from a server that lost a path.
So, once the final push is idle: one get-missing-paths request for everything this cache should
hold (upstream-signed, excluded and oversized paths are not expected), a push of what is
missing, and one more request for those. Bounded by the drain deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from nix_job.core.errors import NixJobError
from nix_job.push.planner import Planner
from nix_job.push.report import FAILURE_SAMPLE, Verification
from nix_job.push.retry import Abandoned

log = logging.getLogger(__name__)


def _hash(path: str) -> str:
    return path.rsplit("/", 1)[-1][:32]


def reconcile(
    roots: list[str],
    *,
    planner: Planner,
    expected: Callable[[Collection[str]], list[str]],
    repush: Callable[[list[str]], None],
    wait_idle: Callable[[float], bool],
    timeout_s: float,
    clock: Callable[[], float],
) -> Verification:
    """Check ``roots`` (the command's outputs and ``push-paths``) and their closures.

    ``expected(paths)`` keeps the paths this cache should hold; ``repush(paths)`` queues paths
    for upload again; ``wait_idle(seconds)`` waits for the uploads to finish.
    """
    deadline = clock() + timeout_s
    try:
        closure, _ = planner.final_closure(roots)
        wanted = expected([p for p in closure if not p.endswith(".drv")])
        in_closure = set(wanted)
        outputs = [r for r in dict.fromkeys(roots) if r in in_closure]
        if not wanted:
            return Verification(checked=True)
        missing = planner.missing([_hash(p) for p in wanted])
        repushed = 0
        if missing:
            again = [p for p in wanted if _hash(p) in missing]
            log.info(
                "%d path(s) of the outputs' closures are not in the cache; pushing them",
                len(again),
            )
            repush(again)
            repushed = len(again)
            wait_idle(max(0.0, deadline - clock()))
            missing = planner.missing([_hash(p) for p in again])
    except (NixJobError, Abandoned) as exc:
        reason = getattr(exc, "message", None) or "the drain deadline passed"
        log.warning("could not verify the outputs in the cache: %s", reason)
        return Verification(checked=False, reason=reason)
    still = [p for p in outputs if _hash(p) in missing]
    still += [p for p in wanted if _hash(p) in missing and p not in still]
    return Verification(
        checked=True,
        outputs=len(outputs),
        outputs_present=sum(1 for r in outputs if _hash(r) not in missing),
        paths=len(wanted),
        paths_present=sum(1 for p in wanted if _hash(p) not in missing),
        repushed=repushed,
        missing_sample=tuple(still[:FAILURE_SAMPLE]),
    )
