"""Store queries from Nix's database (nix_job.nix.store_db): the same answers as the Nix CLI,
no process, and a quiet fall back to the CLI whenever the database cannot answer."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest

from nix_job.core.nixhash import to_attic_sha256
from nix_job.nix.store import NixStore
from nix_job.nix.store_db import StoreDb
from tests.nixenv import NixEnv, require_nix, write_derivations

S = "/nix/store/"
GONE = S + "00000000000000000000000000000000-gone"


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


def both(env: dict[str, str]) -> tuple[NixStore, NixStore]:
    db, cli = NixStore(env), NixStore(env, read_db=False)
    assert db.reads_database
    assert not cli.reads_database
    return db, cli


def signed_closure(nix: NixEnv, tmp_path: Path) -> list[str]:
    """A chain of three built paths (the top one signed), a `nix-store --add` path (content
    addressed) and the derivations: every column the push path reads has a value somewhere."""
    top = write_derivations(tmp_path, count=3, chain=True).build(nix, "d2")[0]
    key = tmp_path / "k.sec"
    nix.run(["nix-store", "--generate-binary-cache-key", "test-1", str(key), str(tmp_path / "k")])
    nix.run(["nix", "store", "sign", "--key-file", str(key), top])
    source = tmp_path / "source"
    source.mkdir()
    (source / "file").write_text("x")
    added = nix.text(["nix-store", "--add", str(source)])
    drv = nix.text(["nix-store", "--query", "--deriver", top])
    return [top, added, drv]


@pytest.mark.nix
def test_the_database_answers_what_the_nix_cli_answers(nix: NixEnv, tmp_path: Path) -> None:
    roots = signed_closure(nix, tmp_path)
    db, cli = both(nix.env())
    asked = [*roots, GONE, "/etc/passwd"]

    closure = db.closure(asked)
    assert set(closure) == set(cli.closure(asked))
    assert db.valid(asked) == cli.valid(asked) == set(roots)
    infos = db.query_infos(closure)
    # `nix path-info` reads a .drv argument as "the derivation's outputs", so the CLI answers
    # only for the other paths; the database has the derivations' own rows too.
    outputs = [p for p in closure if not p.endswith(".drv")]
    assert {p: infos[p] for p in outputs} == cli.query_infos(closure)
    for drv in (p for p in closure if p.endswith(".drv")):
        assert infos[drv].nar_hash == to_attic_sha256(nix.text(["nix-store", "-q", "--hash", drv]))
    assert any(i.sigs for i in infos.values())
    assert any(i.ca for i in infos.values())
    assert any(i.deriver for i in infos.values())
    # Every path after the paths it refers to (self-references aside).
    position = {p: n for n, p in enumerate(closure)}
    for info in infos.values():
        for ref in info.references:
            if S + ref != info.path:
                assert position[S + ref] < position[info.path], (ref, info.path)
    assert db.processes == 0
    assert cli.processes >= 3


@pytest.mark.nix
def test_a_chroot_store_is_read_from_its_own_database(tmp_path: Path) -> None:
    require_nix()
    root = tmp_path / "root"
    nix = NixEnv.create(tmp_path / "nix", remote=str(root))
    source = tmp_path / "tree"
    source.mkdir()
    (source / "f").write_text("chroot")
    path = nix.text(["nix-store", "--add", str(source)])
    db, cli = both(nix.env())

    assert db.query_infos([path]) == cli.query_infos([path])
    assert db.valid([path]) == {path}
    assert db.processes == 0


def _state_dir(tmp_path: Path, schema: str, db_bytes: bytes | None = None) -> Path:
    state = tmp_path / "state"
    (state / "db").mkdir(parents=True)
    (state / "db" / "schema").write_text(schema)
    if db_bytes is not None:
        (state / "db" / "db.sqlite").write_bytes(db_bytes)
    return state


def test_another_schema_version_is_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert StoreDb.open(str(_state_dir(tmp_path, "11\n")), "/nix/store") is None
    assert "schema version 11" in caplog.text


def test_a_file_that_is_not_a_nix_database_is_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    state = _state_dir(tmp_path, "10", b"not a database" * 100)
    assert StoreDb.open(str(state), "/nix/store") is None
    assert "cannot read the Nix database" in caplog.text


def test_a_database_without_nix_tables_is_not_read(tmp_path: Path) -> None:
    state = _state_dir(tmp_path, "10")
    sqlite3.connect(state / "db" / "db.sqlite").execute("create table t(x)").connection.close()
    assert StoreDb.open(str(state), "/nix/store") is None


def test_no_state_directory_means_no_database(tmp_path: Path) -> None:
    assert StoreDb.open(str(tmp_path / "missing"), "/nix/store") is None


@pytest.mark.nix
def test_a_query_the_database_fails_is_asked_of_nix_from_then_on(
    nix: NixEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    top = write_derivations(tmp_path, count=2, chain=True).build(nix, "d1")[0]
    store = NixStore(nix.env())
    expected = NixStore(nix.env(), read_db=False).closure([top])
    store._db._db.close()  # type: ignore[union-attr]  # the connection breaks underneath
    caplog.set_level(logging.INFO)

    assert store.closure([top]) == expected
    assert not store.reads_database
    assert store.processes >= 1
    assert "store queries go through Nix" in caplog.text


@pytest.mark.nix
def test_paths_registered_while_a_store_is_open_are_seen(nix: NixEnv, tmp_path: Path) -> None:
    """The connection is not a frozen snapshot: each query sees what Nix committed since."""
    store = NixStore(nix.env())
    before = store.closure([])
    assert before == []
    path = write_derivations(tmp_path, count=1).build(nix, "d0")[0]
    assert store.valid([path]) == {path}
    assert path in store.query_infos([path])


def test_the_database_is_never_written(tmp_path: Path) -> None:
    """mode=ro: a write through the store's connection fails instead of touching Nix's data."""
    state = _state_dir(tmp_path, "10")
    with sqlite3.connect(state / "db" / "db.sqlite") as setup:
        setup.executescript(
            "create table ValidPaths (id integer primary key, path text, hash text,"
            " registrationTime integer, deriver text, narSize integer, ultimate integer,"
            " sigs text, ca text);"
            "create table Refs (referrer integer, reference integer);"
            "create table DerivationOutputs (drv integer, id text, path text);"
        )
    setup.close()
    db = StoreDb.open(str(state), "/nix/store")
    assert db is not None
    before = os.stat(state / "db" / "db.sqlite").st_mtime_ns
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db._db.execute("insert into Refs values (1, 1)")
    assert os.stat(state / "db" / "db.sqlite").st_mtime_ns == before
    db.close()
