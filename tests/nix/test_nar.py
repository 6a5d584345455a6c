"""nix_job.nix.nar writes what ``nix-store --dump`` writes, and ``verified`` never releases a
NAR whose size or sha256 differs from the registered one."""

from __future__ import annotations

import base64
import errno
import hashlib
import itertools
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nix_job.nix.nar import CHUNK_SIZE, NarError, NarMismatch, NarReadError, nar_chunks, verified
from nix_job.nix.path_info import PathInfo, parse_path_info_json
from nix_job.nix.store import NixStore
from tests.nixenv import NixEnv, hex_to_nix32, require_nix

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
#: What a chunk may carry beyond chunk_size: one entry's framing (name up to 255 bytes, symlink
#: target up to 4 KiB) plus the closings of the few directories the test trees nest.
FRAMING_SLACK = 8 * 1024


# --- trees --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class File:
    data: bytes = b""
    mode: int = 0o644


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Dir:
    entries: tuple[tuple[bytes, Node], ...] = ()

    @classmethod
    def of(cls, entries: Mapping[bytes, Node]) -> Dir:
        return cls(entries=tuple(entries.items()))


Node = File | Link | Dir


def make(node: Node, path: bytes) -> None:
    """Create ``node`` at ``path`` (which must not exist)."""
    if isinstance(node, File):
        with open(path, "wb") as f:
            f.write(node.data)
        os.chmod(path, node.mode)
    elif isinstance(node, Link):
        os.symlink(node.target, path)
    else:
        os.mkdir(path)
        for name, child in node.entries:
            make(child, path + b"/" + name)


def nar(path: str | bytes | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> bytes:
    return b"".join(nar_chunks(path, chunk_size=chunk_size))


def assert_same_nar(mine: bytes, nix: bytes) -> None:
    """Equal bytes, or a failure naming the first differing offset (not a MiB-long diff)."""
    if mine == nix:
        return
    at = next((i for i, (a, b) in enumerate(zip(mine, nix, strict=False)) if a != b), None)
    at = min(len(mine), len(nix)) if at is None else at
    lo = max(0, at - 32)
    pytest.fail(
        f"NARs differ at byte {at} (lengths {len(mine)} and {len(nix)}):\n"
        f"  nar_chunks: {mine[lo : at + 32]!r}\n  nix:        {nix[lo : at + 32]!r}"
    )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def open_fds_to(path: Path) -> list[str]:
    """This process's file descriptors that point at ``path``."""
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                fds.append(fd)
        except FileNotFoundError:  # the fd listdir itself used
            continue
    return fds


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.fixture
def tree(tmp_path: Path) -> bytes:
    """Where a test puts the tree it archives (not created yet)."""
    return os.fsencode(tmp_path) + b"/tree"


# --- the format, without Nix --------------------------------------------------------------------

#: ``nix-store --dump`` (Nix 2.8.0) of a directory holding ``run`` (0755, "hi\n") and ``link``
#: (symlink to ``run``): one NAR string per line.
KNOWN_NAR = bytes.fromhex(
    "0d000000000000006e69782d617263686976652d31000000"  # nix-archive-1
    "01000000000000002800000000000000"  # (
    "04000000000000007479706500000000"  # type
    "09000000000000006469726563746f727900000000000000"  # directory
    "0500000000000000656e747279000000"  # entry
    "01000000000000002800000000000000"  # (
    "04000000000000006e616d6500000000"  # name
    "04000000000000006c696e6b00000000"  # link   (sorted before "run")
    "04000000000000006e6f646500000000"  # node
    "01000000000000002800000000000000"  # (
    "04000000000000007479706500000000"  # type
    "070000000000000073796d6c696e6b00"  # symlink
    "06000000000000007461726765740000"  # target
    "030000000000000072756e0000000000"  # run
    "01000000000000002900000000000000"  # )      closes the symlink node
    "01000000000000002900000000000000"  # )      closes the entry
    "0500000000000000656e747279000000"  # entry
    "01000000000000002800000000000000"  # (
    "04000000000000006e616d6500000000"  # name
    "030000000000000072756e0000000000"  # run
    "04000000000000006e6f646500000000"  # node
    "01000000000000002800000000000000"  # (
    "04000000000000007479706500000000"  # type
    "0700000000000000726567756c617200"  # regular
    "0a0000000000000065786563757461626c65000000000000"  # executable
    "0000000000000000"  # (empty string)
    "0800000000000000636f6e74656e7473"  # contents
    "030000000000000068690a0000000000"  # 3, "hi\n", 5 bytes of padding
    "01000000000000002900000000000000"  # )      closes the file node
    "01000000000000002900000000000000"  # )      closes the entry
    "01000000000000002900000000000000"  # )      closes the directory
)


@pytest.mark.parametrize("chunk_size", [1, 7, 8, 100, CHUNK_SIZE])
def test_matches_bytes_recorded_from_nix(tree: bytes, chunk_size: int) -> None:
    make(Dir.of({b"run": File(data=b"hi\n", mode=0o755), b"link": Link(target=b"run")}), tree)
    assert nar(tree, chunk_size) == KNOWN_NAR


def test_empty_file_is_the_smallest_nar(tree: bytes) -> None:
    make(File(), tree)
    assert nar(tree) == (
        KNOWN_NAR[:24]  # nix-archive-1
        + bytes.fromhex("01000000000000002800000000000000")  # (
        + bytes.fromhex("04000000000000007479706500000000")  # type
        + bytes.fromhex("0700000000000000726567756c617200")  # regular
        + bytes.fromhex("0800000000000000636f6e74656e7473")  # contents
        + bytes.fromhex("0000000000000000")  # size 0, no data, no padding
        + bytes.fromhex("01000000000000002900000000000000")  # )
    )


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_chunk_size_below_one_is_refused_at_the_call(tree: bytes, chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        nar_chunks(tree, chunk_size=chunk_size)


def test_accepts_str_bytes_and_pathlike(tree: bytes) -> None:
    make(Dir.of({b"f": File(data=b"x")}), tree)
    assert nar(tree) == nar(os.fsdecode(tree)) == nar(Path(os.fsdecode(tree)))


def _mixed_tree() -> Dir:
    return Dir.of(
        {
            b"small": Dir.of({f"f{i}".encode(): File(data=b"x" * (i * 37)) for i in range(60)}),
            b"big": File(data=bytes(range(256)) * 1000, mode=0o755),
            b"links": Dir.of({b"t" * i: Link(target=b"y" * (i * 50 + 1)) for i in range(1, 6)}),
            b"deep": Dir.of({b"a": Dir.of({b"b": Dir.of({b"c": File(data=b"z")})})}),
        }
    )


@pytest.mark.parametrize("chunk_size", [1, 9, 100, 4096, 65536])
def test_chunks_fill_chunk_size_and_the_bytes_do_not_depend_on_it(
    tree: bytes, chunk_size: int
) -> None:
    make(_mixed_tree(), tree)
    chunks = list(nar_chunks(tree, chunk_size=chunk_size))
    assert b"".join(chunks) == nar(tree)
    assert all(chunk_size <= len(c) <= chunk_size + FRAMING_SLACK for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= chunk_size + FRAMING_SLACK


def test_large_files_are_read_a_chunk_at_a_time(tree: bytes) -> None:
    make(File(data=os.urandom(5 * 4096 + 3)), tree)
    sizes = [len(c) for c in nar_chunks(tree, chunk_size=4096)]
    # The header shares the first chunk; then whole chunks; the rest and ")" last.
    assert sizes[:-1] == [4096] * (len(sizes) - 1)
    assert sum(sizes) == 24 + 16 * 4 + 8 + 5 * 4096 + 3 + 5 + 16


@contextmanager
def deep_directories(tree: bytes, depth: int) -> Iterator[None]:
    """``tree/d/d/…/d``, ``depth`` levels below ``tree``, made and removed without recursion
    (os.makedirs and shutil.rmtree recurse and would hit the recursion limit themselves)."""
    paths = [tree + b"/d" * level for level in range(depth + 1)]
    for path in paths:
        os.mkdir(path)
    try:
        yield
    finally:
        for path in reversed(paths):
            os.rmdir(path)


def test_deeper_than_the_recursion_limit(tree: bytes) -> None:
    depth = sys.getrecursionlimit() + 100
    with deep_directories(tree, depth):
        data = nar(tree)
    assert data.count(b"\x09\0\0\0\0\0\0\0directory") == depth + 1


def test_closing_early_closes_the_open_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100_000)
    chunks = nar_chunks(big, chunk_size=1000)
    next(chunks)
    assert len(open_fds_to(big)) == 1  # the file is mid-read
    chunks.close()
    assert open_fds_to(big) == []


# --- equality with nix-store --dump -------------------------------------------------------------

SORT_NAMES = (
    b"B",
    b"a",
    "é".encode(),  # c3 a9
    b"Z",
    b"_",
    b"\xff",  # not UTF-8: as text (surrogate escape U+DCFF) it sorts before the emoji
    b"\x80",  # not UTF-8: as text U+DC80, after "é"; as bytes before it
    "🎉".encode(),  # f0 9f 8e 89
    b"~",
    b"0",
    b" ",
    b"a b",
)

FIXTURES = [
    *(pytest.param(File(data=bytes(range(n))), id=f"file-of-{n}-bytes") for n in (0, 1, 7, 8, 9)),
    pytest.param(File(data=b"#!/bin/sh\n", mode=0o755), id="executable"),
    pytest.param(File(mode=0o755), id="empty-executable"),
    pytest.param(File(data=b"x", mode=0o744), id="owner-execute-bit-alone-makes-executable"),
    pytest.param(File(data=b"x", mode=0o655), id="group-other-execute-is-not-executable"),
    pytest.param(File(data=b"x", mode=0o4755), id="setuid-executable"),
    pytest.param(Dir.of({}), id="empty-directory"),
    pytest.param(Link(target=b"nowhere"), id="top-level-symlink-is-not-followed"),
    pytest.param(
        Dir.of({b"f": File(data=b"hi"), b"to-file": Link(target=b"f")}), id="symlink-to-file"
    ),
    pytest.param(
        Dir.of({b"d": Dir.of({b"x": File()}), b"to-dir": Link(target=b"d")}),
        id="symlink-to-directory",
    ),
    pytest.param(Dir.of({b"dangling": Link(target=b"../nowhere")}), id="dangling-symlink"),
    pytest.param(
        Dir.of({b"abs": Link(target=b"/nix/store/00000000000000000000000000000000-x/bin/x")}),
        id="absolute-symlink",
    ),
    pytest.param(
        Dir.of({f"t{n}".encode(): Link(target=b"x" * n) for n in (1, 7, 8, 9, 4000)}),
        id="symlink-target-lengths",
    ),
    pytest.param(Dir.of({b"odd": Link(target=b"\xff\xfe/\xc3\xa9")}), id="non-utf8-target"),
    pytest.param(
        Dir.of({b"a": Dir.of({b"b": Dir.of({b"c": Dir.of({b"d": File(data=b"deep")})})})}),
        id="nested-directories",
    ),
    pytest.param(Dir.of({n: File(data=n) for n in SORT_NAMES}), id="names-sort-as-bytes"),
    pytest.param(
        Dir.of({n: Dir.of({n: File()}) for n in SORT_NAMES}), id="directory-names-sort-as-bytes"
    ),
    pytest.param(
        # A walker that sorted whole paths would put "a-b" and "a.b" before "a/x".
        Dir.of({b"a": Dir.of({b"x": File()}), b"a-b": File(), b"a.b": File(), b"a0": File()}),
        id="entries-sort-by-name-not-by-path",
    ),
    pytest.param(
        Dir.of(
            {
                "日本語".encode(): File(data="テキスト".encode()),
                "ünïcödé".encode(): Dir.of({"ß".encode(): Link(target="é".encode())}),
            }
        ),
        id="non-ascii-names",
    ),
    pytest.param(Dir.of({b"x" * 255: File(data=b"longest name")}), id="255-byte-name"),
    pytest.param(_mixed_tree(), id="mixed-tree"),
]


@pytest.mark.nix
@pytest.mark.parametrize("node", FIXTURES)
def test_fixture_equals_nix_store_dump(nix: NixEnv, tree: bytes, node: Node) -> None:
    make(node, tree)
    expected = nix.dump(os.fsdecode(tree))
    assert_same_nar(nar(tree), expected)
    assert nar(tree, chunk_size=7) == expected


@pytest.mark.nix
@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param((CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1), id="around-one-chunk"),
        pytest.param((5 * MIB + 3, 0, 17), id="several-mib-then-small"),
    ],
)
def test_large_files_equal_nix_store_dump(nix: NixEnv, tree: bytes, sizes: tuple[int, ...]) -> None:
    make(Dir.of({f"f{i}".encode(): File(data=os.urandom(n)) for i, n in enumerate(sizes)}), tree)
    expected = nix.dump(os.fsdecode(tree))
    assert_same_nar(nar(tree), expected)
    assert_same_nar(nar(tree, chunk_size=65536 + 5), expected)


@pytest.mark.nix
def test_file_system_oddities_equal_nix_store_dump(nix: NixEnv, tmp_path: Path) -> None:
    """Hard links are two files; holes are zeros; directory modes do not matter."""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "original").write_bytes(b"shared")
    os.link(tree / "original", tree / "sub" / "hardlink")
    with (tree / "sparse").open("wb") as f:
        f.seek(3 * MIB)
        f.write(b"end")
    (tree / "sub").chmod(0o500)
    try:
        assert_same_nar(nar(tree), nix.dump(str(tree)))
    finally:
        (tree / "sub").chmod(0o755)


@pytest.mark.nix
def test_trailing_slash_equals_nix_store_dump(nix: NixEnv, tmp_path: Path) -> None:
    """lstat("dir/") is the directory; lstat("link/") follows the link, for Nix as for us."""
    make(
        Dir.of({b"f": File(data=b"x"), b"d": Dir.of({b"g": File()})}), os.fsencode(tmp_path / "dir")
    )
    (tmp_path / "link").symlink_to("dir")
    for path in (f"{tmp_path}/dir/", f"{tmp_path}/link/"):
        assert_same_nar(nar(path), nix.dump(path))
    assert nar(f"{tmp_path}/dir/") == nar(tmp_path / "dir")


def test_paths_in_errors_have_no_double_slash(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NarReadError) as caught:
        nar(f"{tmp_path}/")
    assert caught.value.path == str(tmp_path / "fifo")


@pytest.mark.nix
def test_deep_tree_equals_nix_store_dump(nix: NixEnv, tree: bytes) -> None:
    with deep_directories(tree, sys.getrecursionlimit() + 100):
        assert_same_nar(nar(tree), nix.dump(os.fsdecode(tree)))


# --- random trees, added to a store -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChrootStore:
    """A Nix store rooted at ``root``: store paths are ``/nix/store/…`` to Nix and live at
    ``root/nix/store/…`` on disk (nix_job.nix.nar only ever sees the latter)."""

    nix: NixEnv
    root: Path

    def add(self, path: str | bytes) -> PathInfo:
        """``nix-store --add``, then what Nix registered for the new path."""
        logical = self.nix.text(
            ["nix-store", "--store", str(self.root), "--add", os.fsdecode(path)]
        )
        text = self.nix.text(["nix", "path-info", "--store", str(self.root), "--json", logical])
        return parse_path_info_json(text)[logical]

    def physical(self, info: PathInfo) -> Path:
        return self.root / info.path.lstrip("/")


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> ChrootStore:
    require_nix()
    base = tmp_path_factory.mktemp("nar-store")
    return ChrootStore(nix=NixEnv.create(base / "nix"), root=base / "store")


@pytest.fixture
def store(tmp_path: Path) -> ChrootStore:
    require_nix()
    return ChrootStore(nix=NixEnv.create(tmp_path / "nix"), root=tmp_path / "store")


def _valid_name(name: bytes) -> bool:
    return name not in (b".", b"..") and b"/" not in name and b"\0" not in name


NAMES = st.one_of(
    st.sampled_from(SORT_NAMES),
    st.binary(min_size=1, max_size=10).filter(_valid_name),
    st.text(min_size=1, max_size=6).map(str.encode).filter(_valid_name),
)
MODES = st.sampled_from([0o644, 0o755, 0o744, 0o655, 0o600, 0o700, 0o444, 0o555, 0o500])
FILES = st.builds(File, data=st.binary(max_size=40), mode=MODES)
LINKS = st.builds(
    Link,
    target=st.one_of(
        st.sampled_from([b".", b"..", b"/", b"/nix/store", b"f"]),
        st.binary(min_size=1, max_size=20).filter(lambda t: b"\0" not in t),
    ),
)
TREES: st.SearchStrategy[Node] = st.recursive(
    st.one_of(FILES, LINKS),
    lambda children: st.dictionaries(NAMES, children, max_size=5).map(Dir.of),
    max_leaves=12,
)


@pytest.mark.nix
@settings(max_examples=40, deadline=None)
@given(node=TREES)
def test_random_tree_equals_what_nix_registered(module_store: ChrootStore, node: Node) -> None:
    with tempfile.TemporaryDirectory(dir=module_store.root.parent) as tmp:
        source = os.fsencode(tmp) + b"/tree"
        make(node, source)
        info = module_store.add(source)
        physical = module_store.physical(info)
        expected = module_store.nix.dump(str(physical))
        assert_same_nar(nar(physical), expected)
        assert_same_nar(nar(source), expected)
        assert (sha256(expected), len(expected)) == (info.nar_hash, info.nar_size)
        chunks = list(nar_chunks(physical, chunk_size=64))
        passed = list(verified(chunks, nar_hash=info.nar_hash, nar_size=info.nar_size))
        assert passed == chunks


@settings(max_examples=60, deadline=None)
@given(node=TREES, chunk_size=st.integers(min_value=1, max_value=300))
def test_random_tree_chunking_does_not_change_the_bytes(
    tmp_path_factory: pytest.TempPathFactory, node: Node, chunk_size: int
) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as tmp:
        tree = os.fsencode(tmp) + b"/tree"
        make(node, tree)
        chunks = list(nar_chunks(tree, chunk_size=chunk_size))
        assert b"".join(chunks) == nar(tree)
        assert all(chunk_size <= len(c) <= chunk_size + FRAMING_SLACK for c in chunks[:-1])


# --- verified -----------------------------------------------------------------------------------

DATA = hashlib.sha256(b"seed").digest() * 300  # 9600 bytes
DATA_HASH = sha256(DATA)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def drain(chunks: Iterable[bytes]) -> tuple[bytes, NarMismatch | None]:
    """What an HTTP body would have sent, and the mismatch that aborted it, if any."""
    sent = bytearray()
    try:
        for chunk in chunks:
            sent += chunk
    except NarMismatch as exc:
        return bytes(sent), exc
    return bytes(sent), None


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_verified_passes_a_correct_stream_unchanged() -> None:
    chunks = split(DATA, 1000)
    assert list(verified(chunks, nar_hash=DATA_HASH, nar_size=len(DATA))) == chunks


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda h: h, id="sha256-hex"),
        pytest.param(hex_to_nix32, id="sha256-nix32"),
        pytest.param(
            lambda h: "sha256-" + base64.b64encode(bytes.fromhex(h[7:])).decode(),
            id="sri",
        ),
    ],
)
def test_verified_accepts_every_nix_hash_form(form: Callable[[str], str]) -> None:
    chunks = split(DATA, 4096)
    assert list(verified(chunks, nar_hash=form(DATA_HASH), nar_size=len(DATA))) == chunks


@pytest.mark.parametrize(
    ("nar_hash", "nar_size", "problem"),
    [
        pytest.param("md5:00", 1, "unsupported hash", id="not-sha256"),
        pytest.param("sha256:abc", 1, "unrecognised", id="short-hash"),
        pytest.param(DATA_HASH, -1, "nar_size", id="negative-size"),
    ],
)
def test_verified_refuses_bad_expectations_at_the_call(
    nar_hash: str, nar_size: int, problem: str
) -> None:
    def never() -> Iterator[bytes]:
        pytest.fail("verified read its source before checking its arguments")
        yield b""

    with pytest.raises(ValueError, match=problem):
        verified(never(), nar_hash=nar_hash, nar_size=nar_size)


# (chunks, expected hash, expected size, actual size NarMismatch reports, hash known?)
Case = tuple[list[bytes], str, int, int, bool]
L = len(DATA)
BAD_STREAMS: list[tuple[str, Case]] = [
    ("first-byte-flipped", (split(flip(DATA, 0), 1000), DATA_HASH, L, L, True)),
    ("middle-byte-flipped", (split(flip(DATA, L // 2), 1000), DATA_HASH, L, L, True)),
    ("last-byte-flipped", (split(flip(DATA, L - 1), 1000), DATA_HASH, L, L, True)),
    ("one-byte-too-many-in-last-chunk", (split(DATA + b"\0", 1000), DATA_HASH, L, L + 1, False)),
    ("one-byte-too-many-alone", ([*split(DATA, 1000), b"\0"], DATA_HASH, L, L + 1, False)),
    ("far-too-long-single-chunk", ([DATA * 3], DATA_HASH, L, 3 * L, False)),
    ("one-byte-too-few", (split(DATA[:-1], 1000), DATA_HASH, L, L - 1, True)),
    ("last-chunk-missing", (split(DATA, 1000)[:-1], DATA_HASH, L, 9000, True)),
    ("empty-stream", ([], DATA_HASH, L, 0, True)),
    ("wrong-expected-hash", (split(DATA, 1000), sha256(b"other"), L, L, True)),
    ("expected-size-one-larger", (split(DATA, 1000), DATA_HASH, L + 1, L, True)),
    ("expected-size-one-smaller", (split(DATA, 1000), DATA_HASH, L - 1, L, False)),
    ("single-chunk-flipped", ([flip(DATA, 5)], DATA_HASH, L, L, True)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in BAD_STREAMS])
def test_verified_never_releases_the_end_of_a_bad_stream(case: Case) -> None:
    chunks, nar_hash, nar_size, actual_size, hash_known = case
    sent, exc = drain(verified(chunks, nar_hash=nar_hash, nar_size=nar_size))
    assert exc is not None, "a bad stream passed"
    assert len(sent) < nar_size  # the tail was held back
    assert b"".join(chunks).startswith(sent)  # and what went out was the stream, in order
    assert (exc.expected_hash, exc.expected_size) == (nar_hash, nar_size)
    assert exc.actual_size == actual_size
    if hash_known:
        assert exc.actual_hash == sha256(b"".join(chunks))
    else:
        assert exc.actual_hash is None  # abandoned past nar_size: the rest was never read
    assert isinstance(exc, NarError)
    assert f"{nar_size} bytes" in str(exc) or nar_hash in str(exc)
    assert "nix-store --verify-path" in str(exc)


def test_verified_stops_reading_at_the_first_byte_past_nar_size() -> None:
    pulled = []

    def source() -> Iterator[bytes]:
        for chunk in [*split(DATA, 1000), b"x", b"never read"]:
            pulled.append(chunk)
            yield chunk

    _, exc = drain(verified(source(), nar_hash=DATA_HASH, nar_size=L))
    assert exc is not None
    assert pulled[-1] == b"x"


def test_verified_lets_a_source_error_through_without_releasing_the_tail(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_bytes(os.urandom(10_000))
    (tree / "b").write_bytes(b"x")
    good = nar(tree)
    received: list[bytes] = []

    def source() -> Iterator[bytes]:
        for chunk in nar_chunks(tree, chunk_size=1000):
            received.append(chunk)
            if len(received) == 2:
                (tree / "b").unlink()  # vanishes before the walk reaches it
            yield chunk

    sent = bytearray()

    def send() -> None:
        for chunk in verified(source(), nar_hash=sha256(good), nar_size=len(good)):
            sent.extend(chunk)

    with pytest.raises(NarReadError):
        send()
    assert len(received) > 2
    assert sent == b"".join(received[:-1])  # all but the chunk held when the error came


def test_verified_names_the_path_in_its_message() -> None:
    _, exc = drain(verified([b"x"], nar_hash=DATA_HASH, nar_size=1, path="/nix/store/aaaa-example"))
    assert exc is not None
    assert "/nix/store/aaaa-example" in str(exc)


@pytest.mark.parametrize("stop", ["early", "mismatch", "end"])
def test_verified_closes_its_source(stop: str) -> None:
    closed = []

    def source() -> Iterator[bytes]:
        try:
            yield from split(DATA, 1000)
        finally:
            closed.append(True)

    size = L + 1 if stop == "mismatch" else L
    stream = verified(source(), nar_hash=DATA_HASH, nar_size=size)
    if stop == "early":
        next(stream)
        stream.close()
    else:
        drain(stream)
    assert closed == [True]


CORRUPTIONS = ["none", "flip", "append", "drop", "wrong-hash", "size-plus", "size-minus"]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
    corruption=st.sampled_from(CORRUPTIONS),
    where=st.integers(min_value=0),
)
def test_verified_property(data: bytes, cuts: list[int], corruption: str, where: int) -> None:
    """Over any chunking: a good stream passes whole and unchanged; any corruption raises,
    having sent a strict prefix of the stream and never more than nar_size bytes."""
    nar_hash, nar_size = sha256(data), len(data)
    stream = data
    if corruption == "flip":
        stream = flip(data, where % len(data))
    elif corruption == "append":
        stream = data + bytes([where % 256])
    elif corruption == "drop":
        stream = data[:-1]
    elif corruption == "wrong-hash":
        nar_hash = sha256(data + b"!")
    elif corruption == "size-plus":
        nar_size += 1
    elif corruption == "size-minus":
        nar_size -= 1
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    sent, exc = drain(verified(chunks, nar_hash=nar_hash, nar_size=nar_size))
    assert len(sent) <= nar_size
    if corruption == "none":
        assert exc is None
        assert sent == data
    else:
        assert exc is not None
        assert len(sent) < max(nar_size, 1)
        assert stream.startswith(sent)


# --- a store path changed after Nix registered it -----------------------------------------------


def _unique_tree(path: bytes) -> None:
    make(
        Dir.of(
            {
                b"id": File(data=uuid.uuid4().hex.encode()),
                b"bin": Dir.of({b"tool": File(data=b"#!/bin/sh\necho hi\n" * 100, mode=0o755)}),
                b"lib": Dir.of({b"data": File(data=os.urandom(200_000))}),
                b"link": Link(target=b"bin/tool"),
            }
        ),
        path,
    )


def _writable(path: Path) -> None:
    """Store files are read-only; lift that (mode bits other than u+x are not in the NAR)."""
    path.chmod(path.lstat().st_mode | stat.S_IWUSR)


def _flip_a_byte(p: Path) -> None:
    target = p / "lib" / "data"
    _writable(target)
    with target.open("r+b") as f:
        f.seek(123_456)
        byte = f.read(1)
        f.seek(123_456)
        f.write(bytes([byte[0] ^ 0x80]))


def _drop_execute_bit(p: Path) -> None:
    (p / "bin" / "tool").chmod(0o444)


def _retarget_symlink(p: Path) -> None:
    _writable(p)
    (p / "link").unlink()
    (p / "link").symlink_to("bin/tooL")


def _add_a_file(p: Path) -> None:
    _writable(p / "bin")
    (p / "bin" / "extra").write_bytes(b"")


def _append_a_byte(p: Path) -> None:
    _writable(p / "id")
    with (p / "id").open("ab") as f:
        f.write(b"\n")


@pytest.mark.nix
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(_flip_a_byte, id="byte-flipped-in-place"),
        pytest.param(_drop_execute_bit, id="execute-bit-dropped"),
        pytest.param(_retarget_symlink, id="symlink-retargeted"),
        pytest.param(_add_a_file, id="file-added"),
        pytest.param(_append_a_byte, id="file-grew"),
    ],
)
def test_tampered_store_path_raises_before_its_end(
    store: ChrootStore, tree: bytes, tamper: Callable[[Path], None]
) -> None:
    _unique_tree(tree)
    info = store.add(tree)
    physical = store.physical(info)
    untouched = verified(nar_chunks(physical), nar_hash=info.nar_hash, nar_size=info.nar_size)
    assert b"".join(untouched) == store.nix.dump(str(physical))

    tamper(physical)
    sent, exc = drain(
        verified(
            nar_chunks(physical, chunk_size=4096), nar_hash=info.nar_hash, nar_size=info.nar_size
        )
    )
    assert exc is not None
    assert len(sent) < info.nar_size
    assert nar(physical).startswith(sent)


@pytest.mark.nix
def test_verified_wraps_a_nix_store_dump_stream(store: ChrootStore, tree: bytes) -> None:
    """The fallback path: the same check over ``nix-store --dump`` (NixStore.dump)."""
    _unique_tree(tree)
    info = store.add(tree)
    physical = str(store.physical(info))
    dumper = NixStore(env=store.nix.env())
    with dumper.dump(physical) as chunks:
        passed = b"".join(verified(chunks, nar_hash=info.nar_hash, nar_size=info.nar_size))
    assert passed == nar(physical)

    _flip_a_byte(Path(physical))
    with dumper.dump(physical) as chunks:
        sent, exc = drain(verified(chunks, nar_hash=info.nar_hash, nar_size=info.nar_size))
    assert exc is not None
    assert len(sent) < info.nar_size


# --- errors -------------------------------------------------------------------------------------


def test_missing_path_raises_on_the_first_chunk_not_at_the_call(tmp_path: Path) -> None:
    chunks = nar_chunks(tmp_path / "missing")
    with pytest.raises(NarReadError) as caught:
        next(chunks)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.path == str(tmp_path / "missing")
    assert "vanished" in str(caught.value)


def _first_chunk_then(tree: Path, change: Callable[[], object]) -> NarReadError:
    """Start the NAR of ``tree`` (small chunks), ``change`` the tree, then finish it."""
    chunks = nar_chunks(tree, chunk_size=512)
    next(chunks)
    change()
    with pytest.raises(NarReadError) as caught:
        list(chunks)
    return caught.value


def test_entry_vanishing_mid_walk_raises_naming_it(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "b-dir").mkdir(parents=True)
    (tree / "a-first").write_bytes(b"x" * 4096)  # the first chunk comes while reading this
    (tree / "c-file").write_bytes(b"x")
    exc = _first_chunk_then(tree, (tree / "c-file").unlink)
    assert (exc.errno, exc.path) == (errno.ENOENT, str(tree / "c-file"))
    assert str(tree) in str(exc)


def test_directory_vanishing_mid_walk_raises_naming_it(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "b-dir" / "sub").mkdir(parents=True)
    (tree / "a-first").write_bytes(b"x" * 4096)
    exc = _first_chunk_then(tree, lambda: shutil.rmtree(tree / "b-dir"))
    assert (exc.errno, exc.path) == (errno.ENOENT, str(tree / "b-dir"))


def _append_a_byte_to(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"+")


@pytest.mark.parametrize(
    ("change", "word"),
    [
        pytest.param(lambda f: os.truncate(f, 100), "shrank", id="truncated-below-read"),
        pytest.param(lambda f: os.truncate(f, 6000), "shrank", id="truncated-partly"),
        pytest.param(lambda f: os.truncate(f, 0), "shrank", id="emptied"),
        pytest.param(_append_a_byte_to, "grew", id="appended-one-byte"),
        pytest.param(lambda f: os.truncate(f, 20_000), "grew", id="extended-with-zeros"),
    ],
)
def test_file_changing_size_while_read_raises(
    tmp_path: Path, change: Callable[[Path], object], word: str
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    big = tree / "big"
    big.write_bytes(b"x" * 10_000)
    exc = _first_chunk_then(tree, lambda: change(big))
    assert exc.path == str(big)
    assert exc.errno is None
    assert word in str(exc)
    assert "10000 bytes" in str(exc)
    assert open_fds_to(big) == []


def test_file_larger_than_its_reported_size_raises() -> None:
    """/proc files report size 0 but have contents; nix-store --dump writes them empty."""
    with pytest.raises(NarReadError, match="grew past the 0 bytes"):
        nar("/proc/self/status")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    # AF_UNIX paths are limited to about 108 bytes: bind relative to a short working directory.
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(cwd)


def _char_device(path: Path) -> None:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")


@pytest.mark.parametrize(
    ("create", "kind"),
    [
        pytest.param(_fifo, "FIFO", id="fifo"),
        pytest.param(_socket, "socket", id="socket"),
        pytest.param(_char_device, "character device", id="character-device"),
    ],
)
@pytest.mark.parametrize("nested", [False, True], ids=["top-level", "nested"])
def test_unsupported_file_type_raises_naming_it(
    tmp_path: Path, create: Callable[[Path], None], kind: str, nested: bool
) -> None:
    tree = tmp_path / "tree"
    special = tree / "sub" / "special" if nested else tree
    special.parent.mkdir(parents=True, exist_ok=True)
    create(special)
    with pytest.raises(NarReadError) as caught:
        nar(tree)
    assert caught.value.path == str(special)
    assert f"is a {kind}" in str(caught.value)


@pytest.mark.nix
def test_nix_refuses_a_fifo_too(nix: NixEnv, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    proc = nix.run(["nix-store", "--dump", str(tmp_path / "fifo")], check=False)
    assert proc.returncode != 0
    assert b"unsupported type" in proc.stderr


UNPRIVILEGED_DUMP = """
import json, os, sys
from nix_job.nix.nar import NarReadError, nar_chunks
if os.geteuid() == 0:  # drop to nobody once Python and nix_job are loaded
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
try:
    for _ in nar_chunks(sys.argv[1]):
        pass
except NarReadError as exc:
    print(json.dumps({"errno": exc.errno, "path": exc.path, "message": str(exc)}))
else:
    print("null")
"""


@pytest.mark.parametrize(
    ("denied", "mode", "failing"),
    [
        pytest.param("secret", 0o000, "secret", id="unreadable-file"),
        pytest.param("closed", 0o000, "closed", id="unlistable-directory"),
        pytest.param("closed", 0o644, "closed/inner", id="unsearchable-directory"),
    ],
)
def test_permission_denied_raises_naming_the_path(denied: str, mode: int, failing: str) -> None:
    """Root reads everything, so the NAR is written by a child that drops root for nobody."""
    with tempfile.TemporaryDirectory(prefix="nar-eacces-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - nobody must reach the tree below
        tree = Path(tmp) / "tree"
        (tree / "closed").mkdir(parents=True)
        (tree / "closed" / "inner").write_bytes(b"x")
        (tree / "secret").write_bytes(b"x")
        (tree / denied).chmod(mode)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", UNPRIVILEGED_DUMP, str(tree)],
                env={"PYTHONPATH": str(ROOT)},
                cwd="/",
                capture_output=True,
                check=False,
                timeout=60,
            )
        finally:
            (tree / denied).chmod(0o755)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    found = json.loads(proc.stdout)
    assert found is not None, "the tree was archived despite the denied permission"
    assert found["errno"] == errno.EACCES
    assert found["path"] == str(tree / failing)
    assert "Permission denied" in found["message"]


# --- memory -------------------------------------------------------------------------------------

PEAK_RSS = """
import hashlib, sys
from nix_job.nix.nar import nar_chunks, verified

def peak():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))

before = peak()
digest, size = hashlib.sha256(), 0
for chunk in nar_chunks(sys.argv[1]):
    digest.update(chunk)
    size += len(chunk)
for _ in verified(nar_chunks(sys.argv[1]), nar_hash="sha256:" + digest.hexdigest(), nar_size=size):
    pass
print(peak() - before, size)
"""


@pytest.mark.slow
def test_memory_stays_bounded_on_a_256_mib_file(tmp_path: Path) -> None:
    big = tmp_path / "sparse"
    with big.open("wb") as f:
        f.truncate(256 * MIB)
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(big)],
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        check=True,
        timeout=120,
    )
    growth, size = map(int, proc.stdout.split())
    assert size > 256 * MIB
    assert growth < 16 * MIB, f"peak RSS grew by {growth / MIB:.1f} MiB"
