"""Every Nix CLI call the push path makes: path info, closure, validity, NAR streams.

Owns the shapes of ``nix path-info --json`` across Nix versions (2.8 list, 2.19+ object, 2.33+
versioned envelope) and normalises them to ``PathInfo``. Argv lists only; no shell, no secrets.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import shlex
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import (
    BASE_NAME_RE,
    STORE_DIR,
    base_name,
    hash_part,
    nix32_decode,
    nix32_encode,
)
from nix_job.core.nixhash import to_attic_sha256 as _to_attic_sha256

log = logging.getLogger(__name__)

#: Paths per CLI call: 4000 store paths of at most 256 bytes are 1 MiB of argv, half of
#: Linux's usual ARG_MAX (2 MiB); typical paths are about 100 bytes. Each call costs a Nix
#: start-up (tens of ms), so fewer, bigger calls (docs/benchmarks.md, warm cache).
ARGV_BATCH = 4000
#: Bytes per NAR chunk read from ``nix-store --dump``; what is in memory per upload.
DUMP_CHUNK = 256 * 1024
#: A query that takes longer than this is treated as a hung Nix.
QUERY_TIMEOUT_S = 600.0
_STDERR_TAIL = 2000
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


# --- the store adapter --------------------------------------------------------------------------


class NixStore:
    """The Nix store as the pusher sees it, through ``nix-store`` and ``nix`` subprocesses.

    ``env`` is the complete environment for Nix (``NIX_CONFIG``, ``NIX_REMOTE``, ``PATH``…;
    ``None`` inherits ours) and must not carry the Attic token. ``store_dir`` is the logical
    store directory; ``nix_bin_dir`` pins the binaries, otherwise they come from ``PATH``.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        store_dir: str = STORE_DIR,
        nix_bin_dir: Path | None = None,
    ) -> None:
        self._env = dict(env) if env is not None else None
        self.store_dir = store_dir.rstrip("/")
        self._nix_store = str(nix_bin_dir / "nix-store") if nix_bin_dir else "nix-store"
        self._nix = str(nix_bin_dir / "nix") if nix_bin_dir else "nix"

    # Queries -------------------------------------------------------------------------------

    def valid(self, paths: Iterable[str]) -> set[str]:
        """The subset of ``paths`` Nix holds as valid. Non-store paths are simply not valid."""
        candidates = self._store_paths(paths)
        valid: set[str] = set()
        for chunk in _chunks(candidates):
            out = self._run([self._nix_store, "--check-validity", "--print-invalid", *chunk])
            invalid = set(out.split())
            valid.update(p for p in chunk if p not in invalid)
        return valid

    def closure(self, paths: Iterable[str]) -> list[str]:
        """Closure of the valid roots (invalid roots skipped), dependencies before dependents.

        Roots are usually all valid (the watcher checked them, outputs were just built), so
        ``--requisites`` is asked directly: one Nix call per batch. Only when it fails (a root
        is invalid) are the valid roots sorted out first.
        """
        roots = self._store_paths(paths)
        if not roots:
            return []
        try:
            return self._requisites(roots)
        except StoreError:
            pass
        try:
            return self._requisites(self.valid(roots))
        except StoreError:
            # A root may have been garbage-collected between the two calls: look once more.
            return self._requisites(self.valid(roots))

    def _requisites(self, roots: Iterable[str]) -> list[str]:
        seen: dict[str, None] = {}
        for chunk in _chunks(sorted(roots)):
            out = self._run([self._nix_store, "--query", "--requisites", *chunk])
            seen.update(dict.fromkeys(out.split()))
        return list(seen)

    def query_infos(self, paths: Iterable[str]) -> dict[str, PathInfo]:
        """Path info for every valid path given; invalid or collected paths are left out."""
        candidates = self._store_paths(paths)
        infos: dict[str, PathInfo] = {}
        for chunk in _chunks(candidates):
            out = self._run(
                [
                    self._nix,
                    "--extra-experimental-features",
                    "nix-command",
                    "path-info",
                    "--json",
                    *chunk,
                ]
            )
            infos.update(parse_path_info_json(out, self.store_dir))
        wanted = set(candidates)
        return {p: i for p, i in infos.items() if p in wanted}

    # NAR streams ---------------------------------------------------------------------------

    @contextmanager
    def dump(self, path: str) -> Iterator[Iterator[bytes]]:
        """Stream the NAR of ``path`` from ``nix-store --dump`` in chunks of ``DUMP_CHUNK``.

        The NAR is never whole in memory. Leaving the block early kills the process; a dump
        that fails raises StoreError (with the stderr tail) from the iterator, after its
        last chunk.
        """
        argv = [self._nix_store, "--dump", path]
        with tempfile.TemporaryFile() as stderr:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    stdin=subprocess.DEVNULL,
                    env=self._env,
                )
            except OSError as exc:
                raise self._spawn_error(argv, exc) from exc
            try:
                yield _read_dump(proc, argv, stderr)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()

    # Helpers -------------------------------------------------------------------------------

    def _store_paths(self, paths: Iterable[str]) -> list[str]:
        """Well-formed top-level store paths, in order, without duplicates."""
        prefix = self.store_dir + "/"
        out: dict[str, None] = {}
        for p in paths:
            if p.startswith(prefix) and BASE_NAME_RE.match(p[len(prefix) :]):
                out[p] = None
        return list(out)

    def _run(self, argv: list[str]) -> str:
        log.debug("running %s", shlex.join(argv))
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                env=self._env,
                timeout=QUERY_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StoreError(
                f"`{_short(argv)}` did not finish within {QUERY_TIMEOUT_S:.0f} s. "
                "Nix may be waiting for a lock held by another process or a busy daemon."
            ) from exc
        except OSError as exc:
            raise self._spawn_error(argv, exc) from exc
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-_STDERR_TAIL:].strip()
            raise StoreError(
                f"`{_short(argv)}` failed with exit code {done.returncode}: "
                f"{tail or '(no output)'}\n"
                "Check that the Nix store is usable (`nix-store --verify`)."
            )
        return done.stdout.decode()

    def _spawn_error(self, argv: list[str], exc: OSError) -> StoreError:
        path = (self._env or {}).get("PATH", "(this process's)")
        return StoreError(
            f"could not start `{argv[0]}`: {exc}. Nix must be installed and on PATH "
            f"(PATH={path!r}), or its bin directory passed as `nix_bin_dir`."
        )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), ARGV_BATCH):
        yield items[start : start + ARGV_BATCH]


def _short(argv: list[str]) -> str:
    """The command line for messages, with long path lists cut."""
    shown = argv if len(argv) <= 8 else [*argv[:8], f"… ({len(argv) - 8} more)"]
    return shlex.join(shown)


def _read_dump(
    proc: subprocess.Popen[bytes], argv: list[str], stderr: IO[bytes]
) -> Iterator[bytes]:
    stdout = proc.stdout
    if stdout is None:  # pragma: no cover - Popen was given stdout=PIPE
        raise StoreError(f"`{shlex.join(argv)}` has no output pipe; this is a nix-job bug.")
    while chunk := stdout.read(DUMP_CHUNK):
        yield chunk
    code = proc.wait()
    if code != 0:
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace")[-_STDERR_TAIL:].strip()
        raise StoreError(
            f"`{shlex.join(argv)}` failed with exit code {code}: {tail or '(no output)'}\n"
            "The path may have been garbage-collected or the store is damaged; "
            f"check it with `nix-store --verify-path {argv[-1]}`."
        )
