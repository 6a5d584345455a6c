"""The Attic double follows attic's rules: one case per validation rule and status code."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nix_job.core.nixhash import nix32_encode
from tests.attic_double import AtticDouble, Faults, ServerConfig, fingerprint
from tests.attic_double.protocol import CLAIM_NAMESPACE

REPO = Path(__file__).resolve().parent.parent
H1 = "0" * 32
H2 = "1" * 32
H3 = "2" * 32
TokenFor = Callable[[AtticDouble], str | None]


@pytest.fixture
def double() -> Iterator[AtticDouble]:
    with AtticDouble() as d:
        d.create_cache("demo")
        d.create_cache("pub", public=True)
        yield d


def client(double: AtticDouble, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=double.url, headers=headers, timeout=10)


def nar_bytes(seed: str, size: int = 600) -> bytes:
    return (seed.encode() * size)[:size]


def metadata(
    nar: bytes, *, cache: str = "demo", h: str = H1, name: str = "hello", **over: object
) -> dict[str, object]:
    info: dict[str, object] = {
        "cache": cache,
        "store_path_hash": h,
        "store_path": f"/nix/store/{h}-{name}",
        "references": [],
        "system": None,
        "deriver": None,
        "sigs": [],
        "ca": None,
        "nar_hash": "sha256:" + hashlib.sha256(nar).hexdigest(),
        "nar_size": len(nar),
    }
    info.update(over)
    return info


def put(
    c: httpx.Client, info: object, body: bytes, *, via: str = "header", chunked: bool = False
) -> httpx.Response:
    raw = json.dumps(info, separators=(",", ":")).encode()
    if via == "header":
        headers, content = {"X-Attic-Nar-Info": raw.decode()}, body
    else:
        headers, content = {"X-Attic-Nar-Info-Preamble-Size": str(len(raw))}, raw + body
    if chunked:
        data = content

        def stream() -> Iterator[bytes]:
            for i in range(0, len(data), 100):
                yield data[i : i + 100]

        return c.put("_api/v1/upload-path", headers=headers, content=stream())
    return c.put("_api/v1/upload-path", headers=headers, content=content)


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["code"] == response.status_code
    return response.status_code, body["error"]


def token(perms: dict[str, str]) -> TokenFor:
    return lambda d: d.make_token(perms)


# --- auth and the discovery rule ---------------------------------------------------------


def _claims(caches: object) -> TokenFor:
    """Claims signed when the test runs (not at collection: a long run would expire them)."""

    def sign(d: AtticDouble) -> str:
        now = int(time.time())
        return d.sign_claims(
            {"sub": "x", "exp": now + 60, "nbf": now, CLAIM_NAMESPACE: {"caches": caches}}
        )

    return sign


@pytest.mark.parametrize(
    ("cache", "token_for", "expected"),
    [
        pytest.param("demo", token({"demo": "rw"}), (200, None), id="owner-reads-config"),
        pytest.param("demo", token({"demo": "r"}), (200, None), id="pull-token-reads-config"),
        pytest.param("demo", lambda d: None, (401, "Unauthorized"), id="anonymous-private-401"),
        pytest.param("demo", token({"other": "rw"}), (401, "Unauthorized"), id="other-cache-401"),
        pytest.param("demo", token({"demo": "w"}), (403, "AccessError"), id="push-only-403"),
        pytest.param("nope", token({"*": "r"}), (404, "NoSuchCache"), id="missing-cache-404"),
        pytest.param("nope", lambda d: None, (401, "Unauthorized"), id="missing-cache-anon-401"),
        pytest.param("pub", lambda d: None, (200, None), id="anonymous-public-reads"),
        pytest.param("demo", token({"de*": "r"}), (200, None), id="wildcard-pattern-matches"),
        pytest.param(
            "demo",
            token({"*": "r", "demo": "w"}),
            (403, "AccessError"),
            id="exact-pattern-beats-wildcard",
        ),
        pytest.param(
            "demo",
            _claims({"d*": {"w": 1}, "*": {"r": 1}}),
            (403, "AccessError"),
            id="first-matching-wildcard-wins",
        ),
        pytest.param(
            "demo",
            lambda d: d.make_token({"demo": "r"}, valid_for=-10),
            (401, "Unauthorized"),
            id="expired-token-is-anonymous",
        ),
        pytest.param(
            "demo",
            lambda d: d.make_token({"demo": "r"}, now=int(time.time()) + 600),
            (401, "Unauthorized"),
            id="not-yet-valid-token-is-anonymous",
        ),
        pytest.param(
            "demo",
            lambda d: AtticDouble(token_secret=b"another-secret-of-32-bytes-min!!").make_token(
                {"demo": "r"}
            ),
            (401, "Unauthorized"),
            id="token-from-another-server-is-anonymous",
        ),
        pytest.param(
            "demo", _claims({"demo": {"r": True}}), (401, "Unauthorized"), id="bool-claim-invalid"
        ),
        pytest.param(
            "demo", _claims({"demo": {"r": 2}}), (401, "Unauthorized"), id="claim-value-2-invalid"
        ),
        pytest.param(
            "demo",
            lambda d: d.sign_claims({"sub": "x", "exp": int(time.time()) + 60}),
            (401, "Unauthorized"),
            id="token-without-attic-claim-is-anonymous",
        ),
        pytest.param(
            "demo", lambda d: "not-a-jwt", (401, "Unauthorized"), id="garbage-token-is-anonymous"
        ),
    ],
)
def test_cache_config_applies_permissions_and_discovery_rule(
    double: AtticDouble, cache: str, token_for: TokenFor, expected: tuple[int, str | None]
) -> None:
    with client(double, token_for(double)) as c:
        response = c.get(f"_api/v1/cache-config/{cache}")
    if expected[1] is None:
        assert response.status_code == expected[0]
        assert response.json()["is_public"] is (cache == "pub")
    else:
        assert error_of(response) == expected


@pytest.mark.parametrize(
    ("authorization", "status", "scheme"),
    [
        pytest.param("Bearer {t}", 200, "bearer", id="bearer"),
        pytest.param("bearer {t}", 200, "bearer", id="bearer-lowercase"),
        pytest.param("BEARER {t}", 200, "bearer", id="bearer-uppercase"),
        pytest.param("Basic {basic}", 200, "basic", id="basic-password-is-token"),
        pytest.param("Basic {basic_user}", 200, "basic", id="basic-username-ignored"),
        pytest.param("Basic {basic_nocolon}", 401, "basic", id="basic-without-colon-anonymous"),
        pytest.param("Bearer  {t}", 401, "bearer", id="two-spaces-is-a-bad-token"),
        pytest.param("Token {t}", 401, None, id="unknown-scheme-anonymous"),
    ],
)
def test_authorization_header_schemes(
    double: AtticDouble, authorization: str, status: int, scheme: str | None
) -> None:
    t = double.make_token({"demo": "r"}, sub="alice")
    header = authorization.format(
        t=t,
        basic=base64.b64encode(f":{t}".encode()).decode(),
        basic_user=base64.b64encode(f"someone:{t}".encode()).decode(),
        basic_nocolon=base64.b64encode(t.encode()).decode(),
    )
    response = httpx.get(
        double.url + "_api/v1/cache-config/demo", headers={"Authorization": header}
    )
    assert response.status_code == status
    recorded = double.requests[-1]
    assert recorded.auth_scheme == scheme
    assert recorded.subject == ("alice" if status == 200 else None)


def test_cache_config_builds_endpoints_from_host_and_forwarded_proto(double: AtticDouble) -> None:
    t = double.make_token({"demo": "r"})
    with client(double, t) as c:
        plain = c.get("_api/v1/cache-config/demo").json()
        proxied = c.get(
            "_api/v1/cache-config/demo",
            headers={"Host": "cache.example", "X-Forwarded-Proto": "https"},
        ).json()
    assert plain["api_endpoint"] == double.url
    assert plain["substituter_endpoint"] == double.url + "demo"
    assert plain["public_key"] == double.cache("demo").public_key
    assert "keypair" not in plain
    assert list(plain) == [
        "substituter_endpoint",
        "api_endpoint",
        "public_key",
        "is_public",
        "store_dir",
        "priority",
        "upstream_cache_key_names",
        "retention_period",
    ]
    assert plain["priority"] == 41
    assert plain["upstream_cache_key_names"] == ["cache.nixos.org-1"]
    assert proxied["api_endpoint"] == "https://cache.example/"
    assert proxied["substituter_endpoint"] == "https://cache.example/demo"


def test_configured_api_endpoint_overrides_host(double: AtticDouble) -> None:
    double.config = ServerConfig(api_endpoint="https://attic.internal:8080/")
    with client(double, double.make_token({"demo": "r"})) as c:
        config = c.get("demo/attic-cache-info").json()
    assert config["api_endpoint"] == "https://attic.internal:8080/"
    assert config["substituter_endpoint"] == "https://attic.internal:8080/demo"


# --- cache creation ----------------------------------------------------------------------

CREATE = {
    "keypair": "Generate",
    "is_public": True,
    "store_dir": "/nix/store",
    "priority": 42,
    "upstream_cache_key_names": [],
}


@pytest.mark.parametrize(
    ("name", "perms", "body", "expected"),
    [
        pytest.param("team-a", {"team-*": "cc"}, CREATE, (200, None), id="create-with-cc"),
        pytest.param("demo", {"*": "cc"}, CREATE, (400, "CacheAlreadyExists"), id="exists-400"),
        pytest.param("team-a", {"team-*": "r"}, CREATE, (403, "AccessError"), id="no-cc-403"),
        pytest.param("team-a", {}, CREATE, (401, "Unauthorized"), id="anonymous-401"),
        pytest.param(
            "team-a",
            {"*": "cc"},
            {k: v for k, v in CREATE.items() if k != "priority"},
            (422, "plain"),
            id="missing-field-422",
        ),
    ],
)
def test_create_cache(
    double: AtticDouble,
    name: str,
    perms: dict[str, str],
    body: dict[str, object],
    expected: tuple[int, str | None],
) -> None:
    with client(double, double.make_token(perms) if perms else None) as c:
        response = c.post(f"_api/v1/cache-config/{name}", json=body)
    if expected[1] is None:
        assert response.status_code == 200
        assert response.content == b""
        created = double.cache(name)
        assert (created.is_public, created.priority) == (True, 42)
        assert created.public_key.startswith(f"{name}:")
    elif expected[1] == "plain":
        assert response.status_code == expected[0]
        assert response.headers["content-type"].startswith("text/plain")
    else:
        assert error_of(response) == expected


# --- get-missing-paths -------------------------------------------------------------------


def test_get_missing_paths_is_a_set_difference(double: AtticDouble) -> None:
    double.put_path("demo", store_path=f"/nix/store/{H1}-a", nar=b"a")
    double.put_path("pub", store_path=f"/nix/store/{H2}-b", nar=b"b")
    with client(double, double.make_token({"demo": "rw"})) as c:
        response = c.post(
            "_api/v1/get-missing-paths",
            json={"cache": "demo", "store_path_hashes": [H1, H2, H3, H3], "extra": 1},
        )
        empty = c.post("_api/v1/get-missing-paths", json={"cache": "demo", "store_path_hashes": []})
    assert response.status_code == 200
    assert sorted(response.json()["missing_paths"]) == [H2, H3]
    assert empty.json() == {"missing_paths": []}


BIG = {"cache": "demo", "store_path_hashes": [H1] * 70_000}


@pytest.mark.parametrize(
    ("content", "headers", "token_perms", "expected"),
    [
        pytest.param(
            b"{not json",
            {"Content-Type": "application/json"},
            {"demo": "w"},
            (400, "plain"),
            id="bad-json-400",
        ),
        pytest.param(
            json.dumps({"cache": "demo", "store_path_hashes": []}).encode(),
            {},
            {"demo": "w"},
            (415, "plain"),
            id="no-content-type-415",
        ),
        pytest.param(
            json.dumps({"cache": "demo"}).encode(),
            {"Content-Type": "application/json"},
            {"demo": "w"},
            (422, "plain"),
            id="missing-field-422",
        ),
        pytest.param(
            json.dumps({"cache": "demo", "store_path_hashes": ["e" * 32]}).encode(),
            {"Content-Type": "application/json"},
            {"demo": "w"},
            (422, "plain"),
            id="invalid-hash-422",
        ),
        pytest.param(
            json.dumps({"cache": "demo", "store_path_hashes": [H1[:31]]}).encode(),
            {"Content-Type": "application/json"},
            {"demo": "w"},
            (422, "plain"),
            id="short-hash-422",
        ),
        pytest.param(
            json.dumps({"cache": "-demo", "store_path_hashes": []}).encode(),
            {"Content-Type": "application/json"},
            {"demo": "w"},
            (422, "plain"),
            id="invalid-cache-name-422",
        ),
        pytest.param(
            json.dumps(BIG).encode(),
            {"Content-Type": "application/json"},
            {"demo": "w"},
            (413, "plain"),
            id="over-2mb-413",
        ),
        pytest.param(
            json.dumps({"cache": "demo", "store_path_hashes": []}).encode(),
            {"Content-Type": "application/json"},
            {},
            (401, "Unauthorized"),
            id="anonymous-401",
        ),
        pytest.param(
            json.dumps({"cache": "demo", "store_path_hashes": []}).encode(),
            {"Content-Type": "application/json"},
            {"demo": "r"},
            (403, "AccessError"),
            id="pull-only-403",
        ),
        pytest.param(
            json.dumps({"cache": "pub", "store_path_hashes": []}).encode(),
            {"Content-Type": "application/json"},
            {},
            (403, "AccessError"),
            id="anonymous-on-public-403",
        ),
        pytest.param(
            json.dumps({"cache": "nope", "store_path_hashes": []}).encode(),
            {"Content-Type": "application/json"},
            {"*": "w"},
            (404, "NoSuchCache"),
            id="missing-cache-404",
        ),
    ],
)
def test_get_missing_paths_rejections(
    double: AtticDouble,
    content: bytes,
    headers: dict[str, str],
    token_perms: dict[str, str],
    expected: tuple[int, str],
) -> None:
    with client(double, double.make_token(token_perms) if token_perms else None) as c:
        response = c.post("_api/v1/get-missing-paths", content=content, headers=headers)
    if expected[1] == "plain":
        assert response.status_code == expected[0]
        assert response.headers["content-type"].startswith("text/plain")
    else:
        assert error_of(response) == expected


# --- upload-path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("via", "chunked"),
    [
        pytest.param("header", False, id="header-content-length"),
        pytest.param("header", True, id="header-chunked"),
        pytest.param("preamble", False, id="preamble-content-length"),
        pytest.param("preamble", True, id="preamble-chunked"),
    ],
)
def test_upload_stores_the_object_and_answers_uploaded(
    double: AtticDouble, via: str, chunked: bool
) -> None:
    nar = nar_bytes("upload")
    info = metadata(nar, references=[f"{H2}-dep", f"{H1}-hello"], deriver=f"{H3}-hello.drv")
    with client(double, double.make_token({"demo": "rw"}, sub="pusher")) as c:
        response = put(c, info, nar, via=via, chunked=chunked)
    assert response.status_code == 200
    assert response.text == f'{{"kind":"Uploaded","file_size":{len(nar)},"frac_deduplicated":null}}'
    stored = double.get_object("demo", f"/nix/store/{H1}-hello")
    assert stored is not None
    assert stored.nar == nar
    assert stored.references == (f"{H2}-dep", f"{H1}-hello")
    assert stored.created_by == "pusher"
    assert stored.kind == "Uploaded"
    recorded = double.upload_requests()[-1]
    assert recorded.metadata_via == via
    assert recorded.metadata == info
    assert (recorded.header("transfer-encoding") == "chunked") is chunked


def test_upload_accepts_a_nix32_nar_hash(double: AtticDouble) -> None:
    nar = nar_bytes("nix32")
    info = metadata(nar, nar_hash="sha256:" + nix32_encode(hashlib.sha256(nar).digest()))
    with client(double, double.make_token({"demo": "w"})) as c:
        assert put(c, info, nar).status_code == 200
    obj = double.get_object("demo", H1)
    assert obj is not None
    assert obj.nar_hash == "sha256:" + hashlib.sha256(nar).hexdigest()


NAR = nar_bytes("rejected")
SRI = "sha256-" + base64.b64encode(hashlib.sha256(NAR).digest()).decode()


@pytest.mark.parametrize(
    ("info", "body", "extra_headers", "detail"),
    [
        pytest.param(
            metadata(NAR),
            NAR,
            {"drop-info": "1"},
            "X-Attic-Nar-Info must be set",
            id="no-metadata-header",
        ),
        pytest.param(
            metadata(NAR),
            NAR,
            {"X-Attic-Nar-Info-Preamble-Size": str(2 * 1024 * 1024)},
            "Upload info is too large",
            id="preamble-too-large",
        ),
        pytest.param(
            metadata(NAR),
            b"{}",
            {"X-Attic-Nar-Info-Preamble-Size": "500"},
            "Upload info doesn't match specified size",
            id="preamble-short-body",
        ),
        pytest.param(
            metadata(NAR, nar_hash=SRI), NAR, {}, "invalid hash", id="sri-nar-hash-rejected"
        ),
        pytest.param(
            metadata(NAR, nar_hash="sha256:abc"),
            NAR,
            {},
            "invalid hash",
            id="short-nar-hash-rejected",
        ),
        pytest.param(
            metadata(NAR, store_path_hash="e" * 32),
            NAR,
            {},
            "invalid store path hash",
            id="invalid-store-path-hash",
        ),
        pytest.param(
            metadata(NAR, cache="-x"), NAR, {}, "invalid cache name", id="invalid-cache-name"
        ),
        pytest.param(
            {k: v for k, v in metadata(NAR).items() if k != "sigs"},
            NAR,
            {},
            "missing field `sigs`",
            id="missing-sigs",
        ),
        pytest.param(metadata(NAR, nar_size=-1), NAR, {}, "nar_size", id="negative-size"),
        pytest.param(
            metadata(NAR, references=[f"/nix/store/{H2}-dep"]),
            NAR,
            {},
            "base names",
            id="full-path-reference",
        ),
        pytest.param(
            metadata(NAR, store_path=f"/nix/store/{H2}-hello"),
            NAR,
            {},
            "does not match",
            id="store-path-hash-mismatch",
        ),
        pytest.param(metadata(NAR), NAR[:-1], {}, "Bad NAR Hash or Size", id="short-nar"),
        pytest.param(
            metadata(NAR), NAR[:-1] + b"?", {}, "Bad NAR Hash or Size", id="wrong-nar-hash"
        ),
        pytest.param(
            metadata(NAR, nar_size=len(NAR) + 5),
            NAR,
            {},
            "Bad NAR Hash or Size",
            id="declared-size-too-big",
        ),
    ],
)
def test_upload_rejections_are_request_errors_and_store_nothing(
    double: AtticDouble,
    info: dict[str, object],
    body: bytes,
    extra_headers: dict[str, str],
    detail: str,
) -> None:
    headers = {} if "drop-info" in extra_headers else {"X-Attic-Nar-Info": json.dumps(info)}
    headers.update({k: v for k, v in extra_headers.items() if k != "drop-info"})
    with client(double, double.make_token({"*": "rw"})) as c:
        response = c.put("_api/v1/upload-path", headers=headers, content=body)
    assert error_of(response) == (400, "RequestError")
    assert response.json()["message"].startswith("General request error: ")
    assert detail in response.json()["message"]
    assert double.objects() == []


def test_upload_accepts_full_path_references_when_not_strict(double: AtticDouble) -> None:
    double.config = ServerConfig(strict_metadata=False)
    info = metadata(NAR, references=[f"/nix/store/{H2}-dep"])
    with client(double, double.make_token({"demo": "w"})) as c:
        assert put(c, info, NAR).status_code == 200


@pytest.mark.parametrize(
    ("cache", "perms", "expected"),
    [
        pytest.param("demo", {}, (401, "Unauthorized"), id="anonymous-401"),
        pytest.param("demo", {"demo": "r"}, (403, "AccessError"), id="pull-only-403"),
        pytest.param("pub", {}, (403, "AccessError"), id="anonymous-on-public-403"),
        pytest.param("nope", {"*": "w"}, (404, "NoSuchCache"), id="missing-cache-404"),
        pytest.param("nope", {"demo": "w"}, (401, "Unauthorized"), id="missing-cache-no-perm-401"),
    ],
)
def test_upload_permission_errors(
    double: AtticDouble, cache: str, perms: dict[str, str], expected: tuple[int, str]
) -> None:
    with client(double, double.make_token(perms) if perms else None) as c:
        response = put(c, metadata(NAR, cache=cache), NAR)
    assert error_of(response) == expected
    assert double.objects() == []


def test_upload_of_a_known_nar_is_deduplicated_across_caches(double: AtticDouble) -> None:
    with client(double, double.make_token({"*": "rw"})) as c:
        first = put(c, metadata(NAR, cache="pub"), NAR)
        second = put(c, metadata(NAR, cache="demo", h=H2), NAR)
        forged = put(c, metadata(NAR, cache="demo", h=H3), b"x" * len(NAR))
    assert first.json()["kind"] == "Uploaded"
    assert second.text == '{"kind":"Deduplicated","frac_deduplicated":null}'
    assert error_of(forged) == (400, "RequestError")
    assert "Bad NAR Hash or Size" in forged.json()["message"]
    assert [o.store_path_hash for o in double.objects("demo")] == [H2]


def test_dedup_without_proof_of_possession_answers_before_reading_the_body(
    double: AtticDouble,
) -> None:
    double.config = ServerConfig(require_proof_of_possession=False)
    double.put_path("pub", store_path=f"/nix/store/{H1}-x", nar=NAR)
    with client(double, double.make_token({"demo": "w"})) as c:
        response = put(c, metadata(NAR, h=H2), b"anything at all" * 100)
    assert response.json()["kind"] == "Deduplicated"
    assert response.headers["connection"] == "close"
    assert double.has_path("demo", H2)


def test_reupload_replaces_the_object(double: AtticDouble) -> None:
    other = nar_bytes("second")
    with client(double, double.make_token({"demo": "w"})) as c:
        put(c, metadata(NAR), NAR)
        put(c, metadata(other, ca="fixed:r:sha256:abc"), other)
    objects = double.objects("demo")
    assert len(objects) == 1
    assert (objects[0].nar, objects[0].ca) == (other, "fixed:r:sha256:abc")


# --- Nix read side -----------------------------------------------------------------------


def test_narinfo_has_atticd_layout_and_a_valid_signature(double: AtticDouble) -> None:
    refs = [f"{H2}-dep", f"{H1}-hello"]
    info = metadata(NAR, references=refs, deriver=f"{H3}-hello.drv", ca="fixed:r:sha256:x")
    with client(double, double.make_token({"demo": "rw"})) as c:
        put(c, info, NAR)
        response = c.get(f"demo/{H1}.narinfo")
        head = c.head(f"demo/{H1}.narinfo")
    key = double.cache("demo")
    nar_hex = hashlib.sha256(NAR).hexdigest()
    lines = response.text.splitlines()
    sig = lines[7].removeprefix("Sig: demo:")
    assert lines == [
        f"StorePath: /nix/store/{H1}-hello",
        f"URL: nar/{H1}.nar",
        "Compression: none",
        f"NarHash: sha256:{nar_hex}",
        f"NarSize: {len(NAR)}",
        f"References: {H2}-dep {H1}-hello",
        f"Deriver: {H3}-hello.drv",
        f"Sig: demo:{sig}",
        "CA: fixed:r:sha256:x",
    ]
    assert response.headers["content-type"] == "text/x-nix-narinfo"
    message = fingerprint(
        store_path=f"/nix/store/{H1}-hello",
        nar_hash="sha256:" + nar_hex,
        nar_size=len(NAR),
        references=refs,
    )
    assert message == (
        f"1;/nix/store/{H1}-hello;sha256:{nix32_encode(hashlib.sha256(NAR).digest())};"
        f"{len(NAR)};/nix/store/{H2}-dep,/nix/store/{H1}-hello"
    )
    public = base64.b64decode(key.public_key.split(":", 1)[1])
    Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(sig), message.encode())
    assert head.status_code == 200
    assert head.content == b""


def test_narinfo_without_references_keeps_the_references_line(double: AtticDouble) -> None:
    double.put_path("demo", store_path=f"/nix/store/{H1}-leaf", nar=NAR)
    with client(double, double.make_token({"demo": "r"})) as c:
        text = c.get(f"demo/{H1}.narinfo").text
    assert "\nReferences: \n" in text
    assert "Deriver" not in text
    assert "FileHash" not in text
    assert "System" not in text


@pytest.mark.parametrize(
    ("url", "perms", "expected"),
    [
        pytest.param(
            f"demo/{H2}.narinfo", {}, (404, "NoSuchObject"), id="missing-object-404-even-anonymous"
        ),
        pytest.param(
            f"nope/{H1}.narinfo", {}, (404, "NoSuchObject"), id="missing-cache-404-even-anonymous"
        ),
        pytest.param(
            f"demo/{H1}.narinfo", {}, (401, "Unauthorized"), id="existing-object-anonymous-401"
        ),
        pytest.param(
            f"demo/{H1}.narinfo",
            {"demo": "w"},
            (403, "AccessError"),
            id="existing-object-push-only-403",
        ),
        pytest.param(
            "demo/not-a-hash.narinfo",
            {"demo": "r"},
            (500, "InvalidStorePathHash"),
            id="malformed-hash-500",
        ),
        pytest.param(f"demo/{H1}.ls", {"demo": "r"}, (404, "NotFound"), id="ls-suffix-404"),
        pytest.param(f"demo/{H1}", {"demo": "r"}, (404, "NotFound"), id="no-suffix-404"),
        pytest.param(
            f"demo/nar/{H1}.nar.zst", {"demo": "r"}, (404, "NotFound"), id="nar-suffix-must-be-nar"
        ),
        pytest.param(f"demo/nar/{H1}.nar", {}, (401, "Unauthorized"), id="nar-anonymous-401"),
        pytest.param(f"demo/nar/{H2}.nar", {}, (404, "NoSuchObject"), id="nar-missing-404"),
        pytest.param(
            "demo/nix-cache-info", {}, (401, "Unauthorized"), id="cache-info-anonymous-401"
        ),
        pytest.param(
            "nope/nix-cache-info", {"*": "r"}, (404, "NoSuchCache"), id="cache-info-missing-404"
        ),
        pytest.param("_api/v1/nothing", {}, (404, "NotFound"), id="unknown-api-route-404"),
        pytest.param("a/b/c/d", {}, (404, "NotFound"), id="unknown-route-404"),
    ],
)
def test_read_side_errors(
    double: AtticDouble, url: str, perms: dict[str, str], expected: tuple[int, str]
) -> None:
    double.put_path("demo", store_path=f"/nix/store/{H1}-x", nar=NAR)
    with client(double, double.make_token(perms) if perms else None) as c:
        response = c.get(url)
    assert error_of(response) == expected


def test_public_cache_serves_anonymous_nix_with_visibility_header(double: AtticDouble) -> None:
    double.put_path("pub", store_path=f"/nix/store/{H1}-x", nar=NAR)
    info = httpx.get(double.url + "pub/nix-cache-info")
    narinfo = httpx.get(double.url + f"pub/{H1}.narinfo")
    nar = httpx.get(double.url + f"pub/nar/{H1}.nar")
    assert info.text == "WantMassQuery: 1\nStoreDir: /nix/store\nPriority: 41\n"
    assert info.headers["content-type"] == "text/x-nix-cache-info"
    assert nar.content == NAR
    for response in (info, narinfo, nar):
        assert response.status_code == 200
        assert response.headers["x-attic-cache-visibility"] == "public"


@pytest.mark.parametrize(
    ("request_bytes", "status", "body_start"),
    [
        pytest.param(b"GET / HTTP/1.0\r\n\r\n", 400, b"No host", id="missing-host-400"),
        pytest.param(
            b"GET /-bad/nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            400,
            b"Invalid URL",
            id="invalid-cache-name-in-url-400-plain",
        ),
        pytest.param(
            b"PUT /demo/nix-cache-info HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n",
            405,
            b"",
            id="nix-put-cache-info-405",
        ),
    ],
)
def test_framework_rejections_are_plain(
    double: AtticDouble, request_bytes: bytes, status: int, body_start: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", double.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert body.startswith(body_start)
    assert b"application/json" not in head


# --- faults ------------------------------------------------------------------------------


def test_first_n_uploads_fail_then_succeed(double: AtticDouble) -> None:
    double.faults = Faults(fail_first_uploads=2)
    with client(double, double.make_token({"demo": "w"})) as c:
        statuses = [put(c, metadata(NAR), NAR).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert [r.fault for r in double.upload_requests()] == ["upload-status", "upload-status", None]


def test_upload_failure_rate_is_seeded_and_repeatable(double: AtticDouble) -> None:
    def run() -> list[int]:
        double.faults = Faults(upload_failure_rate=0.5, seed=7, upload_failure_status=503)
        with client(double, double.make_token({"demo": "w"})) as c:
            return [put(c, metadata(NAR), NAR).status_code for _ in range(12)]

    first, second = run(), run()
    assert first == second
    assert set(first) == {200, 503}


def test_upload_drop_resets_the_connection_mid_body(double: AtticDouble) -> None:
    double.faults = Faults(fail_first_uploads=1, upload_failure="drop", drop_after_bytes=100)
    with client(double, double.make_token({"demo": "w"})) as c:
        with pytest.raises(httpx.TransportError):
            put(c, metadata(NAR), NAR, chunked=True)
        assert put(c, metadata(NAR), NAR).status_code == 200
    dropped = double.upload_requests()[0]
    assert (dropped.status, dropped.fault) == (None, "upload-drop")
    assert dropped.body_size >= 100


@pytest.mark.parametrize(
    ("faults", "path", "status", "content_type"),
    [
        pytest.param(
            Faults(unauthorized=True),
            "_api/v1/cache-config/demo",
            401,
            "application/json",
            id="unauthorized-everything",
        ),
        pytest.param(
            Faults(garbage_status=200),
            "_api/v1/cache-config/demo",
            200,
            "text/html",
            id="garbage-200",
        ),
        pytest.param(
            Faults(garbage_status=502),
            "_api/v1/cache-config/demo",
            502,
            "text/html",
            id="garbage-502",
        ),
        pytest.param(
            Faults(missing_paths_body_limit=10),
            "_api/v1/get-missing-paths",
            413,
            "text/plain",
            id="missing-paths-proxy-cap",
        ),
        pytest.param(
            Faults(upload_body_limit=100),
            "_api/v1/upload-path",
            413,
            "text/plain",
            id="upload-proxy-cap",
        ),
    ],
)
def test_response_faults(
    double: AtticDouble, faults: Faults, path: str, status: int, content_type: str
) -> None:
    double.faults = faults
    with client(double, double.make_token({"demo": "rw"})) as c:
        if path.endswith("upload-path"):
            response = put(c, metadata(NAR), NAR, chunked=True)
        elif path.endswith("get-missing-paths"):
            response = c.post(path, json={"cache": "demo", "store_path_hashes": [H1]})
        else:
            response = c.get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith(content_type)
    assert double.objects() == []


def test_response_delay_is_applied_and_recorded(double: AtticDouble) -> None:
    with double.faulted(Faults(response_delay_s=0.2)):
        httpx.get(double.url)
    httpx.get(double.url)
    slow, fast = double.requests
    assert slow.ended_mono - slow.started_mono >= 0.2
    assert double.faults == Faults()
    assert fast.status == 200


def test_write_requests_and_timestamps_are_recorded(double: AtticDouble) -> None:
    with client(double, double.make_token({"demo": "rw"})) as c:
        c.get("_api/v1/cache-config/demo")
        c.post("_api/v1/get-missing-paths", json={"cache": "demo", "store_path_hashes": [H1]})
        put(c, metadata(NAR), NAR)
    writes = double.write_requests()
    assert [w.path for w in writes] == ["/_api/v1/get-missing-paths", "/_api/v1/upload-path"]
    assert writes[0].ended_mono <= writes[1].started_mono
    assert writes[1].body_size == len(NAR)
    assert writes[1].header("authorization") is not None
    obj = double.objects("demo")[0]
    assert writes[1].started_mono <= obj.stored_mono <= writes[1].ended_mono


# --- python -m tests.attic_double --------------------------------------------------------


def test_module_main_writes_state_and_stops_on_sigterm(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.attic_double",
                "--cache",
                "demo",
                "--state-file",
                str(state_file),
            ],
            cwd=REPO,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 30
        while not state_file.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        state = json.loads(state_file.read_text())
        assert oct(state_file.stat().st_mode & 0o777) == "0o600"
        push = {"Authorization": f"Bearer {state['push_token']}"}
        pull = {"Authorization": f"Bearer {state['pull_token']}"}
        url = state["url"] + "_api/v1/get-missing-paths"
        body = {"cache": "demo", "store_path_hashes": [H1]}
        assert httpx.post(url, json=body, headers=push).status_code == 200
        assert httpx.post(url, json=body, headers=pull).status_code == 403
        config = httpx.get(state["url"] + "_api/v1/cache-config/demo", headers=pull).json()
        assert config["public_key"] == state["public_key"]
        assert state["substituter"] == state["url"] + "demo"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
    assert "stopping" in log.read_text()
