"""Nix hash and store-path text formats: nix-base32, SRI, hex; store path names. Pure.

Attic accepts NAR hashes only as ``sha256:<64 hex>`` (or 52 nix32), never SRI; Nix prints SRI,
nix32 or hex depending on the command and version. Everything is normalised here, in one place.
"""

from __future__ import annotations

import base64
import binascii
import re

#: The store directory of every standard Nix installation (the `store-dir` default).
STORE_DIR = "/nix/store"

NIX32_ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_NIX32_INDEX = {c: i for i, c in enumerate(NIX32_ALPHABET)}

STORE_HASH_RE = re.compile(r"^[0123456789abcdfghijklmnpqrsvwxyz]{32}$")
BASE_NAME_RE = re.compile(r"^[0123456789abcdfghijklmnpqrsvwxyz]{32}-[A-Za-z0-9+\-._?=]+$")


def nix32_encode(data: bytes) -> str:
    """Encode bytes as nix-base32 (little-endian number, most significant 5-bit group first)."""
    length = (len(data) * 8 + 4) // 5
    out = []
    for n in range(length - 1, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        out.append(NIX32_ALPHABET[c & 0x1F])
    return "".join(out)


def nix32_decode(text: str) -> bytes:
    """Decode nix-base32; raises ValueError on a bad character or a non-canonical string."""
    size = len(text) * 5 // 8
    out = bytearray(size)
    for n, ch in enumerate(reversed(text)):
        digit = _NIX32_INDEX.get(ch)
        if digit is None:
            raise ValueError(f"invalid nix-base32 character {ch!r}")
        b = n * 5
        i, j = divmod(b, 8)
        if i < size:
            out[i] |= (digit << j) & 0xFF
        carry = digit >> (8 - j)
        if i + 1 < size:
            out[i + 1] |= carry
        elif carry:
            raise ValueError("nix-base32 string has excess bits")
    return bytes(out)


def to_attic_sha256(value: object) -> str:
    """Normalise any NAR hash form Nix prints to ``sha256:<64 lowercase hex>``.

    Accepts SRI ``sha256-<base64>``, ``sha256:<52 nix32>``, ``sha256:<64 hex>``, bare 64 hex
    or 52 nix32, and the structured ``{"algorithm": "sha256", "hash": ...}`` form of Nix >= 2.33
    (its ``hash`` in any of the text forms above, or ``format`` naming one). Raises ValueError.
    """
    if isinstance(value, dict):
        algo = value.get("algorithm", value.get("algo", "sha256"))
        if algo != "sha256":
            raise ValueError(f"unsupported hash algorithm {algo!r}")
        inner = value.get("hash")
        if not isinstance(inner, str):
            raise ValueError("structured hash without a 'hash' string")
        fmt = value.get("format")
        if fmt == "base64":
            return to_attic_sha256("sha256-" + inner)
        return to_attic_sha256(inner if ":" in inner or "-" in inner else "sha256:" + inner)
    if not isinstance(value, str):
        raise ValueError(f"hash must be a string, not {type(value).__name__}")
    text = value.strip()
    if text.startswith("sha256-"):
        try:
            raw = base64.b64decode(text[len("sha256-") :], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64 in SRI hash {text!r}") from exc
        return _hex32(raw, text)
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    elif ":" in text or "-" in text:
        raise ValueError(f"unsupported hash {value!r}: only sha256 exists in Nix stores")
    if len(text) == 64 and re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return "sha256:" + text.lower()
    if len(text) == 52:
        return _hex32(nix32_decode(text), value)
    raise ValueError(f"unrecognised sha256 hash {value!r}")


def _hex32(raw: bytes, original: str) -> str:
    if len(raw) != 32:
        raise ValueError(f"sha256 hash {original!r} does not hold 32 bytes")
    return "sha256:" + raw.hex()


def base_name(path: str, store_dir: str = STORE_DIR) -> str:
    """``/nix/store/<hash>-<name>[/sub]`` or a base name → ``<hash>-<name>``; ValueError if not."""
    prefix = store_dir.rstrip("/") + "/"
    name = path[len(prefix) :] if path.startswith(prefix) else path
    name = name.split("/", 1)[0]
    if not BASE_NAME_RE.match(name):
        raise ValueError(f"not a store path: {path!r}")
    return name


def hash_part(path: str, store_dir: str = STORE_DIR) -> str:
    """The 32-character hash of a store path or base name."""
    return base_name(path, store_dir)[:32]
