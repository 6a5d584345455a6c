"""nix_store: the path-info JSON shapes of every Nix version, and the real Nix CLI calls."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from nix_job.core.errors import StoreError
from nix_job.core.nixhash import nix32_encode, to_attic_sha256
from nix_job.nix.path_info import PathInfo, parse_path_info_json
from nix_job.nix.store import DUMP_CHUNK, NixStore
from tests.nixenv import require_nix

FIXTURES = Path(__file__).parents[1] / "fixtures" / "path-info"
S = "/nix/store/"
DEP = "0qysdm558fkxcyg4bjpx75pk98w67jvk-dep-1113a7a1fffb"
TOP = "iyc4ddkbsa4aqpvhfg9v77v0jx4hqm3w-top-1113a7a1fffb"
DRV = "s86wxnyibhn2kdzrrny3a83624fckkzf-top-1113a7a1fffb.drv"
DEP_SIG = (
    "fixture-upstream-1:X9i/u2lKohMz1gz/uRL8uGwrQTXAj8uNvM2Yet67rhnUlRI+ZXCPbEa6vuY6tbC1VGYoTWFp"
    "qpj7NMnTZsT3Cw=="
)

EXPECTED_FIXTURE = {
    S + DEP: PathInfo(
        path=S + DEP,
        nar_hash="sha256:fb47cb006b97651e43d85d256bba62d25d2def0d35ac87576fb06d889bb9ada3",
        nar_size=128,
        references=(),
        deriver="7b1n8s8fjygy1hji9ds6i1frxy345ybk-dep-1113a7a1fffb.drv",
        sigs=(DEP_SIG,),
        ca=None,
    ),
    S + TOP: PathInfo(
        path=S + TOP,
        nar_hash="sha256:ca6661242998ded35aca67509d8ff9ef8dcd2ef741640edced7c3ccc92b4672e",
        nar_size=592,
        references=(DEP, TOP),
        deriver=DRV,
        sigs=(),
        ca=None,
    ),
    S + DRV: PathInfo(
        path=S + DRV,
        nar_hash="sha256:7649871af39527949762966c9639cb15ee1ea5567c7d1d9e9dd0d55ecd9d3607",
        nar_size=600,
        references=("7b1n8s8fjygy1hji9ds6i1frxy345ybk-dep-1113a7a1fffb.drv",),
        deriver=None,
        sigs=(),
        ca="text:sha256:1g2iqzadfmi5801wdnqq9n75pxgwi89n7rj09k9hhym6m2aw3kxf",
    ),
}


# --- JSON shapes (no Nix needed) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture",
    [
        pytest.param("nix-2.8.json", id="nix-2.8-list-recorded"),
        pytest.param("nix-2.19.json", id="nix-2.19-object-keyed-by-path"),
        pytest.param("nix-2.33-v2.json", id="nix-2.33-envelope-structured-hashes"),
        pytest.param("nix-2.33-v3.json", id="nix-2.33-envelope-structured-signatures"),
    ],
)
def test_every_path_info_shape_parses_to_the_same_infos(fixture: str) -> None:
    infos = parse_path_info_json((FIXTURES / fixture).read_text())
    assert infos == EXPECTED_FIXTURE


def test_the_recorded_hash_agrees_with_nix_store_query_hash() -> None:
    # `nix-store -q --hash` printed this nix32 form for TOP when the fixture was recorded.
    nix32 = "sha256:0bk7nj9cqg3wxpf0wr21ywpcv3ggz67rsl37r9dd7plq54j62rna"
    assert to_attic_sha256(nix32) == EXPECTED_FIXTURE[S + TOP].nar_hash


def test_signature_key_names_and_store_path_hash_come_from_the_info() -> None:
    dep = EXPECTED_FIXTURE[S + DEP]
    assert dep.sig_key_names == frozenset({"fixture-upstream-1"})
    assert dep.hash == DEP[:32]


def _entry(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "path": S + TOP,
        "narHash": "sha256-ymZhJCmY3tNaymdQnY/5743NLvdBZA7c7Xw8zJK0Zy4=",
        "narSize": 592,
        "references": [],
    }
    base.update(changes)
    return base


SHA256_OF_EMPTY = hashlib.sha256(b"").digest()
SHA1_OF_EMPTY = hashlib.sha1(b"").digest()  # noqa: S324 - a fixed-output hash, not security


@pytest.mark.parametrize(
    ("ca", "expected"),
    [
        pytest.param(None, None, id="input-addressed"),
        pytest.param("fixed:r:sha256:abc", "fixed:r:sha256:abc", id="text-form-kept-as-is"),
        pytest.param(
            {"method": "nar", "hash": "sha256-" + base64.b64encode(SHA256_OF_EMPTY).decode()},
            "fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            id="nar-method-sri-hash",
        ),
        pytest.param(
            {
                "method": "flat",
                "hash": {"algorithm": "sha256", "format": "base16", "hash": SHA256_OF_EMPTY.hex()},
            },
            "fixed:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            id="flat-method-structured-base16",
        ),
        pytest.param(
            {
                "method": "nar",
                "hash": {
                    "algorithm": "sha1",
                    "format": "base64",
                    "hash": base64.b64encode(SHA1_OF_EMPTY).decode(),
                },
            },
            "fixed:r:sha1:" + nix32_encode(SHA1_OF_EMPTY),
            id="sha1-fixed-output",
        ),
        pytest.param(
            {"method": "git", "hash": "sha1:" + SHA1_OF_EMPTY.hex()},
            "fixed:git:sha1:" + nix32_encode(SHA1_OF_EMPTY),
            id="git-method-hex",
        ),
    ],
)
def test_content_addresses_render_as_narinfo_ca_lines(ca: Any, expected: str | None) -> None:
    info = parse_path_info_json(json.dumps([_entry(ca=ca)]))[S + TOP]
    assert info.ca == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("not json", "not JSON", id="not-json"),
        pytest.param("42", "top level is int", id="top-level-number"),
        pytest.param('["x"]', "is str, not an object", id="entry-not-object"),
        pytest.param(json.dumps([_entry(narHash=None)]), "entry for", id="hash-missing"),
        pytest.param(json.dumps([_entry(narHash="md5-abc")]), "entry for", id="hash-not-sha256"),
        pytest.param(json.dumps([_entry(narSize=-1)]), "not a size", id="negative-size"),
        pytest.param(json.dumps([_entry(narSize=True)]), "not a size", id="boolean-size"),
        pytest.param(
            json.dumps([_entry(path="/tmp/x")]), "not a store path", id="not-a-store-path"
        ),
        pytest.param(json.dumps([_entry(references=["bad"])]), "not a store path", id="bad-ref"),
        pytest.param(json.dumps([_entry(signatures=[3])]), "signature", id="bad-signature"),
        pytest.param(json.dumps([_entry(ca={"method": "zz"})]), "content address", id="bad-ca"),
        pytest.param(
            json.dumps([_entry(ca={"method": "nar", "hash": "sha256-AAAA"})]),
            "wrong length",
            id="ca-hash-wrong-length",
        ),
    ],
)
def test_unreadable_path_info_is_a_store_error_that_names_the_problem(
    text: str, message: str
) -> None:
    with pytest.raises(StoreError, match="path-info") as caught:
        parse_path_info_json(text)
    assert message in caught.value.message
    assert "nix --version" in caught.value.message


def test_a_chroot_store_dir_from_the_envelope_is_honoured() -> None:
    envelope = {
        "version": 2,
        "storeDir": "/custom/store",
        "info": {TOP: {**_entry(references=[TOP]), "path": None, "storeDir": "/custom/store"}},
    }
    envelope["info"][TOP].pop("path")  # type: ignore[index]
    infos = parse_path_info_json(json.dumps(envelope))
    assert list(infos) == ["/custom/store/" + TOP]
    assert infos["/custom/store/" + TOP].references == (TOP,)


# --- failures of the CLI itself (a stand-in binary directory, no Nix needed) --------------------


def _fake_bin(tmp_path: Path, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("nix", "nix-store"):
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\n" + script)
        exe.chmod(0o755)
    return bin_dir


def test_a_missing_nix_binary_says_how_to_fix_it(tmp_path: Path) -> None:
    store = NixStore({"PATH": str(tmp_path)}, nix_bin_dir=tmp_path / "nowhere", read_db=False)
    with pytest.raises(StoreError, match="could not start") as caught:
        store.valid([S + TOP])
    assert "on PATH" in caught.value.message


def test_a_failing_query_carries_the_stderr_tail(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, "echo 'error: database is locked' >&2; exit 1\n")
    store = NixStore({"PATH": "/usr/bin:/bin"}, nix_bin_dir=bin_dir, read_db=False)
    with pytest.raises(StoreError, match="database is locked") as caught:
        store.query_infos([S + TOP])
    assert "exit code 1" in caught.value.message


def test_a_failing_dump_raises_after_streaming_what_it_printed(tmp_path: Path) -> None:
    bin_dir = _fake_bin(tmp_path, "printf partial; echo 'error: getting status' >&2; exit 1\n")
    store = NixStore({"PATH": "/usr/bin:/bin"}, nix_bin_dir=bin_dir, read_db=False)
    got: list[bytes] = []
    with pytest.raises(StoreError, match="getting status") as caught, store.dump(S + TOP) as nar:
        got.extend(nar)
    assert got == [b"partial"]
    assert "nix-store --verify-path" in caught.value.message


def test_non_store_paths_are_never_passed_to_nix(tmp_path: Path) -> None:
    # The stand-in fails on any call: nothing valid-looking means no call at all.
    bin_dir = _fake_bin(tmp_path, "exit 1\n")
    store = NixStore({"PATH": "/usr/bin:/bin"}, nix_bin_dir=bin_dir, read_db=False)
    junk = ["/tmp/x", S + "short-name", S + TOP + "/bin/sh", "relative"]
    assert store.valid(junk) == set()
    assert store.query_infos(junk) == {}
    assert store.closure(junk) == []


_LOGGING_NIX_STORE = """echo "$*" >> "$(dirname "$0")/calls"
case "$*" in
  *--requisites*)
    case "$*" in *-gone*) echo "error: path '...-gone' is not valid" >&2; exit 1 ;; esac
    for a in "$@"; do case "$a" in /nix/store/*) echo "$a" ;; esac; done ;;
  *--check-validity*)
    for a in "$@"; do case "$a" in *-gone) echo "$a" ;; esac; done ;;
esac
"""


@pytest.mark.parametrize(
    ("roots", "expected", "calls"),
    [
        pytest.param([S + TOP, S + DEP], [S + DEP, S + TOP], ["--requisites"], id="all-valid"),
        pytest.param(
            [S + TOP, S + "00000000000000000000000000000000-gone"],
            [S + TOP],
            ["--requisites", "--check-validity", "--requisites"],
            id="an-invalid-root",
        ),
    ],
)
def test_closure_asks_nix_once_unless_a_root_is_invalid(
    tmp_path: Path, roots: list[str], expected: list[str], calls: list[str]
) -> None:
    bin_dir = _fake_bin(tmp_path, _LOGGING_NIX_STORE)
    store = NixStore({"PATH": "/usr/bin:/bin"}, nix_bin_dir=bin_dir, read_db=False)

    closure = store.closure(roots)

    assert closure == expected
    made = (bin_dir / "calls").read_text().splitlines()
    assert [next(w for w in line.split() if w in calls) for line in made] == calls


# --- real Nix ---------------------------------------------------------------------------------


def nix_env(cache_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["NIX_CONFIG"] = (
        "substituters =\nbuild-users-group =\nsandbox = false\n"
        "experimental-features = nix-command\n"
    )
    env["XDG_CACHE_HOME"] = str(cache_home)
    return env


def build(env: dict[str, str], workdir: Path, big_bytes: int = 0) -> dict[str, str]:
    """Build leaf <- mid <- top (top also refers to itself); returns {name: store path}."""
    tag = uuid.uuid4().hex[:12]
    expr = f"""
      let
        mk = name: script: derivation {{
          inherit name; system = builtins.currentSystem; builder = "/bin/sh";
          PATH = "/usr/bin:/bin"; args = [ "-c" script ];
        }};
        leaf = mk "leaf-{tag}" "echo leaf-{tag} > $out; head -c {big_bytes} /dev/urandom >> $out";
        mid = mk "mid-{tag}" "mkdir $out; echo ${{leaf}} > $out/leaf";
        top = mk "top-{tag}" "mkdir $out; echo ${{mid}} > $out/mid; ln -s $out $out/self";
      in {{ inherit leaf mid top; }}
    """
    nix_file = workdir / f"closure-{tag}.nix"
    nix_file.write_text(expr)
    out = subprocess.run(
        ["nix-build", str(nix_file), "--no-out-link"],
        env=env,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split()
    return dict(zip(["leaf", "mid", "top"], out, strict=True))


@pytest.fixture(scope="module")
def built_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, str]]:
    require_nix()
    work = tmp_path_factory.mktemp("nix-store")
    env = nix_env(work / "cache")
    return env, build(env, work, big_bytes=3 * DUMP_CHUNK + 17)


@pytest.fixture(params=["database", "nix-cli"])
def built(
    request: pytest.FixtureRequest, built_paths: tuple[dict[str, str], dict[str, str]]
) -> tuple[NixStore, dict[str, str]]:
    """The same store read both ways: from Nix's database, and through the Nix CLI."""
    env, paths = built_paths
    store = NixStore(env, read_db=request.param == "database")
    assert store.reads_database == (request.param == "database")
    return store, paths


@pytest.mark.nix
def test_query_infos_matches_the_legacy_queries(
    built: tuple[NixStore, dict[str, str]], tmp_path: Path
) -> None:
    store, p = built
    infos = store.query_infos([p["top"], p["leaf"]])
    assert set(infos) == {p["top"], p["leaf"]}
    top = infos[p["top"]]
    legacy_hash = subprocess.run(
        ["nix-store", "-q", "--hash", p["top"]],
        env=nix_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert top.nar_hash == to_attic_sha256(legacy_hash)
    base = p["top"].removeprefix(S)
    assert set(top.references) == {base, p["mid"].removeprefix(S)}
    assert top.deriver is not None
    assert top.deriver.endswith(".drv")
    assert not top.deriver.startswith("/")


@pytest.mark.nix
def test_query_infos_leaves_out_invalid_and_non_store_paths(
    built: tuple[NixStore, dict[str, str]],
) -> None:
    store, p = built
    gone = S + "00000000000000000000000000000000-gone"
    infos = store.query_infos([gone, p["leaf"], "/etc/passwd"])
    assert list(infos) == [p["leaf"]]


@pytest.mark.nix
def test_closure_lists_dependencies_first_and_skips_invalid_roots(
    built: tuple[NixStore, dict[str, str]],
) -> None:
    store, p = built
    closure = store.closure([p["top"], S + "00000000000000000000000000000000-gone"])
    assert set(closure) == {p["leaf"], p["mid"], p["top"]}
    assert closure.index(p["leaf"]) < closure.index(p["mid"]) < closure.index(p["top"])
    assert store.closure([S + "00000000000000000000000000000000-gone"]) == []


@pytest.mark.nix
def test_valid_is_the_subset_nix_holds(built: tuple[NixStore, dict[str, str]]) -> None:
    store, p = built
    gone = S + "00000000000000000000000000000000-gone"
    assert store.valid([p["mid"], gone, "/tmp"]) == {p["mid"]}


@pytest.mark.nix
def test_dump_streams_the_nar_nix_hashed(built: tuple[NixStore, dict[str, str]]) -> None:
    store, p = built
    info = store.query_infos([p["leaf"]])[p["leaf"]]
    digest = hashlib.sha256()
    sizes = []
    with store.dump(p["leaf"]) as nar:
        for chunk in nar:
            digest.update(chunk)
            sizes.append(len(chunk))
    assert "sha256:" + digest.hexdigest() == info.nar_hash
    assert sum(sizes) == info.nar_size
    assert len(sizes) > 1
    assert max(sizes) <= DUMP_CHUNK


@pytest.mark.nix
def test_leaving_a_dump_early_is_clean(built: tuple[NixStore, dict[str, str]]) -> None:
    store, p = built
    with store.dump(p["leaf"]) as nar:
        first = next(iter(nar))
    assert first.startswith(b"\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1")


@pytest.mark.nix
def test_dumping_a_collected_path_is_a_store_error(built: tuple[NixStore, dict[str, str]]) -> None:
    store, _ = built
    with (
        pytest.raises(StoreError, match="exit code"),
        store.dump(S + "00000000000000000000000000000000-gone") as nar,
    ):
        list(nar)
