"""Loading atticd's signing secret and minting tokens the Attic double accepts."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from nix_job.exchange.decide import Grant
from nix_job.exchange.errors import SigningKeyError
from nix_job.exchange.mint import CLAIM_NAMESPACE, attic_claims, load_signer
from nix_job.exchange.policy import Algorithm
from tests.attic_double.protocol import verify_token
from tests.exchange.support import HS256_SECRET, secret_env

HS_VAR = "ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64"
RS_VAR = "ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def rsa_pem(
    bits: int = 2048, fmt: PrivateFormat = PrivateFormat.TraditionalOpenSSL
) -> tuple[bytes, bytes]:
    """(private PEM, public PEM); TraditionalOpenSSL is PKCS#1 (`openssl genrsa -traditional`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(Encoding.PEM, fmt, NoEncryption())
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return private, public


GRANT = Grant(
    rule="r",
    caches=(("main", frozenset({"r", "w"})), ("team-*", frozenset({"r"})), ("solo", frozenset())),
    lifetime=600,
)


def test_attic_claims_layout() -> None:
    claims = attic_claims(
        grant=GRANT, subject="github:o/r:refs/heads/main:run/1/1", now=1000, skew=30
    )
    assert claims == {
        "sub": "github:o/r:refs/heads/main:run/1/1",
        "iat": 970,
        "nbf": 970,
        "exp": 1600,
        CLAIM_NAMESPACE: {
            "caches": {"main": {"r": 1, "w": 1}, "team-*": {"r": 1}, "solo": {}},
        },
    }
    attic = claims[CLAIM_NAMESPACE]
    assert isinstance(attic, dict)
    assert list(attic["caches"]) == ["main", "team-*", "solo"]  # atticd keeps claim order


def test_attic_claims_bound_issuer_and_audiences() -> None:
    claims = attic_claims(
        grant=GRANT, subject="s", now=0, skew=0, issuer="https://x", audiences=("https://a",)
    )
    assert claims["iss"] == "https://x"
    assert claims["aud"] == ["https://a"]


def test_hs256_from_environment_is_accepted_by_the_double() -> None:
    signer = load_signer(algorithm=None, secret_file=None, env=secret_env())
    assert (signer.algorithm, signer.source) == ("HS256", HS_VAR)
    token = signer.sign(attic_claims(grant=GRANT, subject="s", now=int(time.time()), skew=30))
    grant = verify_token(token.reveal(), HS256_SECRET)
    assert grant is not None
    assert grant.sub == "s"
    assert grant.permissions_for("main") == {"r", "w"}
    assert grant.permissions_for("team-x") == {"r"}
    assert grant.permissions_for("solo") == frozenset()  # the emptied entry still shadows


@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(PrivateFormat.TraditionalOpenSSL, id="pkcs1"),
        pytest.param(PrivateFormat.PKCS8, id="pkcs8"),
    ],
)
def test_rs256_from_environment_is_accepted_by_the_double(fmt: PrivateFormat) -> None:
    private, public = rsa_pem(fmt=fmt)
    signer = load_signer(algorithm=None, secret_file=None, env={RS_VAR: b64(private)})
    assert signer.algorithm == "RS256"
    token = signer.sign(attic_claims(grant=GRANT, subject="s", now=int(time.time()), skew=30))
    assert jwt.get_unverified_header(token.reveal())["alg"] == "RS256"
    grant = verify_token(token.reveal(), b"unused", rs256_public_pem=public)
    assert grant is not None
    assert grant.permissions_for("main") == {"r", "w"}
    assert verify_token(token.reveal(), HS256_SECRET) is None  # not an HS256 token


def test_secret_file_with_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "attic-secret"
    path.write_text(b64(HS256_SECRET) + "\n")
    signer = load_signer(algorithm="HS256", secret_file=path, env={RS_VAR: "ignored"})
    assert (signer.algorithm, signer.source) == ("HS256", str(path))


def test_algorithm_picks_among_two_variables() -> None:
    private, _ = rsa_pem()
    env = {**secret_env(), RS_VAR: b64(private)}
    assert load_signer(algorithm="RS256", secret_file=None, env=env).algorithm == "RS256"
    assert load_signer(algorithm="HS256", secret_file=None, env=env).algorithm == "HS256"


def test_signer_never_prints_its_key() -> None:
    signer = load_signer(algorithm=None, secret_file=None, env=secret_env())
    shown = f"{signer} {signer!r}"
    assert "HS256 secret from ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64" in shown
    assert b64(HS256_SECRET) not in shown
    assert repr(HS256_SECRET) not in shown
    assert str(signer.sign({"sub": "x"})) == "***"


EC_PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
)
SHORT_RSA, _ = rsa_pem(bits=1024)

BAD = [
    pytest.param(
        None,
        {},
        None,
        f"no signing secret: set {HS_VAR} or {RS_VAR}",
        id="nothing",
    ),
    pytest.param(
        "RS256",
        secret_env(),
        None,
        "no signing secret: set ATTIC_SERVER_TOKEN_RS256_SECRET_BASE64",
        id="other-algorithm-only",
    ),
    pytest.param(
        None,
        {**secret_env(), RS_VAR: b64(SHORT_RSA)},
        None,
        "both ATTIC_SERVER_TOKEN_HS256_SECRET_BASE64 and",
        id="both-set",
    ),
    pytest.param(
        None,
        {HS_VAR: "not base64!"},
        None,
        f"the secret in {HS_VAR} is not standard base64",
        id="bad-base64",
    ),
    pytest.param(
        None, {HS_VAR: b64(b"s" * 16)}, None, "is 16 bytes; use at least 32", id="short-hs256"
    ),
    pytest.param(
        None,
        {RS_VAR: b64(b"-----BEGIN NOTHING-----")},
        None,
        "is not base64 of an unencrypted PEM",
        id="rs256-not-pem",
    ),
    pytest.param(None, {RS_VAR: b64(EC_PEM)}, None, "is not an RSA key", id="rs256-ec-key"),
    pytest.param(
        None,
        {RS_VAR: b64(SHORT_RSA)},
        None,
        "has 1024 bits; use at least 2048",
        id="rs256-1024-bits",
    ),
    pytest.param("HS256", {}, "missing", "cannot read the secret file", id="file-missing"),
    pytest.param(None, {}, "present", "needs service.algorithm", id="file-without-algorithm"),
]


@pytest.mark.parametrize(("algorithm", "env", "file", "expected"), BAD)
def test_bad_secrets_say_where_not_what(
    tmp_path: Path,
    algorithm: Algorithm | None,
    env: dict[str, str],
    file: str | None,
    expected: str,
) -> None:
    path = None
    if file is not None:
        path = tmp_path / "secret"
        if file == "present":
            path.write_text(b64(HS256_SECRET))
    with pytest.raises(SigningKeyError) as caught:
        load_signer(algorithm=algorithm, secret_file=path, env=env)
    message = caught.value.message
    assert expected in message
    for value in env.values():
        assert value not in message
