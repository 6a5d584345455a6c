"""ID token verification against the fake issuer: JWKS caching, refetch, rotation, outages."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from nix_job.core.secret import Secret
from nix_job.exchange.errors import Refused
from nix_job.exchange.jwks import JwksCache, usable_key
from nix_job.exchange.oidc import OidcVerifier, VerifiedToken, check_registered_claims
from nix_job.exchange.policy import IssuerConfig, Policy
from nix_job.exchange.policy_file import parse_policy
from tests.exchange.issuer import FakeIssuer, raw_token
from tests.exchange.support import AUDIENCE

NOW = 1_800_000_000.0


@dataclass
class FakeClock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    with FakeIssuer(name="gh") as fake:
        yield fake


def policy_for(url: str) -> Policy:
    return parse_policy(
        f"""
[issuers.github]
kind = "github"
url = "{url}"
audience = "{AUDIENCE}"

[[rules]]
name = "r"
issuer = "github"
caches = {{ "main" = ["pull"] }}
[rules.match]
repository_id = "4242"
""",
        source="p.toml",
    )


Scenario = Callable[[OidcVerifier, JwksCache, FakeClock], Awaitable[None]]


def run(issuer: FakeIssuer, scenario: Scenario, *, ttl: float = 3600, refetch: float = 60) -> None:
    """Run ``scenario`` in one event loop with a verifier bound to a fresh HTTP client."""

    async def main() -> None:
        clock = FakeClock()
        async with httpx.AsyncClient(timeout=5) as http:
            jwks = JwksCache(http=http, clock=clock, ttl=ttl, refetch_interval=refetch)
            verifier = OidcVerifier(policy=policy_for(issuer.url), jwks=jwks, clock=clock)
            await scenario(verifier, jwks, clock)

    asyncio.run(main())


def claims(issuer: FakeIssuer, *, now: float = NOW) -> dict[str, object]:
    return issuer.github_claims(audience=AUDIENCE, now=now)


async def refused(verifier: OidcVerifier, token: str) -> str:
    with pytest.raises(Refused) as caught:
        await verifier.verify(Secret(token))
    return caught.value.refusal.code


def test_rs256_and_es256_tokens_verify_and_keys_are_cached(issuer: FakeIssuer) -> None:
    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        result = await verifier.verify(Secret(issuer.sign(claims(issuer))))
        assert isinstance(result, VerifiedToken)
        assert result.issuer.name == "github"
        assert result.claims["repository"] == "octo-org/octo-repo"
        await verifier.verify(Secret(issuer.sign(claims(issuer), kid=issuer.ec_kid)))
        assert (issuer.discovery_requests, issuer.jwks_requests) == (1, 1)

    run(issuer, scenario)


def test_keys_are_fetched_again_after_the_ttl(issuer: FakeIssuer) -> None:
    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        await verifier.verify(Secret(issuer.sign(claims(issuer))))
        clock.now += 599
        await verifier.verify(Secret(issuer.sign(claims(issuer, now=clock.now))))
        assert issuer.jwks_requests == 1
        clock.now += 1
        await verifier.verify(Secret(issuer.sign(claims(issuer, now=clock.now))))
        assert issuer.jwks_requests == 2

    run(issuer, scenario, ttl=600)


def test_unknown_kid_refetches_once_and_at_most_every_interval(issuer: FakeIssuer) -> None:
    issuer.add_key("stray", "rsa", publish=False)

    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        await verifier.verify(Secret(issuer.sign(claims(issuer))))
        clock.now += 60
        stray = issuer.sign(claims(issuer, now=clock.now), kid="stray")
        assert await refused(verifier, stray) == "unknown_key"
        assert issuer.jwks_requests == 2  # one refetch for the unknown kid
        assert await refused(verifier, stray) == "unknown_key"
        assert issuer.jwks_requests == 2  # rate-limited: no refetch within the interval
        clock.now += 60
        stray = issuer.sign(claims(issuer, now=clock.now), kid="stray")
        assert await refused(verifier, stray) == "unknown_key"
        assert issuer.jwks_requests == 3

    run(issuer, scenario)


def test_a_rotated_in_key_is_found_by_the_refetch(issuer: FakeIssuer) -> None:
    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        await verifier.verify(Secret(issuer.sign(claims(issuer))))
        clock.now += 61
        issuer.add_key("rotated", "ec")
        await verifier.verify(Secret(issuer.sign(claims(issuer, now=clock.now), kid="rotated")))
        assert issuer.jwks_requests == 2

    run(issuer, scenario)


def test_an_outage_keeps_known_keys_and_bounds_retries(issuer: FakeIssuer) -> None:
    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        await verifier.verify(Secret(issuer.sign(claims(issuer))))
        issuer.fail_status = 503
        clock.now += 7200  # past the TTL: a refresh is tried, fails, the old keys serve
        for _ in range(3):
            await verifier.verify(Secret(issuer.sign(claims(issuer, now=clock.now))))
        assert issuer.discovery_requests == 2  # one failed attempt, not one per request
        clock.now += 10
        await verifier.verify(Secret(issuer.sign(claims(issuer, now=clock.now))))
        assert issuer.discovery_requests == 3
        issuer.fail_status = None
        clock.now += 10
        await verifier.verify(Secret(issuer.sign(claims(issuer, now=clock.now))))
        assert issuer.jwks_requests == 2  # recovered: fresh keys again

    run(issuer, scenario, ttl=600)


def test_an_outage_without_known_keys_is_503_and_bounds_retries(issuer: FakeIssuer) -> None:
    issuer.fail_status = 500

    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        for _ in range(3):
            with pytest.raises(Refused) as caught:
                await verifier.verify(Secret(issuer.sign(claims(issuer))))
            refusal = caught.value.refusal
            assert (refusal.code, refusal.status, refusal.retry_after) == (
                "issuer_unavailable",
                503,
                10,
            )
            assert "answered HTTP 500" in refusal.message
        assert issuer.discovery_requests == 1
        issuer.fail_status = None
        clock.now += 10
        await verifier.verify(Secret(issuer.sign(claims(issuer, now=clock.now))))
        assert issuer.discovery_requests == 2

    run(issuer, scenario)


def test_discovery_naming_another_issuer_is_refused(issuer: FakeIssuer) -> None:
    issuer.discovery_issuer = "https://evil.example.com"

    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        with pytest.raises(Refused) as caught:
            await verifier.verify(Secret(issuer.sign(claims(issuer))))
        assert caught.value.refusal.code == "issuer_unavailable"
        assert "names issuer 'https://evil.example.com'" in caught.value.refusal.message
        assert issuer.jwks_requests == 0

    run(issuer, scenario)


def test_forged_algorithms_are_refused_before_any_key_lookup(issuer: FakeIssuer) -> None:
    payload = claims(issuer)
    signing_input_key = issuer.public_pem(issuer.rsa_kid)

    def hs256_with_public_key() -> str:
        unsigned = raw_token({"alg": "HS256", "kid": issuer.rsa_kid, "typ": "JWT"}, payload, b"")
        head_body = unsigned.rsplit(".", 1)[0]
        mac = hmac.new(signing_input_key, head_body.encode(), hashlib.sha256).digest()
        return raw_token({"alg": "HS256", "kid": issuer.rsa_kid, "typ": "JWT"}, payload, mac)

    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        assert await refused(verifier, hs256_with_public_key()) == "unsupported_algorithm"
        none = raw_token({"alg": "none", "typ": "JWT"}, payload, b"")
        assert await refused(verifier, none) == "unsupported_algorithm"
        assert await refused(verifier, none.replace("none", "RS512")) == "unsupported_algorithm"
        assert issuer.discovery_requests == 0

    run(issuer, scenario)


def test_alg_must_be_the_keys_own(issuer: FakeIssuer) -> None:
    """A header saying RS256 with the kid of the EC key does not pick RS256 for that key."""
    es = issuer.sign(claims(issuer), kid=issuer.ec_kid)
    head, body, sig = es.split(".")
    relabelled = raw_token(
        {"alg": "RS256", "kid": issuer.ec_kid, "typ": "JWT"}, claims(issuer), b"x"
    )

    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        assert await refused(verifier, relabelled) == "unsupported_algorithm"
        assert await refused(verifier, f"{head}.{body}.{sig[:-4]}AAAA") == "bad_signature"

    run(issuer, scenario)


def test_duplicate_payload_keys_are_refused(issuer: FakeIssuer) -> None:
    """A validly signed payload with two `aud` members is ambiguous: refused, not resolved."""
    body = json.dumps(claims(issuer))[:-1] + ', "aud": "other"}'
    forged = issuer.sign_bytes(body.encode())

    async def scenario(verifier: OidcVerifier, jwks: JwksCache, clock: FakeClock) -> None:
        await verifier.verify(Secret(issuer.sign(claims(issuer))))
        assert await refused(verifier, forged) == "malformed_token"

    run(issuer, scenario)


ISSUER = IssuerConfig(name="gh", kind="github", url="https://issuer.test", audience="aud")
GOOD = {"iss": "https://issuer.test", "aud": "aud", "exp": NOW + 300, "nbf": NOW - 5, "iat": NOW}

CLAIMS = [
    pytest.param({}, None, id="good"),
    pytest.param({"aud": ["aud"]}, None, id="aud-one-element-list"),
    pytest.param({"nbf": None}, None, id="no-nbf"),
    pytest.param({"exp": NOW - 29}, None, id="expired-within-leeway"),
    pytest.param({"iat": NOW + 29}, None, id="iat-future-within-leeway"),
    pytest.param({"exp": NOW + 0.5}, None, id="float-times"),
    pytest.param({"iss": "https://other.test"}, "untrusted_issuer", id="other-iss"),
    pytest.param({"aud": "other"}, "wrong_audience", id="other-aud"),
    pytest.param({"aud": ["aud", "other"]}, "wrong_audience", id="aud-two-elements"),
    pytest.param({"aud": None}, "wrong_audience", id="no-aud"),
    pytest.param({"exp": None}, "claim_missing", id="no-exp"),
    pytest.param({"iat": None}, "claim_missing", id="no-iat"),
    pytest.param({"exp": True}, "claim_type", id="exp-bool"),
    pytest.param({"exp": str(NOW + 300)}, "claim_type", id="exp-string"),
    pytest.param({"exp": NOW - 31}, "expired", id="expired"),
    pytest.param({"nbf": NOW + 31}, "not_yet_valid", id="not-yet-valid"),
    pytest.param({"iat": NOW + 31}, "issued_in_future", id="iat-future"),
]


@pytest.mark.parametrize(("over", "code"), CLAIMS)
def test_registered_claims(over: dict[str, object], code: str | None) -> None:
    claims_ = {k: v for k, v in {**GOOD, **over}.items() if v is not None}
    if code is None:
        check_registered_claims(claims_, issuer=ISSUER, now=NOW, leeway=30)
        return
    with pytest.raises(Refused) as caught:
        check_registered_claims(claims_, issuer=ISSUER, now=NOW, leeway=30)
    assert caught.value.refusal.code == code


_JWKS = FakeIssuer(name="keys").jwks()["keys"]
assert isinstance(_JWKS, list)
RSA_JWK = {k: v for k, v in _JWKS[1].items() if k not in ("alg", "use")}
EC_JWK = {k: v for k, v in _JWKS[0].items() if k not in ("alg", "use")}

KEYS = [
    pytest.param({**RSA_JWK, "alg": "RS256", "use": "sig"}, "RS256", id="rsa"),
    pytest.param(RSA_JWK, "RS256", id="rsa-no-alg"),
    pytest.param(EC_JWK, "ES256", id="ec-p256"),
    pytest.param({**EC_JWK, "alg": "RS256"}, None, id="ec-labelled-rs256"),
    pytest.param({**RSA_JWK, "alg": "RS512"}, None, id="rsa-other-alg"),
    pytest.param({**RSA_JWK, "use": "enc"}, None, id="encryption-key"),
    pytest.param({**RSA_JWK, "kid": 7}, None, id="kid-not-string"),
    pytest.param({"kty": "oct", "kid": "k", "k": "c2VjcmV0"}, None, id="symmetric"),
    pytest.param({"kty": "EC", "kid": "k", "crv": "P-384", "x": "a", "y": "b"}, None, id="p384"),
    pytest.param({"kty": "OKP", "kid": "k", "crv": "Ed25519", "x": "a"}, None, id="eddsa"),
    pytest.param("not a key", None, id="not-an-object"),
]


@pytest.mark.parametrize(("raw", "algorithm"), KEYS)
def test_only_rs256_and_es256_keys_are_kept(raw: object, algorithm: str | None) -> None:
    parsed = usable_key(raw)
    if algorithm is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert parsed[1].algorithm_name == algorithm
