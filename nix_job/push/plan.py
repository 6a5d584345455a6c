"""Which paths of a batch go to Attic (upstream-signed, excluded and oversized paths stay home),
and the plain values a batch's plan is made of. Pure."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from nix_job.core.inputs import ClosureMode
from nix_job.nix.path_info import PathInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class Sorted:
    candidates: tuple[PathInfo, ...]  # ask Attic whether it has them
    upstream: tuple[PathInfo, ...]  # signed by an upstream cache's key: substitutable anyway
    excluded: tuple[PathInfo, ...]  # push-exclude matched
    oversize: tuple[PathInfo, ...] = ()  # NAR larger than push-max-size


def sort_paths(
    infos: Iterable[PathInfo],
    *,
    upstream_key_names: Collection[str],
    excluded_paths: Collection[str],
    max_size: int | None = None,
) -> Sorted:
    """Split path infos into candidates, upstream, excluded and oversize, in that precedence:
    a path a public cache already serves needs no other reason to stay home, and an excluded
    path is reported as excluded whatever its size."""
    upstream_keys = frozenset(upstream_key_names)
    candidates: list[PathInfo] = []
    upstream: list[PathInfo] = []
    excluded: list[PathInfo] = []
    oversize: list[PathInfo] = []
    for info in infos:
        if info.sig_key_names & upstream_keys:
            upstream.append(info)
        elif info.path in excluded_paths:
            excluded.append(info)
        elif max_size is not None and info.nar_size > max_size:
            oversize.append(info)
        else:
            candidates.append(info)
    return Sorted(
        candidates=tuple(candidates),
        upstream=tuple(upstream),
        excluded=tuple(excluded),
        oversize=tuple(oversize),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PushPolicy:
    """The user's choices of what is pushed (``push-max-size``, ``push-closure``; see
    docs/push-policy.md)."""

    max_size: int | None = None  # push-max-size in bytes; None: no limit
    closure: ClosureMode = "runtime"  # push-closure, for the final push's roots


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPlan:
    closure: tuple[str, ...]  # every path the batch covers, derivations left out
    vanished: int  # roots no longer valid, and closure paths gone before their info was read
    sorted: Sorted  # the paths not decided before, by what happens to them
    undecided: int  # of the excluded: push-exclude ran out of time on them
    missing: frozenset[str]  # hashes of candidates that Attic lacks
    without_derivation: tuple[str, ...]  # build mode: final roots whose inputs are unknown
