"""Every Nix CLI call the push path makes: path info, closure, validity, NAR streams.

The JSON shapes are read by ``nix_job.nix.path_info`` (pure). Argv lists only; no shell, no
secrets.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import (
    BASE_NAME_RE,
    STORE_DIR,
)
from nix_job.nix.path_info import PathInfo, parse_path_info_json

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
