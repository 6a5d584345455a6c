"""nix_job.core.nixhash converts every hash form Nix prints, and agrees with real Nix."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nix_job.core.nixhash import (
    NIX32_ALPHABET,
    base_name,
    hash_part,
    nix32_decode,
    nix32_encode,
    to_attic_sha256,
)
from tests.nixenv import NixEnv, hex_to_nix32, require_nix, write_derivations

EMPTY_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_NIX32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
EMPTY_B64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
H = "r5d7217c0rjd5iiz1g2nhvd15frck9x2"


@pytest.mark.parametrize(
    ("hex_digest", "nix32"),
    [
        pytest.param(EMPTY_HEX, EMPTY_NIX32, id="sha256-of-empty"),
        pytest.param("00" * 31 + "01", "0080" + "0" * 48, id="last-byte-is-most-significant"),
        pytest.param("ff" + "00" * 31, "0" * 50 + "7z", id="first-byte-is-least-significant"),
        pytest.param("", "", id="empty"),
        pytest.param("ff", "7z", id="one-byte"),
    ],
)
def test_nix32_matches_nix_outputs(hex_digest: str, nix32: str) -> None:
    assert nix32_encode(bytes.fromhex(hex_digest)) == nix32
    assert nix32_decode(nix32) == bytes.fromhex(hex_digest)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("e" * 52, "invalid nix-base32 character", id="letter-e-not-in-alphabet"),
        pytest.param("0" * 51 + "u", "invalid nix-base32 character", id="letter-u"),
        pytest.param("0" * 51 + "A", "invalid nix-base32 character", id="uppercase"),
        pytest.param("z" + "0" * 51, "excess bits", id="top-bits-overflow"),
    ],
)
def test_nix32_decode_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        nix32_decode(text)


@given(st.binary(max_size=64))
def test_nix32_round_trips_bytes(data: bytes) -> None:
    encoded = nix32_encode(data)
    assert len(encoded) == (len(data) * 8 + 4) // 5
    assert set(encoded) <= set(NIX32_ALPHABET)
    assert nix32_decode(encoded) == data


@given(st.text(alphabet=NIX32_ALPHABET, min_size=52, max_size=52))
def test_nix32_decode_is_canonical_or_rejects(text: str) -> None:
    try:
        raw = nix32_decode(text)
    except ValueError:
        assert text[0] not in "01"
        return
    assert nix32_encode(raw) == text


SHA = "sha256:" + EMPTY_HEX


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("sha256-" + EMPTY_B64, id="sri-from-path-info-json"),
        pytest.param("sha256:" + EMPTY_NIX32, id="nix32-from-nix-store-q-hash"),
        pytest.param(SHA, id="hex-from-atticd"),
        pytest.param("sha256:" + EMPTY_HEX.upper(), id="uppercase-hex"),
        pytest.param(EMPTY_HEX, id="bare-hex"),
        pytest.param(EMPTY_NIX32, id="bare-nix32"),
        pytest.param(f"  {SHA}\n", id="surrounding-whitespace"),
        pytest.param({"algorithm": "sha256", "format": "base64", "hash": EMPTY_B64}, id="v2-b64"),
        pytest.param({"algorithm": "sha256", "format": "nix32", "hash": EMPTY_NIX32}, id="v2-32"),
        pytest.param({"algorithm": "sha256", "hash": EMPTY_HEX}, id="structured-bare-hex"),
        pytest.param({"algo": "sha256", "hash": "sha256-" + EMPTY_B64}, id="structured-algo-sri"),
    ],
)
def test_to_attic_sha256_normalises_every_nix_form(value: object) -> None:
    assert to_attic_sha256(value) == SHA


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param("md5:" + "0" * 32, "only sha256", id="md5"),
        pytest.param("sha512-" + EMPTY_B64, "only sha256", id="sri-sha512"),
        pytest.param("sha256-not*base64", "bad base64", id="sri-bad-base64"),
        pytest.param("sha256-" + base64.b64encode(b"short").decode(), "32 bytes", id="sri-short"),
        pytest.param("sha256:" + EMPTY_HEX[:-2], "unrecognised", id="hex-too-short"),
        pytest.param("sha256:" + "g" * 64, "unrecognised", id="hex-bad-digit"),
        pytest.param(42, "must be a string", id="not-a-string"),
        pytest.param({"algorithm": "sha512", "hash": EMPTY_HEX}, "unsupported", id="v2-sha512"),
        pytest.param({"algorithm": "sha256"}, "without a 'hash'", id="v2-no-hash"),
    ],
)
def test_to_attic_sha256_rejects(value: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        to_attic_sha256(value)


@given(st.binary(min_size=32, max_size=32))
def test_every_form_of_one_digest_normalises_to_the_same_hex(digest: bytes) -> None:
    expected = "sha256:" + digest.hex()
    forms = [
        "sha256-" + base64.b64encode(digest).decode(),
        "sha256:" + nix32_encode(digest),
        "sha256:" + digest.hex(),
        digest.hex().upper(),
    ]
    assert {to_attic_sha256(form) for form in forms} == {expected}
    assert hex_to_nix32(expected) == "sha256:" + nix32_encode(digest)


@pytest.mark.parametrize(
    ("path", "store_dir", "expected"),
    [
        pytest.param(f"/nix/store/{H}-hello-2.12", "/nix/store", f"{H}-hello-2.12", id="full-path"),
        pytest.param(f"/nix/store/{H}-hello/bin/hello", "/nix/store", f"{H}-hello", id="subpath"),
        pytest.param(f"{H}-x.drv", "/nix/store", f"{H}-x.drv", id="base-name"),
        pytest.param(f"/gnu/store/{H}-guix", "/gnu/store/", f"{H}-guix", id="other-store-dir"),
        pytest.param(f"/nix/store/{H}-a+b_c?=.d", "/nix/store", f"{H}-a+b_c?=.d", id="name-chars"),
    ],
)
def test_base_name_and_hash_part(path: str, store_dir: str, expected: str) -> None:
    assert base_name(path, store_dir) == expected
    assert hash_part(path, store_dir) == H


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"/nix/store/{H}", id="no-name"),
        pytest.param(f"/nix/store/{H[:-1]}-x", id="short-hash"),
        pytest.param(f"/nix/store/{'e' * 32}-x", id="hash-not-nix32"),
        pytest.param(f"/nix/store/{H}-a b", id="space-in-name"),
        pytest.param(f"/other/{H}-x", id="outside-the-store"),
        pytest.param("/nix/store/.links", id="links-dir"),
    ],
)
def test_base_name_rejects(path: str) -> None:
    with pytest.raises(ValueError, match="not a store path"):
        base_name(path)


# --- cross-checks against real Nix -------------------------------------------------------


@pytest.fixture
def nix(tmp_path: Path) -> NixEnv:
    require_nix()
    return NixEnv.create(tmp_path / "nix")


@pytest.mark.nix
def test_nix_store_hash_and_path_info_agree_with_the_nar_digest(
    nix: NixEnv, tmp_path: Path
) -> None:
    dep, top = write_derivations(tmp_path, count=2, chain=True, size=5000).build(nix)
    for path in (dep, top):
        digest = hashlib.sha256(nix.dump(path)).hexdigest()
        infos = nix.path_info_json(path)
        assert isinstance(infos, list)  # Nix 2.8: a list; >= 2.19 would be keyed by path
        info = infos[0]
        assert to_attic_sha256(nix.query("--hash", path)[0]) == "sha256:" + digest
        assert to_attic_sha256(info["narHash"]) == "sha256:" + digest
        assert hex_to_nix32("sha256:" + digest) == nix.query("--hash", path)[0]
        assert hash_part(info["path"]) == base_name(path)[:32]
        assert [base_name(r) for r in info.get("references", [])] == [
            base_name(r) for r in nix.query("--references", path)
        ]


@pytest.mark.nix
def test_nix32_encode_agrees_with_nix_hash_to_base32(nix: NixEnv) -> None:
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(40)]
    digests += [bytes(32), b"\xff" * 32, bytes(31) + b"\x01"]
    out = nix.text(["nix", "hash", "to-base32", "--type", "sha256", *(d.hex() for d in digests)])
    assert out.split() == [nix32_encode(d) for d in digests]
    sri = nix.text(["nix", "hash", "to-sri", "--type", "sha256", *(d.hex() for d in digests)])
    assert [to_attic_sha256(s) for s in sri.split()] == ["sha256:" + d.hex() for d in digests]
