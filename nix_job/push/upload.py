"""Uploading one store path: stream its NAR to Attic with retries, and say how it ended.

Never raises for a failed upload: the outcome says uploaded, failed (with the reason), vanished
(garbage-collected meanwhile), refused (the token: no further uploads make sense) or abandoned
(the drain deadline passed). The session does the counting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tenacity import Retrying

from nix_job.core.errors import AtticAuthError, StoreError
from nix_job.nix.path_info import PathInfo
from nix_job.push.retry import Abandoned
from nix_job.push.types import PushClient, PushStore

log = logging.getLogger(__name__)

Status = Literal["uploaded", "deduplicated", "failed", "vanished", "refused", "abandoned"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadOutcome:
    status: Status
    reason: str | None = None  # failed: why; refused: Attic's answer
    auth_error: AtticAuthError | None = None  # refused


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

    def upload(self, info: PathInfo) -> UploadOutcome:
        try:
            deduplicated = False
            for attempt in self._retrying():
                with attempt:
                    deduplicated = self._attempt(info)
        except Abandoned:
            return UploadOutcome(status="abandoned")
        except AtticAuthError as exc:
            return UploadOutcome(status="refused", reason=exc.message, auth_error=exc)
        except StoreError as exc:
            return self._store_failure(info, exc)
        except Exception as exc:
            if self._abandoned.is_set():
                return UploadOutcome(status="abandoned")
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.warning("upload of %s failed: %s", info.path, reason)
            return UploadOutcome(status="failed", reason=reason)
        log.debug("uploaded %s (%d bytes)", info.path, info.nar_size)
        return UploadOutcome(status="deduplicated" if deduplicated else "uploaded")

    def _attempt(self, info: PathInfo) -> bool:
        """One try; whether the server already had the NAR (Deduplicated)."""
        if self._abandoned.is_set():
            raise Abandoned
        with self._store.dump(info.path) as chunks:
            return self._client.upload(info, chunks).kind == "Deduplicated"

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
