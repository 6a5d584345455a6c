"""Keeping NAR chunk buffers in the heap: glibc's allocator told not to hand them back.

Every NAR chunk is a fresh bytes object of about ``CHUNK_SIZE`` (an ``os.read`` result), and
every upload worker makes and frees one after another. glibc serves an allocation of at least
``M_MMAP_THRESHOLD`` bytes with its own ``mmap`` and returns free memory above
``M_TRIM_THRESHOLD`` at the top of a heap to the kernel; both thresholds adapt to the last large
block freed (glibc malloc/malloc.c, "mmap_threshold" and "trim_threshold" in ``free``), and
chunks of slightly varying size keep missing them. The next chunk then faults in and zero-fills
fresh pages: a quarter of an upload worker's CPU, measured with ``perf`` in the overlap benchmark
(docs/benchmarks.md). Fixed thresholds well above the chunk size keep that memory in the heap,
where the next chunk reuses it; the heap keeps at most ``TRIM_THRESHOLD`` of free memory per
arena. Process-wide and once: the user's command and other processes are not affected (the
settings do not survive ``exec``).
"""

from __future__ import annotations

import functools
import os

from nix_job.nix.nar import CHUNK_SIZE

# Parameter numbers from glibc's malloc/malloc.h (stable ABI since glibc 2.0).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks smaller than this come from the heap: a NAR chunk with its framing, and room to spare.
MMAP_THRESHOLD = 4 * CHUNK_SIZE
#: Free memory a heap may keep at its top: the chunks of a few uploads in flight.
TRIM_THRESHOLD = 16 * CHUNK_SIZE


@functools.cache
def keep_chunk_buffers() -> bool:
    """Set the thresholds once per process; True when glibc took them.

    False, and nothing changed, on another C library (musl's ``mallopt`` is a no-op, macOS has
    none): uploads work the same, with the page faults. Two threads calling it at once may
    both set the thresholds, to the same values.
    """
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc "):
            return False
    except (ValueError, OSError):  # the name is unknown where the C library is not glibc
        return False
    import ctypes  # noqa: PLC0415 - 3 ms of import that a run without uploads never pays

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a rejected value.
    mapped: int = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trimmed: int = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return mapped == 1 and trimmed == 1
