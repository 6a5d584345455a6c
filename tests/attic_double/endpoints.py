"""The endpoint handlers of the Attic double: cache config, missing paths, upload, Nix read side.

One ``Endpoints`` per request; it raises ``HttpError`` for every rejection (attic JSON or plain
text, as zhaofengli/attic's server does) and returns a ``Response`` otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Literal

from nix_job.core.nixhash import base_name
from tests.attic_double.body import RequestBody
from tests.attic_double.protocol import (
    Grant,
    HttpError,
    attic_error,
    parse_attic_hash,
    plain_error,
    render_narinfo,
    valid_cache_name,
    valid_reference,
    valid_store_path_hash,
)
from tests.attic_double.state import CacheInfo, Faults, ServerConfig, StoredObject

if TYPE_CHECKING:
    from tests.attic_double.server import AtticDouble

JSON = "application/json"


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Dropped(Exception):
    """The handler reset the connection on purpose (fault injection)."""


@dataclass(slots=True)
class Exchange:
    """Per-request facts collected while handling, for the request log."""

    grant: Grant | None = None
    auth_scheme: str | None = None
    metadata: dict[str, object] | None = None
    metadata_via: Literal["header", "preamble"] | None = None
    fault: str | None = None
    answer_before_body: bool = False


class Endpoints:
    """The endpoint handlers of one request."""

    def __init__(
        self,
        *,
        handler: BaseHTTPRequestHandler,
        double: AtticDouble,
        config: ServerConfig,
        faults: Faults,
        body: RequestBody,
        ex: Exchange,
    ) -> None:
        self.h = handler
        self.double = double
        self.state = double.state
        self.config = config
        self.faults = faults
        self.body = body
        self.ex = ex

    # --- auth -----------------------------------------------------------------------------

    def _perms(self, cache: str, *, public: bool) -> frozenset[str]:
        perms = self.ex.grant.permissions_for(cache) if self.ex.grant else frozenset()
        return perms | {"r"} if public else perms

    def _auth_cache(self, name: str, letter: str) -> CacheInfo:
        """``auth_cache``: look the cache up, then require ``letter``, with the discovery rule."""
        cache = self.state.cache(name)
        perms = self._perms(name, public=cache is not None and cache.is_public)
        if cache is None:
            raise attic_error("NoSuchCache", discover=bool(perms))
        if letter not in perms:
            raise attic_error("AccessError", discover=bool(perms))
        return cache

    @staticmethod
    def _path_cache(name: str) -> str:
        if not valid_cache_name(name):
            raise plain_error(400, f"Invalid URL: Cannot parse `{name}` as a cache name")
        return name

    # --- JSON extraction (axum's Json: plain-text rejections) ------------------------------

    def _json_body(self) -> object:
        ctype = (self.h.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if not (ctype == JSON or (ctype.startswith("application/") and ctype.endswith("+json"))):
            raise plain_error(415, "Expected request with `Content-Type: application/json`")
        if self.body.exceeds(self.config.json_body_limit):
            raise plain_error(413, "Failed to buffer the request body: length limit exceeded")
        raw = self.body.read(self.config.json_body_limit)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise plain_error(400, f"Failed to parse the request body as JSON: {exc}") from None

    @staticmethod
    def _reject_shape(detail: str) -> HttpError:
        return plain_error(
            422, f"Failed to deserialize the JSON body into the target type: {detail}"
        )

    # --- endpoints ------------------------------------------------------------------------

    def landing(self) -> Response:
        html = b"<!DOCTYPE html><html><body>attic-double: an Attic test server</body></html>"
        return Response(200, html, "text/html; charset=utf-8")

    def cache_config(self, name: str) -> Response:
        name = self._path_cache(name)
        if self.h.command == "POST":
            return self._create_cache(name)
        cache = self._auth_cache(name, "r")
        api_endpoint = self.config.api_endpoint or self._endpoint_from_host()
        config = {
            "substituter_endpoint": api_endpoint + cache.name,
            "api_endpoint": api_endpoint,
            "public_key": cache.public_key,
            "is_public": cache.is_public,
            "store_dir": cache.store_dir,
            "priority": cache.priority,
            "upstream_cache_key_names": list(cache.upstream_cache_key_names),
            "retention_period": cache.retention_period,
        }
        return Response(200, json.dumps(config, separators=(",", ":")).encode(), JSON)

    def _endpoint_from_host(self) -> str:
        https = self.h.headers.get("X-Forwarded-Proto") == "https"
        return f"{'https' if https else 'http'}://{self.h.headers['Host']}/"

    def _create_cache(self, name: str) -> Response:
        payload = self._json_body()
        required = ("keypair", "is_public", "store_dir", "priority", "upstream_cache_key_names")
        if not isinstance(payload, dict):
            raise self._reject_shape("expected struct CreateCacheRequest")
        for key in required:
            if key not in payload:
                raise self._reject_shape(f"missing field `{key}`")
        keypair_spec = payload["keypair"]
        names = payload["upstream_cache_key_names"]
        if (
            not isinstance(payload["is_public"], bool)
            or not isinstance(payload["store_dir"], str)
            or type(payload["priority"]) is not int
            or not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or not (keypair_spec == "Generate" or isinstance(keypair_spec, dict))
        ):
            raise self._reject_shape("invalid type in CreateCacheRequest")
        perms = self._perms(name, public=False)
        if "cc" not in perms:
            raise attic_error("AccessError", discover=bool(perms))
        created = self.double.add_cache(
            name,
            public=payload["is_public"],
            store_dir=payload["store_dir"],
            priority=payload["priority"],
            upstream_key_names=tuple(names),
        )
        if created is None:
            raise attic_error("CacheAlreadyExists")
        return Response(200)

    def get_missing_paths(self) -> Response:
        limit = self.faults.missing_paths_body_limit
        if limit is not None and self.body.exceeds(limit):
            self.ex.fault = "missing-paths-body-limit"
            raise plain_error(413, "413 Request Entity Too Large")
        payload = self._json_body()
        if not isinstance(payload, dict):
            raise self._reject_shape("expected struct GetMissingPathsRequest")
        for key in ("cache", "store_path_hashes"):
            if key not in payload:
                raise self._reject_shape(f"missing field `{key}`")
        cache_name, hashes = payload["cache"], payload["store_path_hashes"]
        if not valid_cache_name(cache_name):
            raise self._reject_shape(f"cache: invalid cache name {cache_name!r}")
        if not isinstance(hashes, list) or not all(valid_store_path_hash(h) for h in hashes):
            raise self._reject_shape("store_path_hashes: invalid store path hash")
        assert isinstance(cache_name, str)
        self._auth_cache(cache_name, "w")
        present = {o.store_path_hash for o in self.state.objects(cache_name)}
        missing = list(set(hashes) - present)  # HashSet order in atticd: arbitrary
        return Response(
            200, json.dumps({"missing_paths": missing}, separators=(",", ":")).encode(), JSON
        )

    def upload_path(self) -> Response:
        limit = self.faults.upload_body_limit
        if limit is not None and self.body.exceeds(limit):
            self.ex.fault = "upload-body-limit"
            raise plain_error(413, "413 Request Entity Too Large")
        info = self._upload_metadata()
        cache = self._auth_cache(info["cache"], "w")
        if self.state.upload_fails():
            return self._failed_upload()
        nar_hash = parse_attic_hash(info["nar_hash"])
        nar_size: int = info["nar_size"]
        existing = self.state.nar(nar_hash)
        if existing is not None:
            if self.config.require_proof_of_possession:
                data = self._read_all()
                if (
                    "sha256:" + hashlib.sha256(data).hexdigest() != nar_hash
                    or len(data) != nar_size
                    or len(existing) != nar_size
                ):
                    raise attic_error("RequestError", detail="Bad NAR Hash or Size")
            else:
                self.ex.answer_before_body = True
            self._store(cache, info, nar_hash, existing, "Deduplicated")
            result: dict[str, object] = {"kind": "Deduplicated", "frac_deduplicated": None}
        else:
            data = self.body.read(nar_size)  # take(nar_size)
            if "sha256:" + hashlib.sha256(data).hexdigest() != nar_hash or len(data) != nar_size:
                raise attic_error("RequestError", detail="Bad NAR Hash or Size")
            self._store(cache, info, nar_hash, data, "Uploaded")
            result = {"kind": "Uploaded", "file_size": len(data), "frac_deduplicated": None}
        if self.faults.upload_delay_s:
            time.sleep(self.faults.upload_delay_s)
        return Response(200, json.dumps(result, separators=(",", ":")).encode(), JSON)

    def _read_all(self) -> bytes:
        chunks = []
        while chunk := self.body.read(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def _failed_upload(self) -> Response:
        faults = self.faults
        if faults.upload_failure == "drop":
            self.ex.fault = "upload-drop"
            self.body.read(faults.drop_after_bytes)
            raise Dropped
        self.ex.fault = "upload-status"
        self.body.drain()
        if faults.upload_delay_s:
            time.sleep(faults.upload_delay_s)
        if faults.upload_failure_status == 500:
            raise attic_error("InternalServerError")
        raise plain_error(faults.upload_failure_status, "injected upload failure")

    def _upload_metadata(self) -> dict[str, Any]:
        headers = self.h.headers
        preamble = headers.get("X-Attic-Nar-Info-Preamble-Size")
        if preamble is not None:
            self.ex.metadata_via = "preamble"
            try:
                size = int(preamble)
            except ValueError:
                raise attic_error("RequestError", detail="invalid digit found in string") from None
            if size > self.config.max_nar_info_size:
                raise attic_error("RequestError", detail="Upload info is too large")
            raw = self.body.read(size)
            if len(raw) != size:
                raise attic_error("RequestError", detail="Upload info doesn't match specified size")
        elif (header := headers.get("X-Attic-Nar-Info")) is not None:
            self.ex.metadata_via = "header"
            raw = header.encode("latin-1")
        else:
            raise attic_error("RequestError", detail="X-Attic-Nar-Info must be set")
        try:
            info = json.loads(raw)
        except ValueError as exc:
            raise attic_error("RequestError", detail=str(exc)) from None
        if isinstance(info, dict):
            self.ex.metadata = info
        problem = self._metadata_problem(info)
        if problem:
            raise attic_error("RequestError", detail=problem)
        assert isinstance(info, dict)
        return info

    def _metadata_problem(self, info: object) -> str | None:
        if not isinstance(info, dict):
            return "invalid type: expected struct UploadPathNarInfo"
        for key in ("cache", "store_path_hash", "store_path", "references", "sigs"):
            if key not in info:
                return f"missing field `{key}`"
        for key in ("nar_hash", "nar_size"):
            if key not in info:
                return f"missing field `{key}`"
        if not valid_cache_name(info["cache"]):
            return f"invalid cache name {info['cache']!r}"
        if not valid_store_path_hash(info["store_path_hash"]):
            return f"invalid store path hash {info['store_path_hash']!r}"
        if not isinstance(info["store_path"], str):
            return "store_path: invalid type, expected a string"
        for key in ("references", "sigs"):
            value = info[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return f"{key}: invalid type, expected a sequence of strings"
        for key in ("system", "deriver", "ca"):
            if info.get(key) is not None and not isinstance(info[key], str):
                return f"{key}: invalid type, expected a string or null"
        try:
            parse_attic_hash(info["nar_hash"])
        except ValueError as exc:
            return str(exc)
        size = info["nar_size"]
        if type(size) is not int or size < 0:
            return f"nar_size: invalid value {size!r}, expected usize"
        if self.config.strict_metadata:
            bad = [r for r in info["references"] if not valid_reference(r)]
            if bad:
                return (
                    f"references must be store path base names (<hash>-<name>), got {bad!r} "
                    "[attic-double strict_metadata: atticd would store these verbatim and "
                    "serve a narinfo whose signature Nix rejects]"
                )
            try:
                name = base_name(info["store_path"])
            except ValueError:
                name = ""
            if not name.startswith(info["store_path_hash"]) or not info["store_path"].endswith(
                name
            ):
                return (
                    f"store_path {info['store_path']!r} does not match store_path_hash "
                    f"{info['store_path_hash']!r} [attic-double strict_metadata]"
                )
        return None

    def _store(
        self,
        cache: CacheInfo,
        info: Mapping[str, Any],
        nar_hash: str,
        nar: bytes,
        kind: Literal["Uploaded", "Deduplicated"],
    ) -> None:
        self.state.put_object(
            StoredObject(
                cache=cache.name,
                store_path_hash=info["store_path_hash"],
                store_path=info["store_path"],
                references=tuple(info["references"]),
                deriver=info.get("deriver"),
                sigs=tuple(info["sigs"]),
                ca=info.get("ca"),
                nar_hash=nar_hash,
                nar_size=info["nar_size"],
                nar=nar,
                created_by=self.ex.grant.sub if self.ex.grant else None,
                kind=kind,
                metadata=dict(info),
                stored_at=time.time(),
                stored_mono=time.monotonic(),
            )
        )

    # --- Nix read side --------------------------------------------------------------------

    def nix_cache_info(self, name: str) -> Response:
        cache = self._auth_cache(self._path_cache(name), "r")
        text = f"WantMassQuery: 1\nStoreDir: {cache.store_dir}\nPriority: {cache.priority}\n"
        return Response(200, text.encode(), "text/x-nix-cache-info", visibility(cache))

    def _lookup_object(
        self, name: str, segment: str, suffix: str
    ) -> tuple[CacheInfo, StoredObject]:
        """Object lookup *before* auth (atticd's quirk): unknown → 404 even when anonymous."""
        name = self._path_cache(name)
        stem, dot, ext = segment.partition(".")
        if not dot or ext != suffix:
            raise attic_error("NotFound")
        if not valid_store_path_hash(stem):
            raise attic_error("InvalidStorePathHash")
        cache = self.state.cache(name)
        obj = self.state.get_object(name, stem)
        if cache is None or obj is None:
            raise attic_error("NoSuchObject")
        perms = self._perms(name, public=cache.is_public)
        if "r" not in perms:
            raise attic_error("AccessError", discover=bool(perms))
        return cache, obj

    def narinfo(self, name: str, segment: str) -> Response:
        cache, obj = self._lookup_object(name, segment, "narinfo")
        text = render_narinfo(
            store_path=obj.store_path,
            store_path_hash=obj.store_path_hash,
            nar_hash=obj.nar_hash,
            nar_size=obj.nar_size,
            references=obj.references,
            deriver=obj.deriver,
            ca=obj.ca,
            keypair=cache.keypair,
        )
        return Response(200, text.encode(), "text/x-nix-narinfo", visibility(cache))

    def nar(self, name: str, segment: str) -> Response:
        cache, obj = self._lookup_object(name, segment, "nar")
        return Response(200, obj.nar, "application/x-nix-nar", visibility(cache))


def visibility(cache: CacheInfo) -> dict[str, str]:
    return {"X-Attic-Cache-Visibility": "public"} if cache.is_public else {}
