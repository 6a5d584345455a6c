"""Attic's HTTP push API over one shared ``httpx.Client``: cache config, missing paths, upload.

Owns the wire format (zhaofengli/attic ``attic/src/api/v1/`` and ``server/src/api/v1/``); what
an error answer means is ``nix_job.cache.answers``'. The token appears only in the Authorization
header, taken afresh from its ``TokenSource`` on every request (the token exchange's token is
renewed while uploads go on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from nix_job.cache.answers import AtticUnavailableError, error_for
from nix_job.cache.token_source import StaticToken, TokenSource
from nix_job.core.errors import AtticApiError
from nix_job.core.secret import Secret
from nix_job.core.urls import url_problem, with_slash
from nix_job.nix.path_info import PathInfo

log = logging.getLogger(__name__)

#: attic's client switches to the preamble form at this JSON size (NAR_INFO_PREAMBLE_THRESHOLD).
PREAMBLE_THRESHOLD = 4096
#: Hashes per get-missing-paths request: about 350 KB of JSON, far below axum's 2 MB limit.
MISSING_PATHS_CHUNK = 10_000
USER_AGENT = "nix-job (Attic/attic-client compatible)"
_BODY_SAMPLE = 300

UploadKind = Literal["Uploaded", "Deduplicated"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """``GET /_api/v1/cache-config/{cache}``; every field is optional on the wire."""

    substituter_endpoint: str | None = None
    api_endpoint: str | None = None
    public_key: str | None = None
    is_public: bool | None = None
    store_dir: str | None = None
    upstream_cache_key_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadResult:
    """attic's ``UploadPathResult``; ``kind`` is Uploaded for anything unrecognised, as attic."""

    kind: UploadKind
    file_size: int | None = None
    frac_deduplicated: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Short connect, long read/write: a big NAR on a slow link must not look like a hang."""

    connect_s: float = 10.0
    read_s: float = 300.0
    write_s: float = 300.0
    pool_s: float = 60.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect_s, read=self.read_s, write=self.write_s, pool=self.pool_s
        )


def normalise_endpoint(endpoint: str) -> str:
    """``https://host[/prefix]`` → ``https://host[/prefix]/``; ValueError if not an http(s) URL.

    SECURITY: the message never echoes the URL, which may hold a credential.
    """
    why = url_problem(endpoint.strip())
    if why is not None:
        raise ValueError(
            f"the Attic server URL is not an http(s) URL that nix-job can use: it {why}; give "
            "the server's root URL, e.g. "
            "https://cache.example.com/ (not the substituter URL with the cache name)."
        )
    return with_slash(endpoint)


def nar_info_json(info: PathInfo, cache: str) -> bytes:
    """Compact JSON ``UploadPathNarInfo`` in attic's field order (``UploadPathNarInfo`` in
    zhaofengli/attic ``attic/src/api/v1/upload_path.rs``)."""
    body = {
        "cache": cache,
        "store_path_hash": info.hash,
        "store_path": info.path,
        "references": list(info.references),
        "system": None,
        "deriver": info.deriver,
        "sigs": list(info.sigs),
        "ca": info.ca,
        "nar_hash": info.nar_hash,
        "nar_size": info.nar_size,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class AtticClient:
    """One Attic server and cache. Thread-safe (httpx.Client is); close it when done.

    Endpoint choice: the server also advertises ``api_endpoint`` in the cache config. attic's
    CLI switches to it; nix-job does **not**, because behind a reverse proxy that value is
    often an internal address (zhaofengli/attic#325) while the configured URL is known to
    work from here. A differing value is logged.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        cache: str,
        token: Secret | TokenSource | None,
        http: httpx.Client | None = None,
        timeouts: Timeouts | None = None,
        max_connections: int = 16,
    ) -> None:
        self.endpoint = normalise_endpoint(endpoint)
        self.cache = cache
        self._tokens = StaticToken(token) if token is None or isinstance(token, Secret) else token
        # SECURITY: request-level debug logs of httpx/httpcore would show headers.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._owns_http = http is None
        self._http = http or httpx.Client(
            timeout=(timeouts or Timeouts()).to_httpx(),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},
        )

    # Context management --------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool if this client created it; in-flight requests fail."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AtticClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # API -----------------------------------------------------------------------------------

    def cache_config(self) -> CacheConfig:
        """The cache's configuration; also proves the cache exists and the token may read it."""
        action = f"reading the configuration of cache '{self.cache}'"
        url = f"{self.endpoint}_api/v1/cache-config/{quote(self.cache, safe='')}"
        response = self._send(action, "GET", url)
        data = _json_object(response, action)
        names = data.get("upstream_cache_key_names") or []
        config = CacheConfig(
            substituter_endpoint=_opt(data, "substituter_endpoint", str),
            api_endpoint=_opt(data, "api_endpoint", str),
            public_key=_opt(data, "public_key", str),
            is_public=_opt(data, "is_public", bool),
            store_dir=_opt(data, "store_dir", str),
            upstream_cache_key_names=tuple(str(n) for n in names if isinstance(n, str)),
        )
        advertised = config.api_endpoint
        if advertised and advertised.rstrip("/") != self.endpoint.rstrip("/"):
            log.info(
                "Attic advertises api_endpoint %s; nix-job keeps using the configured %s "
                "(advertised endpoints are often internal behind a proxy, zhaofengli/attic#325)",
                advertised,
                self.endpoint,
            )
        else:
            log.info("Attic API endpoint: %s", self.endpoint)
        return config

    def missing_paths(self, hashes: Iterable[str]) -> set[str]:
        """The store path hashes the cache does not hold, asked in chunks of 10,000."""
        unique = list(dict.fromkeys(hashes))
        missing: set[str] = set()
        action = f"asking cache '{self.cache}' which paths it is missing"
        url = f"{self.endpoint}_api/v1/get-missing-paths"
        for start in range(0, len(unique), MISSING_PATHS_CHUNK):
            chunk = unique[start : start + MISSING_PATHS_CHUNK]
            body = {"cache": self.cache, "store_path_hashes": chunk}
            response = self._send(action, "POST", url, json=body)
            data = _json_object(response, action)
            found = data.get("missing_paths")
            if not isinstance(found, list) or not all(isinstance(h, str) for h in found):
                raise _unexpected(response, action, "no 'missing_paths' list")
            missing.update(found)
        return missing

    def upload(self, info: PathInfo, nar_chunks: Iterable[bytes]) -> UploadResult:
        """Upload one store path, streaming its NAR from ``nar_chunks`` (never buffered).

        The metadata rides in ``X-Attic-Nar-Info`` when its JSON is under 4096 bytes, else in
        a preamble before the NAR (``X-Attic-Nar-Info-Preamble-Size``). Content-Length is sent
        (preamble + nar_size) rather than chunked encoding, which proxies handle better.
        """
        meta = nar_info_json(info, self.cache)
        headers = {"Content-Type": "application/octet-stream"}
        preamble = b""
        if len(meta) >= PREAMBLE_THRESHOLD:
            headers["X-Attic-Nar-Info-Preamble-Size"] = str(len(meta))
            preamble = meta
        else:
            headers["X-Attic-Nar-Info"] = meta.decode()
        headers["Content-Length"] = str(len(preamble) + info.nar_size)
        action = f"uploading {info.path} ({info.nar_size} bytes) to cache '{self.cache}'"
        url = f"{self.endpoint}_api/v1/upload-path"
        response = self._send(
            action, "PUT", url, content=_body(preamble, nar_chunks), headers=headers
        )
        try:
            data = response.json()
        except ValueError:
            return UploadResult(kind="Uploaded")  # attic counts a non-JSON 2xx as Uploaded too
        if not isinstance(data, dict):
            return UploadResult(kind="Uploaded")
        file_size = data.get("file_size")
        frac = data.get("frac_deduplicated")
        return UploadResult(
            kind="Deduplicated" if data.get("kind") == "Deduplicated" else "Uploaded",
            file_size=file_size if isinstance(file_size, int) else None,
            frac_deduplicated=float(frac) if isinstance(frac, int | float) else None,
        )

    # Plumbing ------------------------------------------------------------------------------

    def _send(
        self,
        action: str,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        token = self._tokens.current()
        if token:
            # SECURITY: the only place the token is revealed; never logged (see __init__).
            all_headers["Authorization"] = f"Bearer {token.reveal()}"
        try:
            response = self._http.request(
                method, url, json=json, content=content, headers=all_headers
            )
        except httpx.TimeoutException as exc:
            raise AtticUnavailableError(
                f"{action} timed out ({type(exc).__name__}) talking to {self.endpoint}. "
                "The server or a proxy in front of it may be overloaded; it is retried.",
                status=None,
            ) from exc
        except httpx.TransportError as exc:
            raise AtticUnavailableError(
                f"{action} failed: could not talk to {self.endpoint} "
                f"({type(exc).__name__}: {exc}). Check the server URL and that it is reachable "
                "from this runner.",
                status=None,
            ) from exc
        if response.is_success:
            return response
        raise error_for(
            response,
            action,
            endpoint=self.endpoint,
            cache=self.cache,
            has_token=self._tokens.current() is not None,
        )


def _body(preamble: bytes, nar_chunks: Iterable[bytes]) -> Iterator[bytes]:
    if preamble:
        yield preamble
    yield from nar_chunks


def _json_object(response: httpx.Response, action: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _unexpected(response, action, "not a JSON object")
    return data


def _unexpected(response: httpx.Response, action: str, why: str) -> AtticApiError:
    sample = " ".join(response.text.split())[:_BODY_SAMPLE]
    return AtticApiError(
        f"{action}: the answer from {response.request.url} is {why}: {sample!r}. Is this URL "
        "an Attic server (and not a login page or another proxy answer)?",
        status=response.status_code,
    )


def _opt(data: dict[str, Any], key: str, kind: type[_T]) -> _T | None:
    value = data.get(key)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    return None
