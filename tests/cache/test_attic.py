"""attic_client: request shapes, header versus preamble, error mapping, token hygiene."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterator

import httpx
import pytest

from nix_job.cache.answers import AtticUnavailableError
from nix_job.cache.attic import (
    MISSING_PATHS_CHUNK,
    PREAMBLE_THRESHOLD,
    AtticClient,
    CacheConfig,
    UploadResult,
    nar_info_json,
    normalise_endpoint,
)
from nix_job.core.errors import AtticApiError, AtticAuthError, AtticError
from nix_job.core.secret import Secret
from nix_job.nix.path_info import PathInfo
from tests.attic_double.server import AtticDouble
from tests.attic_double.state import ServerConfig

TOKEN = "eyJ.test-token.sig"
HASH = "r5d7217c0rjd5iiz1g2nhvd15frck9x2"
NAR = b"nix-archive-1 pretend" * 1000
INFO = PathInfo(
    path=f"/nix/store/{HASH}-attic-0.1.0",
    nar_hash="sha256:" + hashlib.sha256(NAR).hexdigest(),
    nar_size=len(NAR),
    references=("563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56", f"{HASH}-attic-0.1.0"),
    deriver="yrvi0000000000000000000000000000-attic-0.1.0.drv",
    sigs=("upstream-1:c2ln",),
    ca=None,
)

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler, token: str | None = TOKEN, cache: str = "hello") -> AtticClient:
    http = httpx.Client(transport=httpx.MockTransport(handler))
    return AtticClient(
        endpoint="https://cache.example/",
        cache=cache,
        token=Secret(token) if token is not None else None,
        http=http,
    )


def attic_json(status: int, error: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": status, "error": error, "message": message})


def chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- endpoints and cache config ----------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param("https://cache.example", "https://cache.example/", id="adds-slash"),
        pytest.param("https://cache.example/", "https://cache.example/", id="keeps-slash"),
        pytest.param("http://h:8080/attic//", "http://h:8080/attic/", id="prefix-path"),
        pytest.param(" https://h/ ", "https://h/", id="trims-spaces"),
    ],
)
def test_endpoints_are_normalised_to_end_in_a_slash(given: str, expected: str) -> None:
    assert normalise_endpoint(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("cache.example", id="no-scheme"),
        pytest.param("ftp://cache.example/", id="wrong-scheme"),
        pytest.param("https://", id="no-host"),
        pytest.param("https://h/?x=1", id="query"),
    ],
)
def test_bad_endpoints_are_refused_with_an_example(given: str) -> None:
    with pytest.raises(ValueError, match=r"https://cache\.example\.com/|query or fragment"):
        normalise_endpoint(given)


def test_credentials_in_the_endpoint_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="must not contain credentials") as caught:
        normalise_endpoint(f"https://ci:{TOKEN}@cache.example/")
    assert TOKEN not in str(caught.value)


def test_cache_config_reads_every_field_and_sends_the_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "substituter_endpoint": "https://cache.example/hello",
                "api_endpoint": "https://internal:8080/",
                "public_key": "hello:vlsd7ZHIXNnKXEQShVnd7erE8zcuSKrBWRpV6zTibnA=",
                "is_public": False,
                "store_dir": "/nix/store",
                "priority": 41,
                "upstream_cache_key_names": ["cache.nixos.org-1"],
                "retention_period": "Global",
            },
        )

    config = client_for(handler).cache_config()
    assert config == CacheConfig(
        substituter_endpoint="https://cache.example/hello",
        api_endpoint="https://internal:8080/",
        public_key="hello:vlsd7ZHIXNnKXEQShVnd7erE8zcuSKrBWRpV6zTibnA=",
        is_public=False,
        store_dir="/nix/store",
        upstream_cache_key_names=("cache.nixos.org-1",),
    )
    (request,) = seen
    assert request.method == "GET"
    assert str(request.url) == "https://cache.example/_api/v1/cache-config/hello"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_cache_config_tolerates_missing_and_mistyped_fields() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"store_dir": 7, "is_public": "yes", "public_key": None})

    assert client_for(handler).cache_config() == CacheConfig()


def test_the_advertised_api_endpoint_is_logged_but_not_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        if request.method == "GET":
            return httpx.Response(200, json={"api_endpoint": "https://internal:8080/"})
        return httpx.Response(200, json={"missing_paths": []})

    client = client_for(handler)
    with caplog.at_level(logging.INFO, logger="nix_job.cache.attic"):
        client.cache_config()
    client.missing_paths([HASH])
    assert urls[1] == "https://cache.example/_api/v1/get-missing-paths"
    assert "https://internal:8080/" in caplog.text
    assert "keeps using the configured https://cache.example/" in caplog.text


def test_no_token_means_no_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    client_for(handler, token=None).cache_config()
    assert "Authorization" not in seen[0].headers


# --- get-missing-paths ----------


def test_missing_paths_are_asked_in_chunks_and_merged() -> None:
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        assert request.headers["Content-Type"] == "application/json"
        hashes = body["store_path_hashes"]
        return httpx.Response(200, json={"missing_paths": hashes[:1]})

    hashes = [f"{n:032d}" for n in range(2 * MISSING_PATHS_CHUNK + 5)]
    missing = client_for(handler).missing_paths(hashes + hashes[:10])
    assert [len(b["store_path_hashes"]) for b in bodies] == [  # type: ignore[arg-type]
        MISSING_PATHS_CHUNK,
        MISSING_PATHS_CHUNK,
        5,
    ]
    assert all(b["cache"] == "hello" for b in bodies)
    assert missing == {hashes[0], hashes[MISSING_PATHS_CHUNK], hashes[2 * MISSING_PATHS_CHUNK]}


def test_asking_about_no_paths_sends_nothing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    assert client_for(handler).missing_paths([]) == set()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(httpx.Response(200, json={"missing": []}), id="wrong-key"),
        pytest.param(httpx.Response(200, json={"missing_paths": [1]}), id="not-strings"),
        pytest.param(httpx.Response(200, text="<html>login</html>"), id="html-page"),
    ],
)
def test_an_answer_that_is_not_attic_says_so(answer: httpx.Response) -> None:
    with pytest.raises(AtticApiError, match="Attic server"):
        client_for(lambda _r: answer).missing_paths([HASH])


# --- upload-path ----------


def test_upload_sends_attic_compact_metadata_in_the_header_and_the_nar_as_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(
            200, json={"kind": "Uploaded", "file_size": 123, "frac_deduplicated": None}
        )

    result = client_for(handler).upload(INFO, chunks(NAR))
    assert result == UploadResult(kind="Uploaded", file_size=123, frac_deduplicated=None)
    (request,) = seen
    assert request.method == "PUT"
    assert str(request.url) == "https://cache.example/_api/v1/upload-path"
    assert request.headers["X-Attic-Nar-Info"] == (
        '{"cache":"hello","store_path_hash":"r5d7217c0rjd5iiz1g2nhvd15frck9x2",'
        '"store_path":"/nix/store/r5d7217c0rjd5iiz1g2nhvd15frck9x2-attic-0.1.0",'
        '"references":["563528481rvhc5kxwipjmg6rqrl95mdx-glibc-2.33-56",'
        '"r5d7217c0rjd5iiz1g2nhvd15frck9x2-attic-0.1.0"],"system":null,'
        '"deriver":"yrvi0000000000000000000000000000-attic-0.1.0.drv",'
        f'"sigs":["upstream-1:c2ln"],"ca":null,"nar_hash":"{INFO.nar_hash}",'
        f'"nar_size":{len(NAR)}}}'
    )
    assert "X-Attic-Nar-Info-Preamble-Size" not in request.headers
    assert request.headers["Content-Length"] == str(len(NAR))
    assert "Transfer-Encoding" not in request.headers
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.content == NAR


def _info_with_json_size(size: int) -> PathInfo:
    """INFO with a signature padded so its metadata JSON is exactly ``size`` bytes."""
    bare = len(nar_info_json(dataclasses.replace(INFO, sigs=("k:",)), "hello"))
    return dataclasses.replace(INFO, sigs=("k:" + "A" * (size - bare),))


@pytest.mark.parametrize(
    ("json_size", "via"),
    [
        pytest.param(PREAMBLE_THRESHOLD - 1, "header", id="4095-bytes-header"),
        pytest.param(PREAMBLE_THRESHOLD, "preamble", id="4096-bytes-preamble"),
        pytest.param(50_000, "preamble", id="huge-reference-list-preamble"),
    ],
)
def test_metadata_moves_to_a_preamble_at_4096_bytes(json_size: int, via: str) -> None:
    info = _info_with_json_size(json_size)
    meta = nar_info_json(info, "hello")
    assert len(meta) == json_size
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(200, json={"kind": "Uploaded", "frac_deduplicated": None})

    client_for(handler).upload(info, chunks(NAR))
    (request,) = seen
    if via == "header":
        assert request.headers["X-Attic-Nar-Info"].encode() == meta
        assert request.content == NAR
    else:
        assert "X-Attic-Nar-Info" not in request.headers
        assert request.headers["X-Attic-Nar-Info-Preamble-Size"] == str(json_size)
        assert request.content == meta + NAR
    assert request.headers["Content-Length"] == str(len(request.content))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(
            httpx.Response(200, json={"kind": "Deduplicated", "frac_deduplicated": None}),
            UploadResult(kind="Deduplicated"),
            id="deduplicated",
        ),
        pytest.param(
            httpx.Response(
                200, json={"kind": "Uploaded", "file_size": 9, "frac_deduplicated": 0.5}
            ),
            UploadResult(kind="Uploaded", file_size=9, frac_deduplicated=0.5),
            id="chunked-upload",
        ),
        pytest.param(
            httpx.Response(200, json={"kind": "Teleported", "frac_deduplicated": None}),
            UploadResult(kind="Uploaded"),
            id="unknown-kind-counts-as-uploaded",
        ),
        pytest.param(httpx.Response(200, text="ok"), UploadResult(kind="Uploaded"), id="not-json"),
        pytest.param(httpx.Response(200, json=[1]), UploadResult(kind="Uploaded"), id="json-list"),
    ],
)
def test_upload_results_are_read_as_attic_reads_them(
    answer: httpx.Response, expected: UploadResult
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        return answer

    assert client_for(handler).upload(INFO, chunks(NAR)) == expected


def test_an_error_raised_by_the_nar_stream_reaches_the_caller_unchanged() -> None:
    class Boom(Exception):
        pass

    def broken() -> Iterator[bytes]:
        yield NAR[:100]
        raise Boom

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(200, json={})

    with pytest.raises(Boom):
        client_for(handler).upload(INFO, broken())


# --- errors ----------


def plain(status: int, text: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, text=text, headers=headers)


@pytest.mark.parametrize(
    ("answer", "token", "kind", "phrases"),
    [
        pytest.param(
            attic_json(401, "Unauthorized", "Unauthorized."),
            TOKEN,
            AtticAuthError,
            ["401", "Unauthorized: Unauthorized.", "not expired", "does not exist"],
            id="401-bad-token",
        ),
        pytest.param(
            attic_json(401, "Unauthorized", "Unauthorized."),
            None,
            AtticAuthError,
            ["no token was given", "ATTIC_TOKEN"],
            id="401-no-token",
        ),
        pytest.param(
            attic_json(403, "AccessError", "Access error: User does not have permission."),
            TOKEN,
            AtticAuthError,
            ["403", "'w'", "'r'", "make-token"],
            id="403-missing-permission",
        ),
        pytest.param(
            attic_json(404, "NoSuchCache", "The requested cache does not exist."),
            TOKEN,
            AtticApiError,
            ["cache 'hello'", "does not exist", "attic cache create hello"],
            id="404-no-such-cache",
        ),
        pytest.param(
            attic_json(404, "NotFound", "The URL you requested was not found."),
            TOKEN,
            AtticApiError,
            ["root URL", "not the substituter URL"],
            id="404-wrong-url",
        ),
        pytest.param(
            plain(413, "413 Request Entity Too Large"),
            TOKEN,
            AtticApiError,
            ["request too large", "proxy in front of Attic caps request size"],
            id="413-proxy-cap",
        ),
        pytest.param(
            attic_json(400, "RequestError", "General request error: Bad NAR Hash or Size"),
            TOKEN,
            AtticApiError,
            ["did not match the declared hash", "nix-store --verify-path"],
            id="400-bad-nar-hash",
        ),
        pytest.param(
            attic_json(500, "InternalServerError", "The server encountered an internal error."),
            TOKEN,
            AtticUnavailableError,
            ["HTTP 500", "InternalServerError", "retried"],
            id="500-retryable",
        ),
        pytest.param(
            plain(502, "<html><body>Bad   Gateway</body></html>"),
            TOKEN,
            AtticUnavailableError,
            ["HTTP 502", "<html><body>Bad Gateway</body></html>"],
            id="502-html-from-proxy",
        ),
        pytest.param(
            plain(308, "", Location="https://cache.example/_api/v1/upload-path"),
            TOKEN,
            AtticApiError,
            ["redirected", "https://cache.example/_api/v1/upload-path", "final URL"],
            id="redirect-not-followed",
        ),
        pytest.param(
            plain(422, "Failed to deserialize the JSON body"),
            TOKEN,
            AtticApiError,
            ["HTTP 422", "Failed to deserialize", "report"],
            id="422-framework-rejection",
        ),
    ],
)
def test_error_answers_map_to_errors_that_say_what_to_check(
    answer: httpx.Response,
    token: str | None,
    kind: type[AtticError],
    phrases: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        return answer

    client = client_for(handler, token=token)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(kind) as caught:
        client.upload(INFO, chunks(NAR))
    assert type(caught.value) is kind
    assert caught.value.status == answer.status_code
    for phrase in phrases:
        assert phrase in caught.value.message
    assert TOKEN not in caught.value.message
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(
    ("exc", "phrase"),
    [
        pytest.param(httpx.ConnectError("connection refused"), "could not talk to", id="connect"),
        pytest.param(httpx.ReadTimeout("read timed out"), "timed out", id="read-timeout"),
        pytest.param(httpx.RemoteProtocolError("peer closed"), "could not talk to", id="reset"),
    ],
)
def test_transport_failures_are_retryable_errors(exc: Exception, phrase: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(AtticUnavailableError, match=phrase) as caught:
        client_for(handler).missing_paths([HASH])
    assert caught.value.status is None


# --- over real HTTP, against the Attic double ----------


def test_uploads_over_http_are_verified_by_the_double_in_both_forms() -> None:
    with AtticDouble() as double:
        double.create_cache("hello")
        token = double.make_token({"hello": "rw"})
        with AtticClient(endpoint=double.url, cache="hello", token=Secret(token)) as client:
            assert client.cache_config().upstream_cache_key_names == ("cache.nixos.org-1",)
            assert client.missing_paths([INFO.hash]) == {INFO.hash}
            small = client.upload(INFO, chunks(NAR))
            big_info = _info_with_json_size(5000)
            other = b"another nar" * 5000
            big_info = dataclasses.replace(
                big_info,
                path="/nix/store/" + "1" * 32 + "-big",
                references=(),
                nar_hash="sha256:" + hashlib.sha256(other).hexdigest(),
                nar_size=len(other),
            )
            big = client.upload(big_info, chunks(other, 65536))
            assert client.missing_paths([INFO.hash, big_info.hash]) == set()
        assert small.kind == "Uploaded"
        assert big.kind == "Uploaded"
        uploads = double.upload_requests()
        assert [r.metadata_via for r in uploads] == ["header", "preamble"]
        assert all(r.auth_scheme == "bearer" for r in uploads)
        stored = double.get_object("hello", INFO.path)
        assert stored is not None
        assert stored.nar == NAR
        assert stored.references == INFO.references


def test_an_early_answer_before_the_body_is_sent_is_read() -> None:
    # Proof of possession off: a known NAR is answered before its body is read.
    with AtticDouble(config=ServerConfig(require_proof_of_possession=False)) as double:
        double.create_cache("hello")
        double.put_path("hello", store_path="/nix/store/" + "2" * 32 + "-seed", nar=NAR)
        token = double.make_token({"hello": "rw"})
        with AtticClient(endpoint=double.url, cache="hello", token=Secret(token)) as client:
            result = client.upload(INFO, chunks(NAR, 512))
        assert result.kind == "Deduplicated"
        assert double.has_path("hello", INFO.path)
