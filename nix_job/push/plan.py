"""Which paths of a batch go to Attic: upstream-signed paths and excluded paths stay home. Pure."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from nix_job.nix.path_info import PathInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class Sorted:
    candidates: tuple[PathInfo, ...]  # ask Attic whether it has them
    upstream: tuple[PathInfo, ...]  # signed by an upstream cache's key: substitutable anyway
    excluded: tuple[PathInfo, ...]  # push-exclude matched


def sort_paths(
    infos: Iterable[PathInfo],
    *,
    upstream_key_names: Collection[str],
    excluded_paths: Collection[str],
) -> Sorted:
    """Split path infos into candidates, upstream and excluded (upstream wins: a path a public
    cache already serves needs no exclusion to stay home)."""
    candidates: list[PathInfo] = []
    upstream: list[PathInfo] = []
    excluded: list[PathInfo] = []
    for info in infos:
        if info.sig_key_names & frozenset(upstream_key_names):
            upstream.append(info)
        elif info.path in excluded_paths:
            excluded.append(info)
        else:
            candidates.append(info)
    return Sorted(candidates=tuple(candidates), upstream=tuple(upstream), excluded=tuple(excluded))
