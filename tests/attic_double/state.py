"""The double's data: caches, stored objects and NARs, the request log and switchable faults.

Thread-safe (one lock); the HTTP handler in ``server.py`` reads and writes only through here.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from dataclasses import dataclass, field
from typing import Literal

from tests.attic_double.protocol import Keypair

UploadFailure = Literal["status", "drop"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Faults to inject; replace the whole value (``double.faults = Faults(...)``) at any time.

    Upload faults pick uploads that fail, counting only uploads whose metadata and token pass:
    the first ``fail_first_uploads`` uploads after the faults were set, then each further one
    with probability ``upload_failure_rate`` (seeded RNG, so runs repeat). A failing upload
    either answers ``upload_failure_status`` after reading the body (500 as attic's
    InternalServerError JSON, anything else plain text) or, with ``upload_failure="drop"``,
    reads ``drop_after_bytes`` bytes and resets the connection.
    """

    fail_first_uploads: int = 0
    upload_failure_rate: float = 0.0
    upload_failure: UploadFailure = "status"
    upload_failure_status: int = 500
    drop_after_bytes: int = 0
    retry_after: str | None = None
    """``Retry-After`` value sent with a failing upload's 429 or 503 answer."""
    seed: int = 0
    response_delay_s: float = 0.0
    """Sleep before answering any request."""
    upload_delay_s: float = 0.0
    """Sleep before answering an upload (after reading its body)."""
    unauthorized: bool = False
    """401 Unauthorized (attic JSON) on every request."""
    missing_paths_body_limit: int | None = None
    """A proxy cap: get-missing-paths bodies over this many bytes get 413 plain text."""
    upload_body_limit: int | None = None
    """A proxy cap: upload bodies over this many bytes get 413 plain text."""
    garbage_status: int | None = None
    """Answer every /_api/ request with this status and an HTML (non-JSON) body."""
    hostile_message: tuple[int, str] | None = None
    """Answer every /_api/ request but cache-config with attic's error JSON with this status
    and this ``message`` (a server, or what answers for it, trying to inject log commands)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Server settings; replace ``double.config`` at any time (requests take a snapshot)."""

    api_endpoint: str | None = None
    """atticd's ``api-endpoint``; None builds ``http(s)://<Host>/`` per request."""
    require_proof_of_possession: bool = True
    """False: a deduplicated upload is answered before its body is read."""
    max_nar_info_size: int = 1024 * 1024
    json_body_limit: int = 2 * 1024 * 1024
    """axum's DefaultBodyLimit for JSON endpoints (413 plain text above it)."""
    strict_metadata: bool = True
    """Beyond atticd: reject upload metadata whose ``references`` are not base names or whose
    ``store_path`` does not end in ``store_path_hash`` (atticd stores both verbatim and then
    serves a narinfo Nix refuses). False accepts them as atticd does."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheInfo:
    """One cache as the server keeps it (everything ``CacheConfig`` shows, plus the key)."""

    name: str
    is_public: bool
    store_dir: str
    priority: int
    upstream_cache_key_names: tuple[str, ...]
    retention_period: object
    keypair: Keypair = field(repr=False)

    @property
    def public_key(self) -> str:
        return self.keypair.public_key

    @property
    def secret_key(self) -> str:
        return self.keypair.secret_key


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredObject:
    """An object row (cache, store path hash) plus the NAR bytes it points at."""

    cache: str
    store_path_hash: str
    store_path: str
    references: tuple[str, ...]
    deriver: str | None
    sigs: tuple[str, ...]
    ca: str | None
    nar_hash: str
    nar_size: int
    nar: bytes = field(repr=False)
    created_by: str | None
    kind: Literal["Uploaded", "Deduplicated"]
    metadata: dict[str, object]
    """The metadata JSON exactly as the client sent it."""
    stored_at: float
    """``time.time()`` when the object was stored."""
    stored_mono: float
    """``time.monotonic()`` when the object was stored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """One request as the server saw it. ``status`` is None when the connection was dropped."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body_size: int
    status: int | None
    response_body: bytes = field(repr=False)
    started_mono: float
    ended_mono: float
    started_at: float
    ended_at: float
    auth_scheme: str | None
    """``"bearer"``, ``"basic"`` or None, from the Authorization header."""
    subject: str | None
    """The verified token's ``sub``; None for anonymous callers (bad tokens included)."""
    metadata: dict[str, object] | None
    """upload-path only: the parsed metadata JSON."""
    metadata_via: Literal["header", "preamble"] | None
    fault: str | None
    """Which injected fault shaped the answer, if any."""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def is_write(self) -> bool:
        return self.path in ("/_api/v1/get-missing-paths", "/_api/v1/upload-path")


class DoubleState:
    """Caches, objects, NARs (deduplicated globally by NAR hash), requests and faults."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[str, CacheInfo] = {}
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._nars: dict[str, bytes] = {}
        self._requests: list[RecordedRequest] = []
        self._faults = Faults()
        self._uploads_since_faults = 0
        self._rng = random.Random(0)  # noqa: S311 - test fault injection, not cryptography

    # caches
    def add_cache(self, cache: CacheInfo) -> bool:
        with self._lock:
            if cache.name in self._caches:
                return False
            self._caches[cache.name] = cache
            return True

    def cache(self, name: str) -> CacheInfo | None:
        with self._lock:
            return self._caches.get(name)

    # objects and NARs
    def nar(self, nar_hash: str) -> bytes | None:
        with self._lock:
            return self._nars.get(nar_hash)

    def put_object(self, obj: StoredObject) -> None:
        with self._lock:
            self._nars.setdefault(obj.nar_hash, obj.nar)
            self._objects[(obj.cache, obj.store_path_hash)] = obj

    def get_object(self, cache: str, store_path_hash: str) -> StoredObject | None:
        with self._lock:
            return self._objects.get((cache, store_path_hash))

    def objects(self, cache: str | None = None) -> list[StoredObject]:
        with self._lock:
            found = [o for o in self._objects.values() if cache is None or o.cache == cache]
        return sorted(found, key=lambda o: o.stored_mono)

    # requests
    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # faults
    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
            self._uploads_since_faults = 0
            self._rng = random.Random(faults.seed)  # noqa: S311 - deterministic fault injection

    def update_faults(self, **changes: object) -> Faults:
        with self._lock:
            current = self._faults
        new = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        self.set_faults(new)
        return new

    def upload_fails(self) -> bool:
        """Count one upload and decide, under the lock, whether the faults make it fail."""
        with self._lock:
            self._uploads_since_faults += 1
            faults = self._faults
            if self._uploads_since_faults <= faults.fail_first_uploads:
                return True
            return (
                faults.upload_failure_rate > 0 and self._rng.random() < faults.upload_failure_rate
            )
