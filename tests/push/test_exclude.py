"""push-exclude in a helper process with a time limit (issue 16.6): a pattern that backtracks
for minutes can stall neither the push session's lock nor its drain deadline."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from nix_job.core.values import pattern_problem
from nix_job.push.exclude import ExcludeMatcher
from nix_job.push.session import PushSession
from tests.fakes.attic import FakeAttic
from tests.fakes.store import FakeStore

STORE = "/nix/store/"
CATASTROPHIC = r"^/nix/store/(?:\w|\w)+-doc$"  # ambiguous alternation: exponential, not nested
# A valid store path the pattern cannot match: it backtracks through all splits of the hash.
LONG_NAME = STORE + "0" * 32 + "-" + "a" * 10 + ".tar"


def sp(n: int, name: str) -> str:
    digits = "0123456789abcdfghijklmnpqrsvwxyz"
    return STORE + (digits[n % 32] + digits[n // 32 % 32]) * 16 + "-" + name


def test_a_pattern_matches_full_store_paths_in_the_helper() -> None:
    matcher = ExcludeMatcher(r"-doc$")
    try:
        verdict = matcher.match([sp(1, "x-doc"), sp(2, "x"), sp(3, "doc-x")])
        again = matcher.match([sp(4, "y-doc")])  # the same helper answers again
    finally:
        matcher.close()
    assert verdict.excluded == {sp(1, "x-doc")}
    assert verdict.undecided == ()
    assert again.excluded == {sp(4, "y-doc")}


def test_a_pattern_that_takes_too_long_leaves_its_paths_undecided_and_restarts() -> None:
    matcher = ExcludeMatcher(CATASTROPHIC, base_limit_s=0.5)
    try:
        started = time.monotonic()
        verdict = matcher.match([LONG_NAME, sp(1, "x-doc")])
        took = time.monotonic() - started
        later = matcher.match(["/nix/store/2-doc"])  # a fresh helper after the kill
    finally:
        matcher.close()
    assert verdict.excluded == frozenset()
    assert verdict.undecided == (LONG_NAME, sp(1, "x-doc"))  # fail closed: not uploaded
    assert took < 3.0
    assert later.excluded == {"/nix/store/2-doc"}


def test_the_drain_deadline_holds_whatever_the_pattern() -> None:
    """In-process, this pattern held the GIL (and the session lock) for minutes: drain(2)
    could not return. Now the session drains on time and the path is reported."""
    store = FakeStore()
    slow = store.add(LONG_NAME)
    attic = FakeAttic()
    session = PushSession(
        store=store,
        client=attic,
        exclude=ExcludeMatcher(CATASTROPHIC, base_limit_s=1.0),
        jobs=1,
        idle_s=0.05,
    )
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:  # the interpreter stays responsive meanwhile
        while not stop.wait(0.05):
            ticks.append(time.monotonic())

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        started = time.monotonic()
        session.queue([slow], origin="final")
        report = session.drain(5.0)
        took = time.monotonic() - started
    finally:
        stop.set()
        session.close()
    assert took < 6.0
    assert report.exclude_undecided == 1
    assert report.excluded.paths == 1
    assert attic.uploads == []
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps, default=0.0) < 0.5  # no thread was starved by the regex


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        pytest.param(r"^/nix/store/(\w+)+-doc$", True, id="nested-repeat"),
        pytest.param(r"(a*)*", True, id="star-of-star"),
        pytest.param(r"(?:(?:x+))+y", True, id="nested-through-groups"),
        pytest.param(r"(x|(a+)+)", True, id="inside-a-branch"),
        pytest.param(r"-doc$", False, id="a-suffix"),
        pytest.param(r"(a|b)+", False, id="alternation"),
        pytest.param(r"((ab)+c)*", False, id="separated-repeats"),
        pytest.param(r"-(doc|man|dev)$", False, id="outputs"),
        pytest.param(r"x(", True, id="not-a-regex"),
    ],
)
def test_the_input_refuses_the_classic_catastrophic_shape(pattern: str, refused: bool) -> None:
    assert (pattern_problem(pattern) is not None) == refused
