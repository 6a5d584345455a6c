"""Where the Attic client gets its token: a fixed ATTIC_TOKEN, or the exchange's token renewed
at 2/3 of its lifetime (a fake clock drives ``tick``; one test runs the real thread), listeners
that mask and rewrite the netrc, and the Attic client asking on every request."""

from __future__ import annotations

import logging
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest

from nix_job.cache import netrc_file
from nix_job.cache.attic import AtticClient
from nix_job.cache.exchange_client import ExchangeError
from nix_job.cache.token_source import RenewingToken, StaticToken
from nix_job.core.secret import Secret
from nix_job.core.token_grant import Grant
from tests.fakes.clock import FakeClock

HOST = "cache.example"


def grant(n: int, lifetime: float = 900.0) -> Grant:
    return Grant(
        token=Secret(f"eyJ.minted-{n}.sig"),
        expires_at=0,
        lifetime_s=lifetime,
        caches=(("main", "rw"),),
        rule="publish",
    )


class Exchange:
    """A scripted exchange: hands out grant 1, 2, 3… or raises what it is given."""

    def __init__(self, lifetime: float = 900.0) -> None:
        self.lifetime = lifetime
        self.calls = 0
        self.failures: list[Exception] = []

    def __call__(self) -> Grant:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return grant(self.calls + 1, self.lifetime)


def test_a_static_token_is_attic_token_as_today() -> None:
    assert StaticToken(Secret("t")).current() == Secret("t")
    assert StaticToken(None).current() is None


def test_renewal_happens_at_two_thirds_of_the_lifetime_and_listeners_see_it_first() -> None:
    clock, exchange = FakeClock(), Exchange()
    source = RenewingToken(grant=grant(1), renew=exchange, clock=clock, floor_s=1)
    seen: list[str] = []
    source.subscribe(lambda g: seen.append("mask " + g.token.reveal()))
    source.subscribe(lambda g: seen.append("netrc " + source.current().reveal()))

    clock.now = 599.0
    assert source.tick() is False
    assert exchange.calls == 0
    clock.now = 600.0
    assert source.tick() is True

    assert source.current().reveal() == "eyJ.minted-2.sig"
    assert seen == ["mask eyJ.minted-2.sig", "netrc eyJ.minted-2.sig"]
    assert source.renewals == 1
    assert source.due_in() == pytest.approx(600.0)  # 2/3 of the new grant's 900 s


def test_a_failed_renewal_keeps_the_token_retries_and_says_when_it_expired(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock, exchange = FakeClock(), Exchange(lifetime=90)
    exchange.failures = [ExchangeError(f"HTTP 503 #{n}") for n in range(20)]
    source = RenewingToken(grant=grant(1, 90), renew=exchange, clock=clock, floor_s=1)

    clock.now = 60.0
    assert source.tick() is False
    assert source.current().reveal() == "eyJ.minted-1.sig"
    assert source.last_error == "HTTP 503 #0"
    assert source.due_in() == pytest.approx(5.0)  # first retry after 5 s
    assert "still valid for 30 s, retrying in 5 s" in caplog.text

    while clock.now < 200:
        clock.now += max(source.due_in(), 0.0)
        source.tick()
    assert caplog.text.count("has expired and could not be renewed") == 1

    exchange.failures.clear()
    clock.now += source.due_in()
    assert source.tick() is True
    assert source.last_error is None
    assert source.current().reveal().startswith("eyJ.minted-")
    assert "eyJ.minted" not in caplog.text


def test_unsubscribing_waits_for_a_renewal_running_the_listener() -> None:
    clock = FakeClock(now=1000.0)
    source = RenewingToken(grant=grant(1), renew=Exchange(), clock=clock, floor_s=1)
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow(g: Grant) -> None:
        entered.set()
        release.wait(5)
        order.append("listener done")

    source.subscribe(slow)
    clock.now = 10_000.0
    renewal = threading.Thread(target=source.tick)
    renewal.start()
    assert entered.wait(5)

    def remove() -> None:
        source.unsubscribe(slow)
        order.append("gone")

    remover = threading.Thread(target=remove)
    remover.start()
    time.sleep(0.05)
    assert order == []  # still waiting for the renewal
    release.set()
    renewal.join(5)
    remover.join(5)
    assert order == ["listener done", "gone"]


def test_the_thread_renews_short_lived_tokens_until_closed() -> None:
    exchange = Exchange(lifetime=1.5)  # renewed every second (2/3 of it)
    source = RenewingToken(grant=grant(1, 1.5), renew=exchange)
    source.start()
    try:
        deadline = time.monotonic() + 5
        while source.renewals < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        source.close()
    assert source.renewals >= 2
    calls = exchange.calls
    time.sleep(0.4)
    assert exchange.calls == calls, "it renewed after close"


def test_the_attic_client_asks_the_source_on_every_request() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"missing_paths": []})

    clock = FakeClock()
    source = RenewingToken(grant=grant(1), renew=Exchange(), clock=clock, floor_s=1)
    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = AtticClient(endpoint="https://cache.example/", cache="main", token=source, http=http)
    client.missing_paths(["a" * 32])
    clock.now = 600.0
    source.tick()
    client.missing_paths(["a" * 32])
    assert seen == ["Bearer eyJ.minted-1.sig", "Bearer eyJ.minted-2.sig"]


# --- the netrc Nix reads ------------------------------------------------------------------------


def test_the_netrc_is_rewritten_in_place_keeping_other_entries(tmp_path: Path) -> None:
    base = tmp_path / "base-netrc"
    base.write_text("machine github.com password gh\n")
    written = netrc_file.write_temp_netrc(
        host=HOST, token=Secret("old-token"), base_netrc=base, temp_root=tmp_path
    )
    file = written.file
    netrc_file.rewrite_password(file, host=HOST, token=Secret("new-token"))
    text = file.path.read_text()
    assert "password new-token" in text
    assert "old-token" not in text
    assert "machine github.com password gh" in text
    assert stat.S_IMODE(file.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in file.directory.iterdir()) == ["netrc"]  # no temp file left


def test_a_removed_netrc_is_never_written_again(tmp_path: Path) -> None:
    written = netrc_file.write_temp_netrc(
        host=HOST, token=Secret("old"), base_netrc=tmp_path / "none", temp_root=tmp_path
    )
    written.file.cleanup()
    with pytest.raises(FileNotFoundError):
        netrc_file.rewrite_password(written.file, host=HOST, token=Secret("new"))
    assert not written.file.path.exists()


def test_a_renewal_that_ends_after_close_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a cancelled run close() waits only briefly; the renewal still running must neither
    call listeners (the netrc is being removed) nor log its failure."""
    caplog.set_level(logging.INFO)
    started, release = threading.Event(), threading.Event()
    outcome: list[Exception | None] = [None, RuntimeError("the client was closed")]

    def renew() -> Grant:
        started.set()
        release.wait(5)
        error = outcome.pop()
        if error is not None:
            raise error
        return grant(2)

    for _ in range(2):
        caplog.clear()
        seen: list[Grant] = []
        source = RenewingToken(grant=grant(1, 1.5), renew=renew)
        source.subscribe(seen.append)
        source.start()
        assert started.wait(5)
        source.close(timeout_s=0.05)
        release.set()
        time.sleep(0.2)
        assert seen == []
        assert source.current().reveal() == "eyJ.minted-1.sig"
        assert "renew" not in caplog.text
        started.clear()
        release.clear()
