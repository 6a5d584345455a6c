"""nix_job.nix.allocator keeps NAR-chunk-sized blocks in glibc's heap instead of mapping each
one afresh, and leaves larger blocks to mmap."""

from __future__ import annotations

import ctypes
import os

import pytest

from nix_job.nix import allocator
from nix_job.nix.nar import CHUNK_SIZE


def _glibc_version() -> tuple[int, int] | None:
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    if not name.startswith("glibc "):
        return None
    major, minor = name.split()[1].split(".")[:2]
    return int(major), int(minor)


class _Mallinfo2(ctypes.Structure):
    # glibc malloc/malloc.h, struct mallinfo2 (glibc 2.33+): ten size_t counters.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mapped_blocks() -> int:
    """How many blocks glibc has mapped with mmap of their own right now."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _Mallinfo2
    return int(mallinfo2().hblks)


needs_glibc = pytest.mark.skipif(
    (_glibc_version() or (0, 0)) < (2, 33), reason="mallinfo2 needs glibc 2.33 or later"
)


def _mapped_while_holding(size: int) -> int:
    before = _mapped_blocks()
    block = os.urandom(1) * size  # one malloc of about `size` bytes, held while counting
    during = _mapped_blocks()
    assert len(block) == size
    return during - before


@needs_glibc
def test_chunk_sized_blocks_come_from_the_heap_and_larger_ones_are_still_mapped() -> None:
    assert allocator.keep_chunk_buffers() is True
    # A chunk with a large entry's framing, and the biggest the thresholds promise to keep.
    assert _mapped_while_holding(CHUNK_SIZE + 64 * 1024) == 0
    assert _mapped_while_holding(allocator.MMAP_THRESHOLD - 64 * 1024) == 0
    # The probe can tell: a block past the threshold is mapped on its own.
    assert _mapped_while_holding(allocator.MMAP_THRESHOLD + CHUNK_SIZE) == 1


@needs_glibc
def test_applying_twice_is_the_same_as_once() -> None:
    assert allocator.keep_chunk_buffers() is True
    assert allocator.keep_chunk_buffers() is True


def test_thresholds_leave_room_for_a_chunk_and_keep_a_few() -> None:
    assert allocator.MMAP_THRESHOLD >= 2 * CHUNK_SIZE
    assert allocator.TRIM_THRESHOLD >= 4 * allocator.MMAP_THRESHOLD


def test_another_c_library_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def musl(name: str) -> str:
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(os, "confstr", musl)
    allocator.keep_chunk_buffers.cache_clear()
    try:
        assert allocator.keep_chunk_buffers() is False
    finally:
        allocator.keep_chunk_buffers.cache_clear()
