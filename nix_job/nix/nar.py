"""NARs written in-process from a file tree, and the hash check no NAR stream may skip.

Owns the NAR byte format. Must not talk to Nix, assume where the store is (callers map logical
store paths to physical ones), or hold whole files or NARs in memory.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import os
import stat
import struct
from collections.abc import Generator, Iterable, Iterator

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import to_attic_sha256

#: Target size of the chunks ``nar_chunks`` yields, and of its reads of large files.
CHUNK_SIZE = 1024 * 1024

# --- the NAR byte format ------------------------------------------------------------------------
# Facts from NixOS/nix at tag 2.8.0, src/libutil/archive.cc (dump, dumpContents) and
# src/libutil/serialise.cc (writeString, writePadding); the same in later versions' archive.cc:
# - a string is its length as a u64 little-endian, its bytes, then zero bytes up to a multiple of 8;
# - an integer (a file's size) is a bare u64 little-endian;
# - an archive is the string "nix-archive-1" followed by one node;
# - a node is "(" "type" <regular|symlink|directory> … ")":
#     regular:   ["executable" ""] "contents" <u64 size> <bytes> <padding>; "executable" is written
#                when the owner-execute bit (S_IXUSR) is set, whatever the other bits say;
#     symlink:   "target" <target>;
#     directory: per entry, "entry" "(" "name" <name> "node" <node> ")", entries sorted by name as
#                a std::map<std::string> sorts: bytewise, unsigned (Python's bytes order);
# - nodes come from lstat: symlinks are never followed, not even the top-level path;
# - any other file type (FIFO, socket, device) makes the dump fail ("unsupported type").

_U64 = struct.Struct("<Q").pack
_PADDING = tuple(b"\0" * n for n in range(8))


def _string(data: bytes) -> bytes:
    """One NAR string: length, bytes, zero padding to a multiple of 8."""
    return _U64(len(data)) + data + _PADDING[-len(data) % 8]


_MAGIC = _string(b"nix-archive-1")
_OPEN = _string(b"(")
_CLOSE = _string(b")")
_TYPE = _string(b"type")
_REGULAR = _OPEN + _TYPE + _string(b"regular")
_CONTENTS = _string(b"contents")
_REGULAR_HEAD = (
    _REGULAR + _CONTENTS,
    _REGULAR + _string(b"executable") + _string(b"") + _CONTENTS,
)
_SYMLINK_HEAD = _OPEN + _TYPE + _string(b"symlink") + _string(b"target")
_DIRECTORY_HEAD = _OPEN + _TYPE + _string(b"directory")
_ENTRY_HEAD = _string(b"entry") + _OPEN + _string(b"name")
_NODE = _string(b"node")

# O_NOFOLLOW and O_NONBLOCK: if a regular file is swapped for a symlink or a FIFO between our
# lstat and open, fail (ELOOP) or read nothing (a size error) instead of following or blocking.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


# --- errors -------------------------------------------------------------------------------------


class NarError(StoreError):
    """A NAR could not be produced or did not match what Nix registered.

    A StoreError, so code that handles a failed ``nix-store --dump`` handles this the same way.
    """

    title = "nix-job: NAR stream failed"


class NarReadError(NarError):
    """The tree cannot be serialised: a part vanished, is unreadable, has a type no NAR can hold,
    or changed size while being read. ``path`` is the offending file (display form); ``errno``
    is set when an OS call failed."""

    def __init__(self, message: str, *, path: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno


class NarMismatch(NarError):
    """A stream's sha256 or size differs from the registered ``narHash``/``narSize``.

    ``actual_hash`` is None when the stream ran past ``expected_size`` and was abandoned there
    (its hash is unknown and ``actual_size`` is then only a lower bound).
    """

    def __init__(
        self,
        message: str,
        *,
        expected_hash: str,
        expected_size: int,
        actual_hash: str | None,
        actual_size: int,
    ) -> None:
        super().__init__(message)
        self.expected_hash = expected_hash
        self.expected_size = expected_size
        self.actual_hash = actual_hash
        self.actual_size = actual_size


def _show(path: bytes) -> str:
    """A path for messages: UTF-8 where it is, backslash escapes where it is not."""
    return path.decode("utf-8", "backslashreplace")


def _os_error(root: bytes, path: bytes, action: str, exc: OSError) -> NarReadError:
    code = exc.errno
    name = errno_codes.errorcode.get(code, str(code)) if code is not None else "?"
    if code == errno_codes.ENOENT:
        advice = (
            "It vanished while its NAR was being written: deleted or garbage-collected meanwhile. "
            "If it is a store path, `nix-store --check-validity` tells whether it is still valid."
        )
    elif code in (errno_codes.EACCES, errno_codes.EPERM):
        advice = (
            "The NAR needs read access to every file below the path: run as a user who has "
            "it, or read the path through the Nix daemon with `nix store dump-path` "
            "(`nix-store --dump` reads the files itself, as this does)."
        )
    else:
        advice = (
            "The file system refused a read; if it is a store path, check it with "
            "`nix-store --verify-path`."
        )
    return NarReadError(
        f"Cannot write the NAR of {_show(root)!r}: {action} {_show(path)!r} failed: "
        f"{exc.strerror or exc} ({name}). {advice}",
        path=_show(path),
        errno=code,
    )


def _unsupported(root: bytes, path: bytes, mode: int) -> NarReadError:
    kinds = (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    )
    kind = next((k for test, k in kinds if test(mode)), f"file of mode {mode:#o}")
    return NarReadError(
        f"Cannot write the NAR of {_show(root)!r}: {_show(path)!r} is a {kind}, and a NAR holds "
        "only regular files, directories and symlinks (Nix refuses it too: `unsupported type`). "
        "A valid store path never contains one; remove it, or check the store path with "
        "`nix-store --verify-path`.",
        path=_show(path),
    )


def _size_changed(root: bytes, path: bytes, size: int, grew: bool) -> NarReadError:
    change = "grew past" if grew else "shrank below"
    return NarReadError(
        f"Cannot write the NAR of {_show(root)!r}: {_show(path)!r} {change} the {size} bytes "
        "lstat reported while it was being read, so the NAR (which states the size up front) "
        "would be wrong. Something is writing to it; store paths must not change once valid. "
        "Stop the writer and retry; if it is a store path, check it with "
        "`nix-store --verify-path`.",
        path=_show(path),
    )


# --- writing a NAR ------------------------------------------------------------------------------


def nar_chunks(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes], *, chunk_size: int = CHUNK_SIZE
) -> Generator[bytes, None, None]:
    """The NAR of a file, symlink or directory tree, streamed in chunks of about chunk_size bytes.

    Byte for byte what ``nix-store --dump path`` writes. Every chunk but the last holds at least
    ``chunk_size`` bytes, and at most ``chunk_size`` plus one entry's framing (a few KiB, plus
    32 bytes per directory that ends there); large files are read ``chunk_size`` at a time,
    many small files share one chunk. Memory is bounded by the chunk size and the name lists of
    the directories being walked. Nothing is read until the first chunk is asked for; failures
    raise ``NarReadError`` from the iterator, and closing it early closes any open file.

    The tree is read as it is: a file that changes size while being read raises, but a change
    that keeps sizes produces a different NAR — wrap the stream in ``verified`` before sending it.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return _nar(os.fsencode(path), chunk_size)


def _nar(root: bytes, chunk_size: int) -> Generator[bytes, None, None]:
    """The walk behind ``nar_chunks``: depth-first with an explicit stack (no recursion limit).

    Output accumulates in ``parts`` (``pending`` bytes) and leaves as one chunk once it reaches
    ``chunk_size``; a lone part, such as a full read of a large file, leaves without a copy.
    """
    parts: list[bytes] = [_MAGIC]
    pending = len(_MAGIC)
    # Open directories: (path, names not yet written, framing that closes the directory's node).
    stack: list[tuple[bytes, Iterator[bytes], bytes]] = []
    node, head, tail = root, b"", b""  # the next node, and what its framing is wrapped in
    action = "lstat of"
    try:
        while True:
            action = "lstat of"
            st = os.lstat(node)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                size = st.st_size
                parts.append(head + _REGULAR_HEAD[bool(mode & stat.S_IXUSR)] + _U64(size))
                pending += len(parts[-1])
                action = "reading"
                fd = os.open(node, _OPEN_FLAGS)
                try:
                    remaining = size
                    while True:
                        if pending >= chunk_size:
                            yield parts[0] if len(parts) == 1 else b"".join(parts)
                            parts, pending = [], 0
                        want = min(remaining, chunk_size - pending)
                        # The read that should finish the file asks for one byte more: getting
                        # it means the file grew after lstat, without a syscall of its own.
                        last = want == remaining
                        data = os.read(fd, want + 1 if last else want)
                        got = len(data)
                        if got > remaining:
                            raise _size_changed(root, node, size, grew=True)
                        if got == 0 and remaining:
                            raise _size_changed(root, node, size, grew=False)
                        if got:
                            parts.append(data)
                            pending += got
                            remaining -= got
                        if remaining == 0 and last:
                            break
                finally:
                    os.close(fd)
                parts.append(_PADDING[-size % 8] + _CLOSE + tail)
            elif stat.S_ISDIR(mode):
                action = "listing"
                names = sorted(os.listdir(node))
                parts.append(head + _DIRECTORY_HEAD)
                # rstrip: a root given as "dir/" (or "/") must not make "dir//name" paths.
                stack.append((node.rstrip(b"/"), iter(names), _CLOSE + tail))
            elif stat.S_ISLNK(mode):
                action = "readlink of"
                target = os.readlink(node)
                parts.append(head + _SYMLINK_HEAD + _string(target) + _CLOSE + tail)
            else:
                raise _unsupported(root, node, mode)
            pending += len(parts[-1])

            # The next node: the next name of the innermost open directory; finished
            # directories are closed on the way out.
            while stack:
                directory, names_left, closing = stack[-1]
                name = next(names_left, None)
                if name is not None:
                    node = directory + b"/" + name
                    head = _ENTRY_HEAD + _string(name) + _NODE
                    tail = _CLOSE  # closes the entry record
                    break
                stack.pop()
                parts.append(closing)
                pending += len(closing)
            else:
                break
            if pending >= chunk_size:
                yield parts[0] if len(parts) == 1 else b"".join(parts)
                parts, pending = [], 0
    except OSError as exc:
        raise _os_error(root, node, action, exc) from exc
    if parts:
        yield b"".join(parts)


# --- verifying a stream -------------------------------------------------------------------------


def verified(
    chunks: Iterable[bytes], *, nar_hash: str, nar_size: int, path: str | None = None
) -> Generator[bytes, None, None]:
    """Pass chunks through while hashing (sha256) and counting; never release an unverified end.

    An upload declares ``Content-Length: nar_size`` and must never send a NAR whose hash differs
    from the registered one, so: a chunk that would take the stream past ``nar_size`` raises
    ``NarMismatch`` before any of it is yielded; the last chunk is held back until the source is
    exhausted, and raises instead of being yielded when the size or the sha256 differ. Raising
    mid-stream aborts the request. Works on any source (``nar_chunks`` or ``nix-store --dump``);
    closing this iterator closes the source's if it has ``close``. ``nar_hash`` in any form
    ``nixhash.to_attic_sha256`` reads; ``path`` names the stream in messages.
    """
    expected_hash = to_attic_sha256(nar_hash)
    if nar_size < 0:
        raise ValueError(f"nar_size must not be negative, got {nar_size}")
    return _verified(
        iter(chunks),
        expected_hash=expected_hash,
        expected_size=nar_size,
        label=path or "a NAR stream",
    )


def _verified(
    source: Iterator[bytes], *, expected_hash: str, expected_size: int, label: str
) -> Generator[bytes, None, None]:
    digest = hashlib.sha256()
    seen = 0
    held: bytes | None = None  # received and hashed, not yet yielded
    try:
        for chunk in source:
            if not chunk:
                continue
            seen += len(chunk)
            if seen > expected_size:
                raise _mismatch(
                    label,
                    expected_hash,
                    expected_size,
                    actual_hash=None,
                    actual_size=seen,
                    released=seen - len(chunk) - (len(held) if held is not None else 0),
                )
            digest.update(chunk)
            if held is not None:
                yield held
            held = chunk
        actual_hash = "sha256:" + digest.hexdigest()
        if seen != expected_size or actual_hash != expected_hash:
            raise _mismatch(
                label,
                expected_hash,
                expected_size,
                actual_hash=actual_hash,
                actual_size=seen,
                released=seen - (len(held) if held is not None else 0),
            )
        if held is not None:
            yield held
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            close()


def _mismatch(
    label: str,
    expected_hash: str,
    expected_size: int,
    *,
    actual_hash: str | None,
    actual_size: int,
    released: int,
) -> NarMismatch:
    if actual_hash is None:
        found = f"it ran past the registered {expected_size} bytes"
    elif actual_size != expected_size:
        found = f"it has {actual_size} bytes, not the {expected_size} bytes registered"
    else:
        found = f"its hash is {actual_hash}, not the registered {expected_hash}"
    return NarMismatch(
        f"The NAR of {label} does not match what Nix registered: {found}. Its last bytes were "
        f"held back (only {released} of {expected_size} were passed on), so the upload is "
        "aborted rather than sending a wrong NAR. The path was modified after it was "
        "registered or the store is damaged: check it with `nix-store --verify-path` and "
        "repair it with `nix-store --repair-path`.",
        expected_hash=expected_hash,
        expected_size=expected_size,
        actual_hash=actual_hash,
        actual_size=actual_size,
    )
