"""Minting Attic JWTs with atticd's own signing secret (HS256 or RS256).

The secret comes from the environment (``ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64`` /
``ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64``, atticd's variables and formats) or from a file
holding the same base64 text (e.g. a systemd credential) — never from the policy. Formats,
from attic's token/src/lib.rs: HS256 is base64 of the raw secret bytes; RS256 is base64 of a
PEM RSA private key (``openssl genrsa -traditional 4096 | base64 -w0``, PKCS#1; PKCS#8 is
accepted too). The claims follow ``atticadm make-token`` plus ``iat``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from nix_job.core.secret import Secret
from nix_job.exchange.decide import Grant
from nix_job.exchange.errors import SigningKeyError
from nix_job.exchange.policy import Algorithm

CLAIM_NAMESPACE = "https://jwt.attic.rs/v1"
ENV_VARS: dict[Algorithm, str] = {
    "HS256": "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64",
    "RS256": "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
}
MIN_HS256_BYTES = 32
"""RFC 7518 §3.2: an HS256 key is at least as long as the hash (256 bits)."""
MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    """Signs claims with atticd's secret. Prints as its algorithm and source only."""

    algorithm: Algorithm
    source: str
    """Where the secret came from (a variable name or a path), for the startup log."""
    _key: bytes | RSAPrivateKey = field(repr=False)

    def sign(self, claims: Mapping[str, object]) -> Secret:
        return Secret(jwt.encode(dict(claims), self._key, algorithm=self.algorithm))

    def __str__(self) -> str:
        return f"{self.algorithm} secret from {self.source}"


def load_signer(
    *, algorithm: Algorithm | None, secret_file: Path | None, env: Mapping[str, str]
) -> Signer:
    """Find and decode the signing secret; ``SigningKeyError`` says where it looked and why
    it failed, never what it read."""
    if secret_file is not None:
        if algorithm is None:
            raise SigningKeyError(
                f"a secret file ({secret_file}) needs service.algorithm in the policy "
                '("HS256" or "RS256") to know how to read it'
            )
        try:
            text = secret_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as error:
            raise SigningKeyError(
                f"cannot read the secret file {secret_file}: {type(error).__name__}; check the "
                "path and that this service may read it (systemd: LoadCredential=)"
            ) from None
        return _decode(algorithm, text.strip(), source=str(secret_file))
    present = [a for a, var in ENV_VARS.items() if env.get(var, "").strip()]
    if algorithm is not None:
        present = [a for a in present if a == algorithm]
    if not present:
        wanted = ENV_VARS[algorithm] if algorithm else " or ".join(ENV_VARS.values())
        raise SigningKeyError(
            f"no signing secret: set {wanted} in this service's environment (the value atticd "
            "uses), or give --secret-file / service.secret_file"
        )
    if len(present) > 1:
        raise SigningKeyError(
            "both ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64 and "
            "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64 are set; set service.algorithm in the "
            "policy to the one atticd uses"
        )
    chosen = present[0]
    return _decode(chosen, env[ENV_VARS[chosen]].strip(), source=ENV_VARS[chosen])


def _decode(algorithm: Algorithm, text: str, *, source: str) -> Signer:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(
            f"the secret in {source} is not standard base64 (atticd reads it the same way)"
        ) from None
    if algorithm == "HS256":
        if len(raw) < MIN_HS256_BYTES:
            raise SigningKeyError(
                f"the HS256 secret in {source} is {len(raw)} bytes; use at least "
                f"{MIN_HS256_BYTES} random bytes (openssl rand 64 | base64 -w0)"
            )
        return Signer(algorithm="HS256", source=source, _key=raw)
    try:
        key = load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(
            f"the RS256 secret in {source} is not base64 of an unencrypted PEM private key "
            "(openssl genrsa -traditional 4096 | base64 -w0)"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise SigningKeyError(f"the RS256 secret in {source} is not an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise SigningKeyError(
            f"the RSA key in {source} has {key.key_size} bits; use at least {MIN_RSA_BITS}"
        )
    return Signer(algorithm="RS256", source=source, _key=key)


def attic_claims(
    *,
    grant: Grant,
    subject: str,
    now: int,
    skew: int,
    issuer: str | None = None,
    audiences: tuple[str, ...] = (),
) -> dict[str, object]:
    """The claims of a minted token. Pure.

    ``nbf`` and ``iat`` are backdated by ``skew`` seconds: atticd checks them with no clock
    tolerance (token/src/lib.rs: ``time_tolerance: None``, ``accept_future: false``), so a
    token minted on a host whose clock runs ahead would otherwise be refused there. ``exp``
    is ``now + lifetime``. Permissions are the integers 1 (never JSON true), in claim order.
    """
    claims: dict[str, object] = {
        "sub": subject,
        "iat": now - skew,
        "nbf": now - skew,
        "exp": now + grant.lifetime,
        CLAIM_NAMESPACE: {
            "caches": {
                key: {letter: 1 for letter in sorted(letters)} for key, letters in grant.caches
            }
        },
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audiences:
        claims["aud"] = list(audiences)
    return claims
