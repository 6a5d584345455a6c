"""The Attic token of ``nix-job watch-store``: from ``ATTIC_TOKEN`` (fixed for the process's
life) or from a file that is re-read when it changes, so a token can be rotated without a
restart. No message ever holds the token or anything derived from it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from nix_job.core.secret import Secret

log = logging.getLogger(__name__)

#: An Attic JWT is about a kilobyte; a file much larger than this is the wrong file.
MAX_TOKEN_BYTES = 64 * 1024


class CredentialError(Exception):
    """The token file cannot be used; the message names the file, never its content."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Stamp:
    """What tells a changed file from the same one (a rename over it changes the inode)."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


def _looks_like_a_token(value: str) -> bool:
    """A JWT-like value (long, no directory separator) passed where a path belongs."""
    return "/" not in value and len(value) >= 40


def read_token_file(path: Path) -> Secret:
    """The token in ``path``, surrounding whitespace (a trailing newline) trimmed."""
    if _looks_like_a_token(str(path)) and not path.exists():
        # SECURITY: never echo it; it is probably the token itself.
        raise CredentialError(
            "the --token-file value is not a path but looks like a token itself; write the "
            "token into a file readable by the service and pass that file's path"
        )
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_TOKEN_BYTES + 1)
    except IsADirectoryError:
        raise CredentialError(f"--token-file {path} is a directory, not a file") from None
    except OSError as exc:
        raise CredentialError(
            f"--token-file {path} cannot be read ({exc.strerror or exc}); check the path and "
            "that the service's user may read it (under systemd, LoadCredential= makes it so)"
        ) from exc
    if len(data) > MAX_TOKEN_BYTES:
        raise CredentialError(
            f"--token-file {path} holds more than {MAX_TOKEN_BYTES} bytes; an Attic token is "
            "about one kilobyte: is it the right file?"
        )
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"--token-file {path} is not UTF-8 text") from None
    if not text:
        raise CredentialError(f"--token-file {path} is empty; write the Attic token into it")
    if any(c.isspace() for c in text):
        raise CredentialError(
            f"--token-file {path} holds more than one word; it must hold the token alone"
        )
    return Secret(text)


class Credential:
    """The current token. ``refresh()`` (cheap: one ``stat``) re-reads a changed file.

    A file that cannot be read while the service runs (being rewritten in place, briefly
    removed) keeps the previous token and is logged once until it is readable again.
    """

    def __init__(self, *, token: Secret, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._token = token
        self._version = 1
        self._stamp = self._stat() if path is not None else None
        self._unreadable = False
        self._seen: list[Secret] = [token]

    @classmethod
    def from_file(cls, path: Path) -> Credential:
        return cls(token=read_token_file(path), path=path)

    @property
    def source(self) -> str:
        return str(self.path) if self.path is not None else "ATTIC_TOKEN"

    def current(self) -> tuple[Secret, int]:
        """The token and its version (which grows by one with each new token)."""
        with self._lock:
            return self._token, self._version

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def seen(self) -> tuple[Secret, ...]:
        """Every token this process has held (to keep them all out of the log)."""
        with self._lock:
            return tuple(self._seen)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when that gave a new token."""
        if self.path is None:
            return False
        stamp = self._stat()
        with self._lock:
            if stamp is not None and stamp == self._stamp and not self._unreadable:
                return False
        try:
            token = read_token_file(self.path) if stamp is not None else None
        except CredentialError as exc:
            token = None
            reason = str(exc)
        else:
            reason = f"--token-file {self.path} is missing"
        with self._lock:
            if token is None:
                if not self._unreadable:
                    log.warning("%s; keeping the previous token until it is readable", reason)
                self._unreadable = True
                return False
            self._unreadable = False
            self._stamp = stamp
            if token == self._token:
                return False
            self._token = token
            self._version += 1
            self._seen.append(token)
            return True

    def _stat(self) -> _Stamp | None:
        assert self.path is not None  # noqa: S101 - only called for file tokens
        try:
            st = os.stat(self.path)  # follows symlinks: a swapped link target is a change
        except OSError:
            return None
        return _Stamp(
            ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns
        )
