"""``nix-job watch-store`` as a real process with real Nix and the Attic double on 127.0.0.1:
uploads while running, outages, restarts in a burst, catch-up, SIGTERM within the deadline,
token rotation, systemd notifications, SIGUSR1. No output of any test holds the token."""

from __future__ import annotations

import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nix_job.service.journal import read_pending
from tests.attic_double.server import AtticDouble
from tests.attic_double.state import Faults
from tests.nixenv import NixEnv, require_nix, write_derivations
from tests.service.harness import (
    ChrootStore,
    ServiceProcess,
    assert_no_secret,
    free_port,
    service_env,
    uploads_per_path,
    wait_until,
)

pytestmark = pytest.mark.nix


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("demo")
        yield d


@pytest.fixture
def store(tmp_path: Path) -> ChrootStore:
    require_nix()
    return ChrootStore(tmp_path)


def chroot_args(store: ChrootStore, state: Path, *more: str) -> list[str]:
    return ["--store-dir", str(store.store_dir), "--state-dir", str(state), *more]


def journaled(state: Path) -> list[str]:
    text = (state / "journal").read_text()
    return [line.split()[1] for line in text.splitlines()[1:] if line.startswith("+ ")]


def test_paths_built_while_it_runs_are_uploaded_and_excluded_ones_stay_home(
    tmp_path: Path, double: AtticDouble
) -> None:
    """The default store (/nix/store), real builds, ATTIC_TOKEN handed over at start-up."""
    require_nix()
    nix = NixEnv.create(tmp_path / "nix")
    token = double.make_token({"demo": "rw"})
    env = service_env(nix, double, ATTIC_TOKEN=token)
    args = ["--state-dir", str(tmp_path / "state"), "--exclude", "nixjob-excluded-"]
    service = ServiceProcess(args, env, tmp_path / "log")
    try:
        service.wait_for_event("connected")
        leaf, top = write_derivations(tmp_path, count=2, chain=True).build(nix)
        (home,) = write_derivations(tmp_path, prefix="nixjob-excluded").build(nix)
        wait_until(lambda: double.has_path("demo", leaf) and double.has_path("demo", top))
        service.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: any(int(s["excluded"]) >= 1 for s in service.events("status")))
        code, _ = service.stop()
    finally:
        service.kill()
    assert code == 0
    for path in (leaf, top):
        stored = double.get_object("demo", path)
        assert stored is not None
        assert stored.nar == nix.dump(path)  # verified NARs
    assert not double.has_path("demo", home)
    assert uploads_per_path(double)[top] == 1
    assert_no_secret(service.text(), token)


@pytest.mark.parametrize("outage", ["connection-refused", "http-502"])
def test_an_outage_of_several_seconds_loses_nothing(
    tmp_path: Path, store: ChrootStore, outage: str
) -> None:
    double = AtticDouble(port=free_port()).start()
    try:
        double.create_cache("demo")
        token = double.make_token({"demo": "rw"})
        (tmp_path / "token").write_text(token + "\n")
        env = service_env(store.nix, double)
        state = tmp_path / "state"
        args = chroot_args(store, state, "--token-file", str(tmp_path / "token"))
        service = ServiceProcess(args, env, tmp_path / "log")
        try:
            service.wait_for_event("connected")
            before = store.add("before-outage")
            wait_until(lambda: double.has_path("demo", before))
            if outage == "connection-refused":
                double.stop()
            else:
                double.faults = Faults(garbage_status=502)  # a proxy whose backend is gone
            during = [store.add(f"during-outage-{i}") for i in range(5)]
            service.wait_for_event("server-unavailable")
            wait_until(lambda: set(during) <= set(journaled(state)), what="journaled")
            time.sleep(4)  # the outage lasts: nothing may be given up meanwhile
            double.start()  # same port, same stored objects (no-op if it never stopped)
            double.faults = Faults()
            wait_until(lambda: all(double.has_path("demo", p) for p in during), timeout=90)
            code, _ = service.stop()
        finally:
            service.kill()
    finally:
        double.stop()
    assert code == 0
    assert len(service.events("server-unavailable")) == 1  # once per outage, not per path
    assert service.events("gave-up") == []
    assert read_pending(state) == {}
    assert_no_secret(service.text(), token)


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGKILL, id="kill")]
)
def test_a_restart_in_a_burst_loses_nothing_and_uploads_each_path_once(
    tmp_path: Path, store: ChrootStore, double: AtticDouble, signum: int
) -> None:
    token = double.make_token({"demo": "rw"})
    env = service_env(store.nix, double, ATTIC_TOKEN=token)
    state = tmp_path / "state"
    added: list[str] = []

    def burst() -> None:
        for i in range(24):
            added.append(store.add(f"burst-{i}"))
            time.sleep(0.1)

    first = ServiceProcess(chroot_args(store, state), env, tmp_path / "log")
    try:
        first.wait_for_event("connected")
        adder = threading.Thread(target=burst)
        adder.start()
        wait_until(lambda: len(uploads_per_path(double)) >= 5, what="part of the burst")
        first.stop(signum)
    finally:
        first.kill()
    second = ServiceProcess(chroot_args(store, state), env, tmp_path / "log2")
    try:
        adder.join()
        wait_until(lambda: all(double.has_path("demo", p) for p in added), what="the burst")
        code, _ = second.stop()
    finally:
        second.kill()
    assert code == 0
    assert len(added) == 24
    counts = uploads_per_path(double)
    assert {p: counts.get(p, 0) for p in added} == dict.fromkeys(added, 1)
    assert_no_secret(second.text(), token)


def test_paths_added_while_stopped_are_caught_up_at_start(
    tmp_path: Path, store: ChrootStore, double: AtticDouble
) -> None:
    token = double.make_token({"demo": "rw"})
    env = service_env(store.nix, double, ATTIC_TOKEN=token)
    state = tmp_path / "state"
    older = store.add("before-the-first-start")
    time.sleep(1.1)  # registration times are whole seconds
    first = ServiceProcess(chroot_args(store, state), env, tmp_path / "log")
    try:
        first.wait_for_event("ready")
        assert first.stop()[0] == 0
    finally:
        first.kill()
    missed = [store.add(f"while-stopped-{i}") for i in range(3)]
    signed = store.add("signed-upstream")
    keys = tmp_path / "keys"
    keys.mkdir()
    store.nix.run(
        [
            "nix-store",
            "--generate-binary-cache-key",
            "cache.nixos.org-1",
            f"{keys}/sk",
            f"{keys}/pk",
        ]
    )
    store.nix.run(["nix", "store", "sign", "--key-file", f"{keys}/sk", signed])
    second = ServiceProcess(chroot_args(store, state), env, tmp_path / "log2")
    try:
        second.wait_for_event("catch-up")
        wait_until(lambda: all(double.has_path("demo", p) for p in missed))
        second.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: any(int(s["upstream"]) >= 1 for s in second.events("status")))
        assert second.stop()[0] == 0
    finally:
        second.kill()
    (catch_up,) = second.events("catch-up")
    assert catch_up["reason"] == "start"
    assert catch_up["queued"] == "4"  # the three and the signed one, which then stays home
    assert not double.has_path("demo", signed)
    assert not double.has_path("demo", older)
    assert second.events("first-start") == []


def test_paths_built_while_stopped_are_caught_up_from_the_real_store(
    tmp_path: Path, double: AtticDouble
) -> None:
    require_nix()
    nix = NixEnv.create(tmp_path / "nix")
    token = double.make_token({"demo": "rw"})
    env = service_env(nix, double, ATTIC_TOKEN=token)
    args = ["--state-dir", str(tmp_path / "state")]
    first = ServiceProcess(args, env, tmp_path / "log")
    try:
        first.wait_for_event("ready")
        assert first.stop()[0] == 0
    finally:
        first.kill()
    built = write_derivations(tmp_path, count=2, chain=True).build(nix)
    second = ServiceProcess(args, env, tmp_path / "log2")
    try:
        wait_until(lambda: all(double.has_path("demo", p) for p in built))
        assert second.stop()[0] == 0
    finally:
        second.kill()
    (catch_up,) = second.events("catch-up")
    assert int(catch_up["queued"]) >= 2  # others may build in the shared store meanwhile
    for path in built:
        assert double.get_object("demo", path).nar == nix.dump(path)  # type: ignore[union-attr]


def test_sigterm_ends_it_within_the_deadline_with_uploads_in_flight_journaled(
    tmp_path: Path, store: ChrootStore, double: AtticDouble
) -> None:
    token = double.make_token({"demo": "rw"})
    env = service_env(store.nix, double, ATTIC_TOKEN=token)
    state = tmp_path / "state"
    args = chroot_args(store, state, "--shutdown-timeout", "3")
    double.faults = Faults(upload_delay_s=30)  # every upload hangs for half a minute
    service = ServiceProcess(args, env, tmp_path / "log")
    try:
        service.wait_for_event("connected")
        paths = [store.add(f"slow-{i}") for i in range(3)]
        wait_until(lambda: len(double.write_requests()) >= 1, what="get-missing-paths")
        time.sleep(1.0)  # the uploads are on the wire
        code, took = service.stop()
    finally:
        service.kill()
    assert code == 0
    assert took < 3 + 2.0, f"took {took:.1f} s with --shutdown-timeout 3"
    (stopped,) = service.events("stopped")
    assert stopped["journaled"] == "3"
    assert stopped["drained"] == "false"
    assert sorted(journaled(state)) == sorted(paths)
    double.faults = Faults()
    again = ServiceProcess(chroot_args(store, state), env, tmp_path / "log2")
    try:
        wait_until(lambda: read_pending(state) == {}, what="the journal to empty")
        again.proc.send_signal(signal.SIGUSR1)
        again.wait_for_event("status")
        assert again.stop()[0] == 0
    finally:
        again.kill()
    assert all(double.has_path("demo", p) for p in paths)
    status = again.events("status")[0]
    assert (status["pushed"], status["cached"]) == ("0", "3")  # the server had kept them
    assert_no_secret(service.text() + again.text(), token)


def test_a_rotated_token_file_is_picked_up(
    tmp_path: Path, store: ChrootStore, double: AtticDouble
) -> None:
    expired = double.make_token({"demo": "rw"}, valid_for=-60)
    short = double.make_token({"demo": "rw"}, valid_for=6)
    issued = time.time()
    fresh = double.make_token({"demo": "rw"})
    token_file = tmp_path / "token"
    token_file.write_text(expired + "\n")
    env = service_env(store.nix, double)
    args = chroot_args(store, tmp_path / "state", "--token-file", str(token_file))
    service = ServiceProcess(args, env, tmp_path / "log")
    try:
        service.wait_for_event("token-refused")  # at start: it waits, it does not exit
        token_file.write_text(short + "\n")
        service.wait_for_event("connected")
        first = store.add("with-the-short-token")
        wait_until(lambda: double.has_path("demo", first))
        time.sleep(max(0.0, issued + 7 - time.time()))  # the short token has expired
        second = store.add("after-expiry")
        service.wait_for_event("token-refused", count=2)
        tmp = tmp_path / "token.new"
        tmp.write_text(fresh + "\n")
        tmp.replace(token_file)  # a rename, as secret managers do
        wait_until(lambda: double.has_path("demo", second))
        code, _ = service.stop()
    finally:
        service.kill()
    assert code == 0
    assert [e["token_version"] for e in service.events("connected")] == ["2", "3"]
    assert len(service.events("token-reloaded")) == 2
    assert_no_secret(service.text(), expired, short, fresh)


def test_systemd_hears_ready_watchdog_status_and_stopping(
    tmp_path: Path, store: ChrootStore, double: AtticDouble
) -> None:
    token = double.make_token({"demo": "rw"})
    short_dir = Path(tempfile.mkdtemp(prefix="nj-", dir="/tmp"))  # AF_UNIX paths are short
    address = str(short_dir / "notify")
    received: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.2)
        done = threading.Event()

        def listen() -> None:
            while not done.is_set():
                try:
                    received.append(sock.recv(4096).decode())
                except TimeoutError:
                    continue

        listener = threading.Thread(target=listen)
        listener.start()
        env = service_env(
            store.nix, double, ATTIC_TOKEN=token, NOTIFY_SOCKET=address, WATCHDOG_USEC="1000000"
        )
        args = chroot_args(store, tmp_path / "state", "--status-interval", "0")
        service = ServiceProcess(args, env, tmp_path / "log")
        try:
            wait_until(lambda: any("READY=1" in m for m in received), what="READY=1")
            wait_until(lambda: sum(m == "WATCHDOG=1" for m in received) >= 3, what="pings")
            path = store.add("notified")
            wait_until(lambda: double.has_path("demo", path))
            service.proc.send_signal(signal.SIGUSR1)
            service.wait_for_event("status")
            wait_until(lambda: any("STATUS=pushed=1 " in m for m in received), what="STATUS=")
            code, _ = service.stop()
        finally:
            service.kill()
            done.set()
            listener.join()
    assert code == 0
    ready = next(m for m in received if "READY=1" in m)
    assert "STATUS=pushed=0 " in ready
    assert any(m.startswith("STOPPING=1\nSTATUS=") for m in received)
    (status,) = service.events("status")[:1]
    assert status["pushed"] == "1"
    assert status["queue"] == "0"
    assert_no_secret(service.text() + "".join(received), token)


def test_bad_configuration_exits_2_before_anything_starts(tmp_path: Path) -> None:
    service = ServiceProcess(["--jobs", "0"], {"PATH": "/usr/bin:/bin"}, tmp_path / "log")
    assert service.proc.wait(30) == 2
    text = service.text()
    for expected in ("ATTIC_SERVER", "ATTIC_CACHE", "--jobs", "--token-file", "--state-dir"):
        assert expected in text
    assert "event=" not in text  # nothing ran
