"""Attic's value formats, permission model, error bodies and narinfo rendering. Pure.

Everything here follows zhaofengli/attic (``server/src/``, ``token/src/lib.rs``); the HTTP
plumbing lives in ``server.py`` and only calls these functions.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nix_job.core.nixhash import BASE_NAME_RE, STORE_HASH_RE, nix32_decode, nix32_encode

CACHE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_+]{0,49}$")
CACHE_PATTERN_RE = re.compile(r"^[A-Za-z0-9\-_+*]{1,50}$")
CLAIM_NAMESPACE = "https://jwt.attic.rs/v1"
PERMISSION_LETTERS = ("r", "w", "d", "cc", "cr", "cq", "cd")
_AUTH_RE = re.compile(r"^(?i:(bearer|basic)) (.*)$", re.DOTALL)

# (status, message) per attic ErrorKind name (server/src/error.rs).
ERROR_KINDS: dict[str, tuple[int, str]] = {
    "NotFound": (404, "The URL you requested was not found."),
    "Unauthorized": (401, "Unauthorized."),
    "InternalServerError": (
        500,
        "The server encountered an internal error or misconfiguration.",
    ),
    "NoSuchCache": (404, "The requested cache does not exist."),
    "CacheAlreadyExists": (400, "The cache already exists."),
    "NoSuchObject": (404, "The requested object does not exist."),
    "IncompleteNar": (503, "The requested NAR has missing chunks and needs to be repaired."),
    "AccessError": (
        403,
        "Access error: User does not have permission to complete this action.",
    ),
}
_HIDDEN_WITHOUT_DISCOVERY = frozenset({"NoSuchCache", "NoSuchObject", "AccessError"})


class HttpError(Exception):
    """A finished error response: status, body bytes and content type."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body
        self.content_type = content_type


def attic_error(kind: str, *, discover: bool = True, detail: str | None = None) -> HttpError:
    """attic's ``{"code","error","message"}`` JSON for an ErrorKind.

    ``discover=False`` applies the discovery rule (NoSuchCache, NoSuchObject and AccessError
    become 401 Unauthorized). ``RequestError`` takes ``detail``; any other unknown name is one
    of attic's common errors (``InvalidStorePathHash`` …), which the server answers with 500.
    """
    if not discover and kind in _HIDDEN_WITHOUT_DISCOVERY:
        kind = "Unauthorized"
    if kind == "RequestError":
        status, message = 400, f"General request error: {detail}"
    elif kind in ERROR_KINDS:
        status, message = ERROR_KINDS[kind]
    else:
        status, message = 500, "Error from the common components."
    body = json.dumps(
        {"code": status, "error": kind, "message": message}, separators=(",", ":")
    ).encode()
    return HttpError(status, body, "application/json")


def plain_error(status: int, text: str) -> HttpError:
    """A framework (axum) or proxy rejection: plain text, not attic's JSON."""
    return HttpError(status, text.encode(), "text/plain; charset=utf-8")


# --- values -------------------------------------------------------------------------------


def valid_cache_name(value: object) -> bool:
    return isinstance(value, str) and bool(CACHE_NAME_RE.match(value))


def valid_store_path_hash(value: object) -> bool:
    return isinstance(value, str) and bool(STORE_HASH_RE.match(value))


def parse_attic_hash(value: object) -> str:
    """attic's ``Hash`` input: ``sha256:`` + 64 hex or 52 nix32 → ``sha256:<hex>``.

    SRI (``sha256-…``) and every other form raise ValueError, as attic's deserializer does.
    """
    if not isinstance(value, str) or not value.startswith("sha256:"):
        raise ValueError(f"invalid hash {value!r}: expected sha256:<64 hex or 52 nix32>")
    text = value[len("sha256:") :]
    if len(text) == 64 and re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return "sha256:" + text.lower()
    if len(text) == 52:
        return "sha256:" + nix32_decode(text).hex()
    raise ValueError(f"invalid hash {value!r}: expected sha256:<64 hex or 52 nix32>")


# --- keys and signatures ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Keypair:
    """An ed25519 keypair in Nix's text formats, named after the cache."""

    name: str
    seed: bytes

    @classmethod
    def generate(cls, name: str) -> Keypair:
        raw = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name=name, seed=raw)

    @property
    def public_bytes(self) -> bytes:
        key = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_key(self) -> str:
        """``name:base64(32 bytes)``, the form ``trusted-public-keys`` takes."""
        return f"{self.name}:{base64.b64encode(self.public_bytes).decode()}"

    @property
    def secret_key(self) -> str:
        """``name:base64(seed ‖ public key)``, the form ``nix-store --generate-binary-cache-key``
        writes (usable with ``nix copy --to file://…?secret-key=``)."""
        return f"{self.name}:{base64.b64encode(self.seed + self.public_bytes).decode()}"

    def sign(self, message: bytes) -> str:
        signature = Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)
        return f"{self.name}:{base64.b64encode(signature).decode()}"


def fingerprint(*, store_path: str, nar_hash: str, nar_size: int, references: Sequence[str]) -> str:
    """What the server signs: ``1;<path>;sha256:<nix32>;<size>;<comma-joined full refs>``.

    References are taken in stored order (attic does not sort them) and prefixed with the
    store dir, the parent of ``store_path``.
    """
    store_dir = store_path.rsplit("/", 1)[0]
    digest = bytes.fromhex(parse_attic_hash(nar_hash)[len("sha256:") :])
    refs = ",".join(f"{store_dir}/{ref}" for ref in references)
    return f"1;{store_path};sha256:{nix32_encode(digest)};{nar_size};{refs}"


def render_narinfo(
    *,
    store_path: str,
    store_path_hash: str,
    nar_hash: str,
    nar_size: int,
    references: Sequence[str],
    deriver: str | None,
    ca: str | None,
    keypair: Keypair,
) -> str:
    """The narinfo atticd serves (§9.2): hex NarHash, References always, server-only Sig."""
    sig = keypair.sign(
        fingerprint(
            store_path=store_path, nar_hash=nar_hash, nar_size=nar_size, references=references
        ).encode()
    )
    lines = [
        f"StorePath: {store_path}",
        f"URL: nar/{store_path_hash}.nar",
        "Compression: none",
        f"NarHash: {parse_attic_hash(nar_hash)}",
        f"NarSize: {nar_size}",
        f"References: {' '.join(references)}",
    ]
    if deriver:
        lines.append(f"Deriver: {deriver}")
    lines.append(f"Sig: {sig}")
    if ca:
        lines.append(f"CA: {ca}")
    return "".join(line + "\n" for line in lines)


# --- tokens and permissions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """A verified token: its subject and its ``caches`` patterns in claim order."""

    sub: str | None
    caches: tuple[tuple[str, frozenset[str]], ...]

    def permissions_for(self, cache: str) -> frozenset[str]:
        """Exact pattern first, else the first matching wildcard pattern, else nothing."""
        for pattern, letters in self.caches:
            if pattern == cache:
                return letters
        for pattern, letters in self.caches:
            if fnmatch.fnmatchcase(cache, pattern):
                return letters
        return frozenset()


def letters_of(spec: str | Sequence[str]) -> frozenset[str]:
    """Attic permission letters from ``"rw"`` (single letters), ``"cc"`` (one permission),
    ``"r,w,cc"`` (comma-separated) or ``["r", "cc"]``."""
    if isinstance(spec, str):
        if "," in spec:
            letters = frozenset(p.strip() for p in spec.split(","))
        elif spec in PERMISSION_LETTERS:
            letters = frozenset({spec})
        else:
            letters = frozenset(spec)
    else:
        letters = frozenset(spec)
    unknown = letters - set(PERMISSION_LETTERS)
    if unknown:
        raise ValueError(
            f"unknown attic permission letter(s) {sorted(unknown)}; use {PERMISSION_LETTERS}"
        )
    return letters


def _parse_caches(claim: object) -> tuple[tuple[str, frozenset[str]], ...] | None:
    if not isinstance(claim, dict) or not isinstance(claim.get("caches"), dict):
        return None
    result = []
    for pattern, perms in claim["caches"].items():
        if not CACHE_PATTERN_RE.match(pattern) or not isinstance(perms, dict):
            return None
        letters = set()
        for letter in PERMISSION_LETTERS:
            value = perms.get(letter, 0)
            # serde_with BoolFromInt: only the integers 0 and 1; JSON true fails the token.
            if type(value) is not int or value not in (0, 1):
                return None
            if value:
                letters.add(letter)
        result.append((pattern, frozenset(letters)))
    return tuple(result)


def verify_token(
    token: str, secret: bytes, *, rs256_public_pem: bytes | None = None
) -> Grant | None:
    """HS256 JWT with the attic claim → Grant; anything wrong → None (the caller is anonymous).

    With ``rs256_public_pem``, only RS256 tokens verified with that key count (atticd's
    ``token-rs256-*`` settings replace HS256). PyJWT checks ``exp``, ``nbf`` and a future
    ``iat`` with no leeway, like attic's verifier.
    """
    key, algorithm = (secret, "HS256") if rs256_public_pem is None else (rs256_public_pem, "RS256")
    try:
        claims = jwt.decode(token, key, algorithms=[algorithm], options={"verify_aud": False})
    except jwt.PyJWTError:
        return None
    caches = _parse_caches(claims.get(CLAIM_NAMESPACE))
    if caches is None:
        return None
    sub = claims.get("sub")
    return Grant(sub=sub if isinstance(sub, str) else None, caches=caches)


def token_from_authorization(header: str | None) -> tuple[str | None, str | None]:
    """``Authorization`` → (scheme in lower case, token). Basic takes the text after the first
    colon of the decoded pair; without a colon there is no token."""
    if header is None:
        return None, None
    match = _AUTH_RE.match(header)
    if match is None:
        return None, None
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "bearer":
        return scheme, rest
    try:
        decoded = base64.b64decode(rest, validate=True).decode()
    except ValueError:
        return scheme, None
    if ":" not in decoded:
        return scheme, None
    return scheme, decoded.split(":", 1)[1]


def make_claims(
    perms: Mapping[str, str | Sequence[str]], *, sub: str, now: int, valid_for: int
) -> dict[str, Any]:
    """The claims ``atticadm make-token`` writes: sub, exp, nbf (= now) and the attic claim."""
    caches = {
        pattern: {letter: 1 for letter in sorted(letters_of(spec))}
        for pattern, spec in perms.items()
    }
    return {
        "sub": sub,
        "exp": now + valid_for,
        "nbf": now,
        CLAIM_NAMESPACE: {"caches": caches},
    }


def valid_reference(value: object) -> bool:
    return isinstance(value, str) and bool(BASE_NAME_RE.match(value))
