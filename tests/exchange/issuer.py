"""``FakeIssuer``: an OIDC issuer on 127.0.0.1 for tests (and later end-to-end runs).

Serves ``/.well-known/openid-configuration`` and ``/jwks`` over real HTTP, with real RSA
(RS256) and EC P-256 (ES256) keys generated at test time, and signs GitHub- and GitLab-shaped
ID tokens. Keys can be added, unpublished and rotated; every request is counted; faults
(an HTTP status for everything, a wrong ``issuer`` in discovery) are switchable.

    with FakeIssuer(name="gh") as issuer:
        token = issuer.sign(issuer.github_claims(audience="https://attic.test"))
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.serving import Serving

KeyKind = Literal["rsa", "ec"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@functools.cache
def _generated(label: str, kind: KeyKind) -> PrivateKey:
    """One key per label for the whole test session (RSA generation is the slow part)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Mapping[str, object], payload: Mapping[str, object], signature: bytes) -> str:
    """A JWT assembled by hand, for forged tokens (``alg: none``, HS256 with a public key)."""
    head = b64url(json.dumps(dict(header), separators=(",", ":")).encode())
    body = b64url(json.dumps(dict(payload), separators=(",", ":")).encode())
    return f"{head}.{body}.{b64url(signature)}"


class FakeIssuer:
    def __init__(self, *, name: str = "issuer", host: str = "127.0.0.1") -> None:
        self.name = name
        self._host = host
        self._keys: dict[str, PrivateKey] = {}
        self.published: set[str] = set()
        """Kids served in the JWKS; a key can sign without being published."""
        self.discovery_requests = 0
        self.jwks_requests = 0
        self.fail_status: int | None = None
        """Answer every request with this status (an outage)."""
        self.discovery_issuer: str | None = None
        """Claim this ``issuer`` in discovery instead of the real URL (a mismatch)."""
        self._serving: Serving | None = None
        self.add_key(f"{name}-rsa-1", "rsa")
        self.add_key(f"{name}-ec-1", "ec")

    # --- keys ---------------------------------------------------------------------------

    @property
    def rsa_kid(self) -> str:
        return f"{self.name}-rsa-1"

    @property
    def ec_kid(self) -> str:
        return f"{self.name}-ec-1"

    def add_key(self, kid: str, kind: KeyKind, *, publish: bool = True) -> str:
        self._keys[kid] = _generated(f"{self.name}/{kid}", kind)
        if publish:
            self.published.add(kid)
        return kid

    def public_pem(self, kid: str) -> bytes:
        return (
            self._keys[kid]
            .public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )

    def jwks(self) -> dict[str, object]:
        keys: list[dict[str, Any]] = []
        for kid in sorted(self.published):
            key = self._keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
                jwk.update(alg="RS256")
            else:
                jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
                jwk.update(alg="ES256")
            jwk.update(kid=kid, use="sig")
            keys.append(jwk)
        return {"keys": keys}

    # --- tokens -------------------------------------------------------------------------

    def sign(
        self,
        claims: Mapping[str, object],
        *,
        kid: str | None = None,
        headers: Mapping[str, object] | None = None,
    ) -> str:
        """Sign with ``kid`` (default: the RSA key), RS256 for RSA keys, ES256 for EC keys."""
        kid = kid or self.rsa_kid
        key = self._keys[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(
            dict(claims), key, algorithm=alg, headers={"kid": kid, **dict(headers or {})}
        )

    def sign_bytes(self, payload: bytes, *, kid: str | None = None) -> str:
        """Sign an exact payload (e.g. JSON with a duplicate key) with the RSA key."""
        kid = kid or self.rsa_kid
        return jwt.PyJWS().encode(payload, self._keys[kid], algorithm="RS256", headers={"kid": kid})

    def _times(self, now: float | None, lifetime: int) -> dict[str, int]:
        issued = int(time.time() if now is None else now)
        return {"iat": issued, "nbf": issued - 5, "exp": issued + lifetime}

    def github_claims(
        self,
        *,
        audience: str,
        repository: str = "octo-org/octo-repo",
        repository_id: str = "4242",
        ref: str = "refs/heads/main",
        event_name: str = "push",
        now: float | None = None,
        lifetime: int = 300,
        **extra: object,
    ) -> dict[str, object]:
        """Claims shaped like GitHub's (docs: "OpenID Connect reference"); ids are strings."""
        owner = repository.split("/", 1)[0]
        claims: dict[str, object] = {
            "iss": self.url,
            "aud": audience,
            "sub": f"repo:{repository}:ref:{ref}",
            "jti": "b3f2a1c0-0000-4000-8000-000000000001",
            "repository": repository,
            "repository_id": repository_id,
            "repository_owner": owner,
            "repository_owner_id": "9000",
            "repository_visibility": "public",
            "actor": "octocat",
            "actor_id": "1",
            "ref": ref,
            "ref_type": "branch",
            "sha": "0" * 40,
            "event_name": event_name,
            "workflow": "CI",
            "workflow_ref": f"{repository}/.github/workflows/ci.yml@{ref}",
            "job_workflow_ref": f"{repository}/.github/workflows/ci.yml@{ref}",
            "run_id": "123456789",
            "run_number": "7",
            "run_attempt": "1",
            "runner_environment": "github-hosted",
            "head_ref": "",
            "base_ref": "",
            **self._times(now, lifetime),
        }
        claims.update(extra)
        return claims

    def gitlab_claims(
        self,
        *,
        audience: str,
        project_path: str = "group/project",
        project_id: str = "20",
        ref: str = "main",
        ref_protected: object = "true",
        pipeline_source: str = "push",
        now: float | None = None,
        lifetime: int = 300,
        **extra: object,
    ) -> dict[str, object]:
        """Claims shaped like GitLab's (doc/ci/secrets/id_token_authentication.md):
        ids and ``ref_protected`` are strings, ``runner_id`` a number."""
        namespace = project_path.rsplit("/", 1)[0]
        claims: dict[str, object] = {
            "iss": self.url,
            "aud": audience,
            "sub": f"project_path:{project_path}:ref_type:branch:ref:{ref}",
            "jti": "235b3a54-b797-45c7-ae9a-f72d7bc6ef5b",
            "namespace_id": "72",
            "namespace_path": namespace,
            "project_id": project_id,
            "project_path": project_path,
            "user_id": "1",
            "user_login": "sample-user",
            "pipeline_id": "574",
            "pipeline_source": pipeline_source,
            "job_id": "302",
            "ref": ref,
            "ref_type": "branch",
            "ref_path": f"refs/heads/{ref}",
            "ref_protected": ref_protected,
            "runner_id": 1,
            "runner_environment": "gitlab-hosted",
            "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
            **self._times(now, lifetime),
        }
        claims.update(extra)
        return claims

    # --- server -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._serving is None:
            raise RuntimeError("FakeIssuer is not running: start() it or use it in a with block")
        return f"http://{self._host}:{self._serving.port}"

    def start(self) -> FakeIssuer:
        if self._serving is None:
            self._serving = Serving(_Server((self._host, 0), self), name=f"issuer-{self.name}")
        return self

    def stop(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop()

    def __enter__(self) -> FakeIssuer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], issuer: FakeIssuer) -> None:
        self.issuer = issuer
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        issuer = self.server.issuer
        if self.path == "/.well-known/openid-configuration":
            issuer.discovery_requests += 1
            body: object = {
                "issuer": issuer.discovery_issuer or issuer.url,
                "jwks_uri": f"{issuer.url}/jwks",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
        elif self.path == "/jwks":
            issuer.jwks_requests += 1
            body = issuer.jwks()
        else:
            self._send(404, {"error": "not found"})
            return
        if issuer.fail_status is not None:
            self._send(issuer.fail_status, {"error": "fault injected"})
            return
        self._send(200, body)

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
