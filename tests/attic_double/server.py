"""``AtticDouble``: a strict Attic-compatible server over real HTTP on 127.0.0.1, for tests.

Implements the uploader API, the Nix read side and attic's auth and error rules (zhaofengli/attic
``server/src/``), records every request and stored object, and injects faults on demand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt

from nix_job.core.nixhash import base_name
from tests.attic_double.body import RequestBody
from tests.attic_double.endpoints import Dropped, Endpoints, Exchange, Response
from tests.attic_double.protocol import (
    HttpError,
    Keypair,
    attic_error,
    make_claims,
    plain_error,
    token_from_authorization,
    valid_cache_name,
    valid_store_path_hash,
    verify_token,
)
from tests.attic_double.state import (
    CacheInfo,
    DoubleState,
    Faults,
    RecordedRequest,
    ServerConfig,
    StoredObject,
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: AtticDouble) -> None:
        self.double = double
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "attic-double"
    # Headers and body go out in two writes; with Nagle on, the body waits ~40 ms for the
    # client's delayed ACK on every response.
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections end after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence: the request log is ``double.requests``."""

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # --- plumbing -------------------------------------------------------------------------

    def _serve(self) -> None:
        double = self.server.double
        started_mono, started_at = time.monotonic(), time.time()
        ex = Exchange()
        body = RequestBody(self)
        faults = double.state.faults
        config = double.config
        response: Response | None = None
        try:
            response = self._dispatch(double, config, faults, body, ex)
        except HttpError as exc:
            response = Response(exc.status, exc.body, exc.content_type)
            if exc.status in (429, 503) and faults.retry_after is not None:
                response.headers["Retry-After"] = faults.retry_after
        except Dropped:
            response = None
        finally:
            if response is not None:
                if faults.response_delay_s:
                    time.sleep(faults.response_delay_s)
                if not ex.answer_before_body and not body.finished:
                    # Read what the client sends before answering, so it never sees a reset
                    # while writing; only the deliberate early answer skips this.
                    with contextlib.suppress(OSError, ValueError):
                        body.drain()
            # Record before the client can see the answer, so tests never race the log.
            double.state.record(
                RecordedRequest(
                    method=self.command,
                    path=self.path,
                    headers=tuple(self.headers.items()),
                    body_size=body.size,
                    status=None if response is None else response.status,
                    response_body=b""
                    if response is None or self.command == "HEAD"
                    else response.body,
                    started_mono=started_mono,
                    ended_mono=time.monotonic(),
                    started_at=started_at,
                    ended_at=time.time(),
                    auth_scheme=ex.auth_scheme,
                    subject=ex.grant.sub if ex.grant else None,
                    metadata=ex.metadata,
                    metadata_via=ex.metadata_via,
                    fault=ex.fault,
                )
            )
            if response is None:
                self._reset()
            else:
                self._send(response, body)

    def _send(self, response: Response, body: RequestBody) -> None:
        keep_alive = body.finished and not self.close_connection
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if not keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)
        self.wfile.flush()
        if not keep_alive:
            # Answered before the body was read (as atticd may): let the client finish
            # sending, then close, rather than resetting a connection it is still writing to.
            self.close_connection = True
            with contextlib.suppress(OSError, ValueError):
                body.drain()

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees a connection reset mid-request."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    # --- routing --------------------------------------------------------------------------

    def _dispatch(
        self,
        double: AtticDouble,
        config: ServerConfig,
        faults: Faults,
        body: RequestBody,
        ex: Exchange,
    ) -> Response:
        if not self.headers.get("Host"):
            raise plain_error(400, "No host found in request")
        ex.auth_scheme, token = token_from_authorization(self.headers.get("Authorization"))
        ex.grant = (
            verify_token(token, double.token_secret, rs256_public_pem=double.token_rs256_public_pem)
            if token
            else None
        )
        if faults.unauthorized:
            ex.fault = "unauthorized"
            raise attic_error("Unauthorized")
        path = urlsplit(self.path).path
        method = self.command
        if path.startswith("/_api/") and faults.garbage_status is not None:
            ex.fault = "garbage"
            return Response(
                faults.garbage_status,
                b"<html><body><h1>502 Bad Gateway</h1>attic-double garbage</body></html>",
                "text/html",
            )
        if (
            path.startswith("/_api/")
            and "/cache-config/" not in path
            and faults.hostile_message is not None
        ):
            ex.fault = "hostile-message"
            status, message = faults.hostile_message
            error = {"code": status, "error": "Hostile", "message": message}
            return Response(status, json.dumps(error).encode(), "application/json")
        parts = [unquote(p) for p in path.split("/")[1:]]
        api = Endpoints(handler=self, double=double, config=config, faults=faults, body=body, ex=ex)
        route: tuple[tuple[str, ...], Callable[[], Response]]
        if path == "/":
            route = (("GET", "HEAD"), api.landing)
        elif parts[:3] == ["_api", "v1", "cache-config"] and len(parts) == 4:
            route = (("GET", "HEAD", "POST"), lambda: api.cache_config(parts[3]))
        elif path == "/_api/v1/get-missing-paths":
            route = (("POST",), api.get_missing_paths)
        elif path == "/_api/v1/upload-path":
            route = (("PUT",), api.upload_path)
        elif len(parts) == 2 and parts[0] != "_api" and parts[1] == "nix-cache-info":
            route = (("GET", "HEAD"), lambda: api.nix_cache_info(parts[0]))
        elif len(parts) == 2 and parts[0] != "_api" and parts[1] == "attic-cache-info":
            route = (("GET", "HEAD"), lambda: api.cache_config(parts[0]))
        elif len(parts) == 3 and parts[0] != "_api" and parts[1] == "nar":
            route = (("GET", "HEAD"), lambda: api.nar(parts[0], parts[2]))
        elif len(parts) == 2 and parts[0] != "_api" and parts[1]:
            route = (("GET", "HEAD"), lambda: api.narinfo(parts[0], parts[1]))
        else:
            raise attic_error("NotFound")
        methods, handler = route
        if method not in methods:
            return Response(405, b"", None, {"Allow": ", ".join(methods)})
        return handler()


class AtticDouble:
    """An Attic server double on a real socket. Use as a context manager or start()/stop().

    >>> with AtticDouble() as double:
    ...     cache = double.create_cache("demo")
    ...     token = double.make_token({"demo": "rw"})
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: ServerConfig | None = None,
        token_secret: bytes | None = None,
        token_rs256_public_pem: bytes | None = None,
    ) -> None:
        self.state = DoubleState()
        self.config = config or ServerConfig()
        self.token_secret = token_secret or uuid.uuid4().bytes + uuid.uuid4().bytes
        self.token_rs256_public_pem = token_rs256_public_pem
        """A PEM RSA public key: verify RS256 tokens with it instead of HS256 ones."""
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> AtticDouble:
        if self._server is not None:
            return self
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"attic-double-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with server.connections_lock:
            open_connections = list(server.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AtticDouble:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("AtticDouble is not running: call start() or use it in a with block")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/``, ending in ``/`` as attic clients expect."""
        return f"http://{self._address[0]}:{self.port}/"

    def substituter_url(self, cache: str) -> str:
        return self.url + cache

    # --- caches and tokens ----------------------------------------------------------------

    def add_cache(
        self,
        name: str,
        *,
        public: bool = False,
        store_dir: str = "/nix/store",
        priority: int = 41,
        upstream_key_names: Sequence[str] = ("cache.nixos.org-1",),
        keypair: Keypair | None = None,
    ) -> CacheInfo | None:
        """Create a cache; None if it already exists."""
        if not valid_cache_name(name):
            raise ValueError(
                f"invalid cache name {name!r}: attic allows [A-Za-z0-9][A-Za-z0-9-_+]*"
            )
        cache = CacheInfo(
            name=name,
            is_public=public,
            store_dir=store_dir,
            priority=priority,
            upstream_cache_key_names=tuple(upstream_key_names),
            retention_period="Global",
            keypair=keypair or Keypair.generate(name),
        )
        return cache if self.state.add_cache(cache) else None

    def create_cache(
        self,
        name: str,
        *,
        public: bool = False,
        store_dir: str = "/nix/store",
        priority: int = 41,
        upstream_key_names: Sequence[str] = ("cache.nixos.org-1",),
        keypair: Keypair | None = None,
    ) -> CacheInfo:
        """Create a cache for a test; ValueError if it exists."""
        cache = self.add_cache(
            name,
            public=public,
            store_dir=store_dir,
            priority=priority,
            upstream_key_names=upstream_key_names,
            keypair=keypair,
        )
        if cache is None:
            raise ValueError(f"cache {name!r} already exists in this AtticDouble")
        return cache

    def cache(self, name: str) -> CacheInfo:
        cache = self.state.cache(name)
        if cache is None:
            raise KeyError(f"no cache {name!r} in this AtticDouble; create_cache() it first")
        return cache

    def make_token(
        self,
        perms: Mapping[str, str | Sequence[str]],
        *,
        sub: str = "ci",
        valid_for: int = 3600,
        now: int | None = None,
    ) -> str:
        """A JWT like ``atticadm make-token``: ``{"demo": "rw", "team-*": ["r", "cc"]}``.

        A negative ``valid_for`` gives an expired token; ``now`` in the future a not-yet-valid one.
        """
        issued = int(time.time()) if now is None else now
        claims = make_claims(perms, sub=sub, now=issued, valid_for=valid_for)
        return self.sign_claims(claims)

    def sign_claims(self, claims: Mapping[str, object]) -> str:
        """Sign arbitrary claims with this server's secret (for malformed-claim tests)."""
        return jwt.encode(dict(claims), self.token_secret, algorithm="HS256")

    # --- faults and config ----------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self.state.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        self.state.set_faults(value)

    @contextlib.contextmanager
    def faulted(self, faults: Faults) -> Iterator[AtticDouble]:
        """Apply ``faults`` inside the block, then clear them."""
        self.faults = faults
        try:
            yield self
        finally:
            self.faults = Faults()

    # --- recording ------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.state.requests()

    def write_requests(self) -> list[RecordedRequest]:
        """get-missing-paths and upload-path requests, in arrival order."""
        return [r for r in self.requests if r.is_write]

    def upload_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/_api/v1/upload-path"]

    def clear_requests(self) -> None:
        self.state.clear_requests()

    def objects(self, cache: str | None = None) -> list[StoredObject]:
        """Stored objects (of one cache, or all), oldest first."""
        return self.state.objects(cache)

    def get_object(self, cache: str, path_or_hash: str) -> StoredObject | None:
        return self.state.get_object(cache, _hash_of(path_or_hash))

    def has_path(self, cache: str, path_or_hash: str) -> bool:
        """Whether ``cache`` holds a store path, given as full path, base name or hash."""
        return self.get_object(cache, path_or_hash) is not None

    def put_path(
        self,
        cache: str,
        *,
        store_path: str,
        nar: bytes,
        references: Sequence[str] = (),
        deriver: str | None = None,
        ca: str | None = None,
    ) -> StoredObject:
        """Seed an object directly, without HTTP (e.g. "already cached" fixtures)."""
        info = self.cache(cache)
        obj = StoredObject(
            cache=info.name,
            store_path_hash=_hash_of(store_path),
            store_path=store_path,
            references=tuple(references),
            deriver=deriver,
            sigs=(),
            ca=ca,
            nar_hash="sha256:" + hashlib.sha256(nar).hexdigest(),
            nar_size=len(nar),
            nar=nar,
            created_by=None,
            kind="Uploaded",
            metadata={},
            stored_at=time.time(),
            stored_mono=time.monotonic(),
        )
        self.state.put_object(obj)
        return obj


def _hash_of(path_or_hash: str) -> str:
    if valid_store_path_hash(path_or_hash):
        return path_or_hash
    return base_name(path_or_hash)[:32]
