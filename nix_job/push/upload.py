"""Uploading one store path: stream its NAR to Attic with retries, and say how it ended.

The NAR is written in-process from the store path's files (no process per path) and checked
against Nix's registered hash as it streams; when that stream fails or does not match, the
upload is aborted before its last bytes and the path is sent again from ``nix-store --dump``
(checked the same way), with a warning that says why. A NAR whose hash differs from the
registered one never completes an upload.

Never raises for a failed upload: the outcome says uploaded, failed (with the reason), vanished
(garbage-collected meanwhile), refused (the token: no further uploads make sense) or abandoned
(the drain deadline passed). The session does the counting.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
from collections.abc import Callable, Iterable

from tenacity import Retrying

from nix_job.core.errors import AtticAuthError, StoreError
from nix_job.nix.allocator import keep_chunk_buffers
from nix_job.nix.nar import NarError, NarReadError, verified
from nix_job.nix.path_info import PathInfo
from nix_job.push.report import UploadOutcome
from nix_job.push.retry import Abandoned
from nix_job.push.types import PushClient, PushStore

log = logging.getLogger(__name__)


class Uploader:
    def __init__(
        self,
        *,
        store: PushStore,
        client: PushClient,
        retrying: Callable[[], Retrying],
        abandoned: threading.Event,
    ) -> None:
        self._store = store
        self._client = client
        self._retrying = retrying
        self._abandoned = abandoned
        self._in_process = store.in_process_nar
        self._lock = threading.Lock()
        # Every upload streams fresh NAR chunks: keep their memory for the next one.
        keep_chunk_buffers()

    def upload(self, info: PathInfo) -> UploadOutcome:
        fallbacks: list[str] = []
        try:
            deduplicated = False
            for attempt in self._retrying():
                with attempt:
                    deduplicated = self._attempt(info, fallbacks)
        except Abandoned:
            return UploadOutcome(status="abandoned")
        except AtticAuthError as exc:
            return UploadOutcome(status="refused", reason=exc.message, auth_error=exc)
        except StoreError as exc:
            return dataclasses.replace(
                self._store_failure(info, exc), fallback=fallbacks[-1] if fallbacks else None
            )
        except Exception as exc:
            if self._abandoned.is_set():
                return UploadOutcome(status="abandoned")
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.warning("upload of %s failed: %s", info.path, reason)
            return UploadOutcome(status="failed", reason=reason)
        log.debug("uploaded %s (%d bytes)", info.path, info.nar_size)
        return UploadOutcome(
            status="deduplicated" if deduplicated else "uploaded",
            fallback=fallbacks[-1] if fallbacks else None,
        )

    def _attempt(self, info: PathInfo, fallbacks: list[str]) -> bool:
        """One try; whether the server already had the NAR (Deduplicated)."""
        if self._abandoned.is_set():
            raise Abandoned
        if self._in_process and not fallbacks:
            try:
                with self._store.nar(info) as chunks:
                    return self._send(info, chunks)
            except NarError as exc:
                fallbacks.append(self._fall_back(info, exc))
        with self._store.dump(info.path) as raw:
            chunks = verified(raw, nar_hash=info.nar_hash, nar_size=info.nar_size, path=info.path)
            return self._send(info, chunks)

    def _send(self, info: PathInfo, chunks: Iterable[bytes]) -> bool:
        return self._client.upload(info, chunks).kind == "Deduplicated"

    def _fall_back(self, info: PathInfo, exc: NarError) -> str:
        """Decide what an in-process NAR failure means; the reason the dump is used instead.

        A path that is gone is not retried through Nix (StoreError: the caller reports it as
        vanished). A store path whose own directory entry is missing while Nix holds it valid
        means the store's files are not where the store URI said: stop reading files for the
        rest of the session, with one warning.
        """
        if isinstance(exc, NarReadError) and exc.errno == errno.ENOENT:
            try:
                still_valid = info.path in self._store.valid([info.path])
            except StoreError:
                still_valid = True
            if not still_valid:
                raise exc
            if exc.path.rstrip("/").endswith(info.path[len(self._store.store_dir) :]):
                with self._lock:
                    if self._in_process:
                        self._in_process = False
                        log.warning(
                            "nix-job: cannot read the store's files here (%s): Nix holds it "
                            "valid but it is not in %s. Every NAR is read through "
                            "`nix-store --dump` for the rest of this run (slower, same bytes).",
                            info.path,
                            self._store.real_store_dir,
                        )
                return "the store's files are not readable here"
        log.warning(
            "the in-process NAR of %s was not sent: %s Sending it from `nix-store --dump` "
            "instead (checked against the same hash).",
            info.path,
            exc.message,
        )
        return exc.message

    def _store_failure(self, info: PathInfo, exc: StoreError) -> UploadOutcome:
        """Reading the path failed: a collected path is skipped quietly, else it failed."""
        try:
            still_valid = info.path in self._store.valid([info.path])
        except StoreError:
            still_valid = True
        if not still_valid:
            log.info("%s was garbage-collected before its upload; skipped", info.path)
            return UploadOutcome(status="vanished")
        log.warning("reading %s from the store failed: %s", info.path, exc.message)
        return UploadOutcome(status="failed", reason=exc.message)
