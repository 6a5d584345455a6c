"""Value grammars (nix_job.core.values): sizes for push-max-size and their display."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nix_job.core.values import parse_size, show_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("1K", 1024),
        ("1k", 1024),
        ("1KB", 1024),
        ("1KiB", 1024),
        ("3M", 3 * 1024**2),
        ("2 G", 2 * 1024**3),
        ("1T", 1024**4),
        ("0.5M", 512 * 1024),
        ("12B", 12),
    ],
)
def test_sizes_are_read_in_binary_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "0M", "0.0001", "M", "1.5B", "1 PB", "-1", "1e6", "x"])
def test_non_sizes_and_zero_are_refused(text: str) -> None:
    assert parse_size(text) is None


@pytest.mark.parametrize(
    ("size", "shown"),
    [(12, "12 bytes"), (1536, "1.5 KiB"), (500 * 1024**2, "500 MiB"), (2 * 1024**3, "2 GiB")],
)
def test_sizes_are_shown_for_people(size: int, shown: str) -> None:
    assert show_size(size) == shown


@given(st.integers(min_value=1, max_value=10**15))
def test_a_byte_count_reads_back_as_itself(size: int) -> None:
    assert parse_size(str(size)) == size
