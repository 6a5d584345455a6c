"""Uploading one path: the in-process NAR, its hash check, and the fall back to nix-store --dump.

Unit tests drive ``Uploader`` over the in-memory store and Attic; ``nix``-marked tests push
paths of a real chroot Nix store (its files under a temporary root, so they can be tampered
with) to the Attic double over HTTP.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tenacity import Retrying

from nix_job.cache.attic import AtticClient
from nix_job.core.secret import Secret
from nix_job.nix.store import NixStore
from nix_job.push.command import push_once
from nix_job.push.report import PushReport, UploadOutcome
from nix_job.push.retry import RetryPolicy, retrying
from nix_job.push.upload import Uploader
from tests.attic_double.server import AtticDouble
from tests.fakes.attic import FakeAttic
from tests.fakes.store import FakeStore
from tests.nixenv import NixEnv, require_nix

S = "/nix/store/"
NO_WAIT = RetryPolicy(attempts=3, initial_wait_s=0, max_wait_s=0, jitter_s=0)
A = S + "a" * 32 + "-a"
B = S + "b" * 32 + "-b"
C = S + "c" * 32 + "-c"


def uploader(store: FakeStore, attic: FakeAttic) -> Uploader:
    abandoned = threading.Event()

    def policy() -> Retrying:
        return retrying(NO_WAIT, sleep=lambda _s: None, abandoned=abandoned)

    return Uploader(store=store, client=attic, retrying=policy, abandoned=abandoned)


def upload(store: FakeStore, attic: FakeAttic, *paths: str) -> list[UploadOutcome]:
    up = uploader(store, attic)
    return [up.upload(store.info(p)) for p in paths]


# --- the fake store: which stream is used, and what the server gets ------------------------------


def test_the_nar_is_read_in_process_and_no_dump_is_started() -> None:
    store, attic = FakeStore(), FakeAttic()
    store.add(A, size=300)
    [outcome] = upload(store, attic, A)
    assert outcome == UploadOutcome(status="uploaded")
    assert (store.nar_calls, store.dump_calls) == (1, 0)
    assert attic.upload_bytes[A] == store.nars[A]


def test_an_uploader_keeps_nar_chunk_memory_for_reuse(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[None] = []
    monkeypatch.setattr("nix_job.push.upload.keep_chunk_buffers", lambda: calls.append(None))
    uploader(FakeStore(), FakeAttic())
    assert calls == [None]


def test_a_store_without_local_files_uses_nix_store_dump() -> None:
    store, attic = FakeStore(in_process_nar=False, real_store_dir=None), FakeAttic()
    store.add(A, size=300)
    [outcome] = upload(store, attic, A)
    assert outcome.status == "uploaded"
    assert outcome.fallback is None
    assert (store.nar_calls, store.dump_calls) == (0, 1)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda nar: nar[:-1] + bytes([nar[-1] ^ 1]), id="same-size-other-bytes"),
        pytest.param(lambda nar: nar + b"x", id="longer"),
        pytest.param(lambda nar: nar[:-1], id="shorter"),
    ],
)
def test_a_file_tree_that_differs_from_the_registration_is_sent_from_the_dump(
    tamper: Callable[[bytes], bytes], caplog: pytest.LogCaptureFixture
) -> None:
    store, attic = FakeStore(), FakeAttic()
    store.add(A, size=300)
    store.files[A] = tamper(store.nars[A])
    caplog.set_level(logging.WARNING)

    [outcome] = upload(store, attic, A)

    assert outcome.status == "uploaded"
    assert outcome.fallback is not None
    assert "does not match what Nix registered" in outcome.fallback
    assert attic.upload_bytes[A] == store.nars[A]  # FakeAttic also asserts hash and size
    assert (store.nar_calls, store.dump_calls) == (1, 1)
    assert any("nix-store --dump" in r.getMessage() and A in r.getMessage() for r in caplog.records)


def test_a_read_error_falls_back_per_path_and_keeps_reading_files_for_the_others() -> None:
    store, attic = FakeStore(), FakeAttic()
    for p in (A, B):
        store.add(p, size=50)
    store.broken_dumps.add(A)  # unreadable both ways: fails, with the fallback recorded

    first, second = upload(store, attic, A, B)

    assert first.status == "failed"
    assert first.fallback is not None
    assert second == UploadOutcome(status="uploaded")
    assert (store.nar_calls, store.dump_calls) == (2, 1)


def test_a_path_gone_from_the_store_is_vanished_without_a_dump() -> None:
    store, attic = FakeStore(), FakeAttic()
    store.add(A)
    store.collect_on_dump.add(A)
    [outcome] = upload(store, attic, A)
    assert outcome.status == "vanished"
    assert store.dump_calls == 0
    assert attic.uploads == []


def test_files_missing_for_valid_paths_stop_in_process_reads_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, attic = FakeStore(real_store_dir="/nowhere/nix/store", files_elsewhere=True), FakeAttic()
    for p in (A, B, C):
        store.add(p, size=40)
    caplog.set_level(logging.WARNING)

    outcomes = upload(store, attic, A, B, C)

    assert [o.status for o in outcomes] == ["uploaded"] * 3
    assert (store.nar_calls, store.dump_calls) == (1, 3)
    warnings = [r.getMessage() for r in caplog.records if "cannot read the store" in r.getMessage()]
    assert len(warnings) == 1
    assert "/nowhere/nix/store" in warnings[0]


# --- real Nix: a chroot store, the double over HTTP ---------------------------------------------


@pytest.fixture
def chroot(tmp_path: Path) -> NixEnv:
    """Nix with its store at ``tmp_path/root`` (paths stay /nix/store/… to Nix)."""
    require_nix()
    return NixEnv.create(tmp_path / "nix", remote=str(tmp_path / "root"))


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("demo")
        yield d


def add_paths(nix: NixEnv, where: Path, sizes: list[int]) -> list[str]:
    """Store paths with a file, an executable, a symlink and a subdirectory each."""
    paths = []
    for n, size in enumerate(sizes):
        tree = where / f"tree-{n}-{os.urandom(4).hex()}"
        (tree / "sub").mkdir(parents=True)
        (tree / "data").write_bytes(os.urandom(size))
        (tree / "sub" / "tool").write_text("#!/bin/sh\n")
        (tree / "sub" / "tool").chmod(0o755)
        (tree / "link").symlink_to("sub/tool")
        paths.append(nix.text(["nix-store", "--add", str(tree)]))
    return paths


def push(nix: NixEnv, double: AtticDouble, paths: list[str]) -> tuple[NixStore, PushReport]:
    client = AtticClient(
        endpoint=double.url, cache="demo", token=Secret(double.make_token({"demo": "rw"}))
    )
    store = NixStore(nix.env())
    report = push_once(paths, store=store, client=client, jobs=3, timeout_s=120, retry=NO_WAIT)
    return store, report


@pytest.mark.nix
def test_a_chroot_store_is_read_in_process_with_no_nix_process_per_path(
    chroot: NixEnv, double: AtticDouble, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    paths = add_paths(chroot, tmp_path, [0, 1, 7, 9, 300_000, 2_000_000, 50, 60, 70, 80])

    store, report = push(chroot, double, paths)

    assert store.real_store_dir == str(root) + "/nix/store"
    assert report.pushed.paths == len(paths), report
    assert report.nar_fallbacks == 0
    # closure, path-info: a couple of batched queries for ten paths, no dump per path.
    assert store.processes <= 3, store.processes
    for path in paths:
        stored = double.get_object("demo", path)
        assert stored is not None
        assert stored.nar == chroot.dump(str(root) + path)


def _flip_a_byte(tree: Path) -> None:
    data = tree / "data"
    data.chmod(0o644)
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))


def _append(tree: Path) -> None:
    data = tree / "data"
    data.chmod(0o644)
    with data.open("ab") as f:
        f.write(b"!")


def _make_executable(tree: Path) -> None:
    (tree / "data").chmod(0o555)


def _retarget_link(tree: Path) -> None:
    (tree / "link").unlink()
    (tree / "link").symlink_to("sub")


@pytest.mark.nix
@pytest.mark.parametrize("tamper", [_flip_a_byte, _append, _make_executable, _retarget_link])
def test_a_tampered_store_path_never_reaches_the_server(
    chroot: NixEnv,
    double: AtticDouble,
    tmp_path: Path,
    tamper: Callable[[Path], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = tmp_path / "root"
    good, bad = add_paths(chroot, tmp_path, [1000, 200_000])
    physical = root / bad.lstrip("/")
    physical.chmod(0o755)
    tamper(physical)
    caplog.set_level(logging.WARNING)

    _store, report = push(chroot, double, [good, bad])

    assert double.has_path("demo", good)
    assert not double.has_path("demo", bad)
    assert report.failed.paths == 1
    # Read through nix-store --dump twice: at the final push, and when the reconcile found the
    # path missing and tried once more. Both times the check held the last bytes back.
    assert report.nar_fallbacks == 2
    [failure] = report.failures
    assert failure.path == bad
    assert "does not match what Nix registered" in failure.reason
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "nix-store --dump" in messages
    assert "--verify-path" in messages
    # Every upload request the double saw for the bad path was cut short: nothing stored.
    assert double.get_object("demo", bad) is None
