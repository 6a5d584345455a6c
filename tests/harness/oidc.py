"""GitHub's ID-token endpoint, played on 127.0.0.1 for runs of the harness.

The runner gives every script step ``ACTIONS_ID_TOKEN_REQUEST_URL`` (already carrying
``?api-version=…``) and ``ACTIONS_ID_TOKEN_REQUEST_TOKEN`` when the job has
``permissions: id-token: write`` (actions/runner ``ScriptHandler.cs``); a client appends
``&audience=…`` and sends the request token as a bearer (actions/toolkit ``oidc-utils.ts``), and
gets ``{"count": …, "value": "<JWT>"}``. Here ``mint(audience)`` makes the JWT (a
``tests.exchange.issuer.FakeIssuer`` token); a request without the right bearer gets 401.

    with IdTokenEndpoint(lambda aud: issuer.sign(issuer.github_claims(audience=aud))) as oidc:
        run_action(..., id_token=oidc)
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.serving import Serving

REQUEST_URL_ENV = "ACTIONS_ID_TOKEN_REQUEST_URL"
REQUEST_TOKEN_ENV = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"


class IdTokenEndpoint:
    def __init__(self, mint: Callable[[str], str], *, request_token: str | None = None) -> None:
        self.mint = mint
        self.request_token = request_token or f"harness-request-{secrets.token_hex(16)}"
        self._path = (
            f"/_apis/distributedtask/hubs/Actions/plans/{uuid.uuid4()}/jobs/{uuid.uuid4()}/idtoken"
        )
        self.audiences: list[str] = []
        self.issued: list[str] = []
        self.refused = 0
        self._lock = threading.Lock()
        self._serving: Serving | None = None

    @property
    def url(self) -> str:
        if self._serving is None:
            raise RuntimeError("IdTokenEndpoint is not running: use it in a with block")
        return f"http://127.0.0.1:{self._serving.port}{self._path}?api-version=2.0"

    def env(self) -> dict[str, str]:
        """The two variables, as the runner sets them for a step."""
        return {REQUEST_URL_ENV: self.url, REQUEST_TOKEN_ENV: self.request_token}

    def _answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, object]]:
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        scheme, _, token = (authorization or "").partition(" ")
        with self._lock:
            if parts.path != self._path or query.get("api-version") != ["2.0"]:
                return 404, {"message": "not found"}
            if scheme.lower() != "bearer" or token != self.request_token:
                self.refused += 1
                return 401, {"message": "Unauthorized"}
            audience = query.get("audience", [""])[0]
            value = self.mint(audience)
            self.audiences.append(audience)
            self.issued.append(value)
            return 200, {"count": 2000, "value": value}

    def start(self) -> IdTokenEndpoint:
        if self._serving is None:
            endpoint = self

            class Handler(BaseHTTPRequestHandler):
                def log_message(self, format: str, *args: Any) -> None:
                    pass

                def do_GET(self) -> None:
                    status, body = endpoint._answer(self.path, self.headers.get("Authorization"))
                    data = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self._serving = Serving(server, name="harness-id-token")
        return self

    def stop(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()

    def __enter__(self) -> IdTokenEndpoint:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
