"""Store path metadata as Attic needs it, read from every shape of ``nix path-info --json``
(Nix 2.8 list, 2.19+ object, 2.33+ versioned envelope) and normalised to ``PathInfo``. Pure."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import STORE_DIR, base_name, hash_part, nix32_decode, nix32_encode
from nix_job.core.nixhash import to_attic_sha256 as _to_attic_sha256

_DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
_CA_PREFIX = {"nar": "fixed:r:", "flat": "fixed:", "text": "text:", "git": "fixed:git:"}


@dataclass(frozen=True, slots=True, kw_only=True)
class PathInfo:
    """What Attic needs to know about one valid store path."""

    path: str  # /nix/store/<hash>-<name>
    nar_hash: str  # always "sha256:<64 hex>"
    nar_size: int
    references: tuple[str, ...]  # base names, self-reference kept
    deriver: str | None = None  # base name
    sigs: tuple[str, ...] = ()
    ca: str | None = None  # rendered content address, e.g. "fixed:r:sha256:<nix32>"

    @property
    def hash(self) -> str:
        """The 32-character store path hash (what get-missing-paths speaks)."""
        return hash_part(self.path.rsplit("/", 1)[-1])

    @property
    def sig_key_names(self) -> frozenset[str]:
        """Names of the keys that signed this path (the text before the first ``:``)."""
        return frozenset(s.split(":", 1)[0] for s in self.sigs if ":" in s)


# --- parsing `nix path-info --json` -------------------------------------------------------------


def parse_path_info_json(text: str | bytes, store_dir: str = STORE_DIR) -> dict[str, PathInfo]:
    """Parse any known shape of ``nix path-info --json`` into ``{full path: PathInfo}``.

    Shapes: a list of objects with ``path`` (Nix 2.8 to 2.18; invalid paths as
    ``{"path": …, "valid": false}``); an object keyed by full path (2.19+, invalid paths as
    ``null``); the versioned envelope ``{"version", "storeDir", "info": {base name: …}}`` of
    newer Nix with structured hashes, structured ``ca`` and ``{keyName, sig}`` signatures.
    Invalid paths are left out. Raises StoreError on anything else.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StoreError(
            f"`nix path-info --json` printed something that is not JSON ({exc}). "
            "Check that `nix` on PATH is a working Nix; report this with `nix --version`."
        ) from exc
    entries: Iterable[tuple[str | None, Any]]
    if isinstance(data, list):
        entries = [(None, item) for item in data]
    elif isinstance(data, dict) and isinstance(data.get("info"), dict) and "version" in data:
        store_dir = str(data.get("storeDir") or store_dir)
        entries = data["info"].items()
    elif isinstance(data, dict):
        entries = data.items()
    else:
        raise _shape_error(f"top level is {type(data).__name__}")
    infos: dict[str, PathInfo] = {}
    for key, obj in entries:
        info = _parse_entry(key, obj, store_dir)
        if info is not None:
            infos[info.path] = info
    return infos


def _parse_entry(key: str | None, obj: Any, store_dir: str) -> PathInfo | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise _shape_error(f"entry {key!r} is {type(obj).__name__}, not an object")
    if obj.get("valid") is False:
        return None
    entry_dir = str(obj.get("storeDir") or store_dir).rstrip("/")
    raw_path = obj.get("path", key)
    try:
        path = f"{entry_dir}/{base_name(str(raw_path), entry_dir)}"
        deriver = obj.get("deriver")
        return PathInfo(
            path=path,
            nar_hash=_to_attic_sha256(obj["narHash"]),
            nar_size=_size(obj["narSize"]),
            references=tuple(base_name(str(r), entry_dir) for r in obj.get("references") or ()),
            deriver=base_name(str(deriver), entry_dir) if deriver else None,
            sigs=tuple(_render_sig(s) for s in obj.get("signatures") or obj.get("sigs") or ()),
            ca=_render_ca(obj.get("ca")),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise _shape_error(f"entry for {raw_path!r}: {exc!r}") from exc


def _size(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"narSize {value!r} is not a size")
    return value


def _shape_error(detail: str) -> StoreError:
    return StoreError(
        f"`nix path-info --json` printed a shape nix-job cannot read ({detail}). "
        "This Nix version may have changed its JSON format again; report it with `nix --version`."
    )


def _render_sig(sig: Any) -> str:
    if isinstance(sig, str):
        return sig
    if isinstance(sig, dict) and isinstance(sig.get("keyName"), str):
        return f"{sig['keyName']}:{sig['sig']}"
    raise ValueError(f"unreadable signature {sig!r}")


def _render_ca(ca: Any) -> str | None:
    """Content address in the text form narinfo ``CA:`` lines use (what Attic stores)."""
    if ca is None or ca == "":
        return None
    if isinstance(ca, str):
        return ca
    if isinstance(ca, dict) and ca.get("method") in _CA_PREFIX:
        return _CA_PREFIX[ca["method"]] + _render_any_hash(ca["hash"])
    raise ValueError(f"unreadable content address {ca!r}")


def _render_any_hash(value: Any) -> str:
    """Any hash form (SRI, ``algo:…``, structured) → ``algo:<nix32>``, as Nix renders CAs."""
    if isinstance(value, dict):
        algo = str(value.get("algorithm", ""))
        text = str(value.get("hash", ""))
        if value.get("format") == "base64":
            return _render_any_hash(f"{algo}-{text}")
        return _render_any_hash(text if ":" in text or "-" in text else f"{algo}:{text}")
    if not isinstance(value, str):
        raise ValueError(f"unreadable hash {value!r}")
    algo, sep, digest = value.partition(":")
    if not sep:
        algo, sep, digest = value.partition("-")
        if not sep or algo not in _DIGEST_SIZES:
            raise ValueError(f"unreadable hash {value!r}")
        try:
            raw = base64.b64decode(digest, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64 in hash {value!r}") from exc
    else:
        raw = _decode_digest(algo, digest)
    if algo not in _DIGEST_SIZES or len(raw) != _DIGEST_SIZES[algo]:
        raise ValueError(f"hash {value!r} has the wrong length for {algo or 'its algorithm'}")
    return f"{algo}:{nix32_encode(raw)}"


def _decode_digest(algo: str, digest: str) -> bytes:
    size = _DIGEST_SIZES.get(algo)
    if size is None:
        raise ValueError(f"unknown hash algorithm {algo!r}")
    if len(digest) == 2 * size:
        return bytes.fromhex(digest)
    if len(digest) == (size * 8 + 4) // 5:
        return nix32_decode(digest)
    return base64.b64decode(digest, validate=True)
