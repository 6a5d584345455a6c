"""A fake Attic push API: a set of hashes, scripted failures, optional blocking uploads."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from nix_job.cache.attic import UploadResult
from nix_job.nix.path_info import PathInfo


@dataclass
class FakeAttic:
    """A cache of hashes; scripted failures per path; optional blocking uploads."""

    have: set[str] = field(default_factory=set)
    uploads: list[str] = field(default_factory=list)
    upload_bytes: dict[str, bytes] = field(default_factory=dict)
    fail_upload: dict[str, list[Exception]] = field(default_factory=dict)
    fail_missing: list[Exception] = field(default_factory=list)
    missing_calls: list[list[str]] = field(default_factory=list)
    block: threading.Event | None = None
    started: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    concurrent: int = 0
    max_concurrent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def missing_paths(self, hashes: Iterable[str]) -> set[str]:
        hashes = list(hashes)
        self.missing_calls.append(hashes)
        if self.fail_missing:
            raise self.fail_missing.pop(0)
        return {h for h in hashes if h not in self.have}

    def upload(self, info: PathInfo, nar_chunks: Iterable[bytes]) -> UploadResult:
        with self.lock:
            self.uploads.append(info.path)
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.started.set()
            if self.block is not None:
                self.block.wait()
            script = self.fail_upload.get(info.path)
            if script:
                raise script.pop(0)
            body = b"".join(nar_chunks)
            assert len(body) == info.nar_size
            assert "sha256:" + hashlib.sha256(body).hexdigest() == info.nar_hash
            self.upload_bytes[info.path] = body
            self.have.add(info.hash)
            return UploadResult(kind="Uploaded")
        finally:
            with self.lock:
                self.concurrent -= 1

    def close(self) -> None:
        self.closed = True
