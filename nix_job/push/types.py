"""The push layer's seams: what it needs from the Nix store and from Attic."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from nix_job.cache.attic import UploadResult
from nix_job.nix.path_info import PathInfo
from nix_job.push.exclude import Verdict


class PushStore(Protocol):
    """What the session needs from the Nix store (``nix_job.nix.store.NixStore``)."""

    def closure(self, paths: Iterable[str]) -> list[str]: ...
    def query_infos(self, paths: Iterable[str]) -> Mapping[str, PathInfo]: ...
    def valid(self, paths: Iterable[str]) -> set[str]: ...
    def dump(self, path: str) -> AbstractContextManager[Iterator[bytes]]: ...


class PushClient(Protocol):
    """What the session needs from Attic (``nix_job.cache.attic.AtticClient``)."""

    def missing_paths(self, hashes: Iterable[str]) -> set[str]: ...
    def upload(self, info: PathInfo, nar_chunks: Iterable[bytes]) -> UploadResult: ...
    def close(self) -> None: ...


class Excluder(Protocol):
    """``push-exclude`` (``nix_job.push.exclude.ExcludeMatcher``)."""

    def match(self, paths: Sequence[str]) -> Verdict: ...
    def close(self) -> None: ...
