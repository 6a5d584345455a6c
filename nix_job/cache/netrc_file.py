"""The temporary netrc on disk: private (0600 from creation) and atomic writes, and removal.

The text itself (parse, merge, render) is ``nix_job.cache.netrc``, which does no I/O.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nix_job.cache import netrc
from nix_job.core.errors import DOCS_URL
from nix_job.core.problem import Problem
from nix_job.core.secret import Secret

_TITLE_READS = "nix-job: cache reads limited"
_HINT_CONFIGURE = DOCS_URL + "reading-from-the-cache"


def read_text(path: Path) -> str:
    """Read a netrc as text, keeping undecodable bytes (they are written back unchanged)."""
    return path.read_bytes().decode("utf-8", errors="surrogateescape")


def write_private(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path`` with mode 0600, whatever the umask.

    The data goes to a new file in the same directory, created with ``O_EXCL`` and mode 0600
    (the umask can only remove bits), then ``fchmod`` to exactly 0600, fsync, and
    ``os.replace``: no reader ever sees a partial file or a wider mode. A symlink at ``path``
    is replaced, never followed.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            data = text.encode("utf-8", errors="surrogateescape")
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        remove_quietly(temp)
        raise
    with contextlib.suppress(OSError):  # durability of the rename; not all filesystems allow it
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_quietly(path: Path) -> bool:
    """Delete ``path`` if it exists. Returns True when it is gone afterwards."""
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.lexists(path)
    return True


# ---------------------------------------------------------------------------------------------
# The temporary netrc (the only I/O here).


@dataclass(frozen=True, slots=True, kw_only=True)
class TempNetrc:
    """A private netrc in its own private directory; ``cleanup`` deletes both (idempotent)."""

    path: Path
    directory: Path

    def cleanup(self) -> Problem | None:
        """Delete the file and its directory. A problem when the file survived."""
        remove_quietly(self.path)
        shutil.rmtree(self.directory, ignore_errors=True)
        if not os.path.lexists(self.path):
            return None
        return Problem.warning(
            "nix-job: temporary netrc",
            f"Could not delete the temporary netrc {self.path}; it holds the Attic token "
            "(mode 0600). Delete it by hand (the runner's temporary directory is emptied at the "
            "end of the job on hosted runners, not always on self-hosted ones).",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NetrcWrite:
    file: TempNetrc
    problems: tuple[Problem, ...]


def write_temp_netrc(*, host: str, token: Secret, base_netrc: Path, temp_root: Path) -> NetrcWrite:
    """Write ``<temp_root>/nix-job-<random>/netrc``: the netrc Nix would otherwise use
    (``base_netrc``; missing or unreadable means empty) with one entry for ``host`` replaced or
    added, so other hosts' credentials keep working. Mode 0600 from creation, atomic.

    Raises OSError when the file cannot be written, ValueError when the token or host cannot be
    written as a netrc word (the message never contains the token).
    """
    problems: list[Problem] = []
    try:
        existing = read_text(base_netrc)
    except FileNotFoundError:
        existing = ""
    except OSError as error:
        existing = ""
        problems.append(
            Problem.notice(
                _TITLE_READS,
                f"Could not read the existing netrc {base_netrc} ({error.strerror}); the "
                "temporary netrc holds only the Attic entry, so credentials for other hosts in "
                "it are not used during this run.",
                _HINT_CONFIGURE,
            )
        )
    # SECURITY: the token reaches Nix only through this 0600 file (zhaofengli/attic#243).
    merged = netrc.render(netrc.merge(netrc.parse(existing), host=host, password=token.reveal()))
    directory = Path(tempfile.mkdtemp(prefix="nix-job-", dir=temp_root))  # mode 0700
    file = TempNetrc(path=directory / "netrc", directory=directory)
    try:
        write_private(file.path, merged)
    except BaseException:
        file.cleanup()
        raise
    return NetrcWrite(file=file, problems=tuple(problems))


def rewrite_password(file: TempNetrc, *, host: str, token: Secret) -> None:
    """Put ``token`` in ``host``'s entry of the temporary netrc (a renewed token), keeping every
    other entry: atomically and 0600 (``write_private``), so Nix, which reads the file on each
    download, sees the old file or the new one, never a mix. Raises OSError, FileNotFoundError
    included: a netrc already removed is never written again."""
    text = read_text(file.path)
    merged = netrc.render(netrc.merge(netrc.parse(text), host=host, password=token.reveal()))
    write_private(file.path, merged)
