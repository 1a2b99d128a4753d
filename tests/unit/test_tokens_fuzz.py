"""Property-based fuzzing of token parsing: whatever arrives as a bearer token (random
text, random segment counts, random base64, random JSON headers and claims, even random
claims correctly signed by the trusted key), the verifier either returns an Identity for
a token that deserves one or raises Unauthenticated — never another exception."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from datapunk_shared.auth.identity import Identity
from datapunk_shared.errors import Unauthenticated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.token_kit import AUDIENCE, ISSUER, KID, b64, b64json, claims, ec_key, sign, verifier

KEY = ec_key()
VERIFIER = verifier(KEY)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis/ directory left in the checkout
    suppress_health_check=[HealthCheck.too_slow],
)


def outcome(token: str) -> Identity | Unauthenticated:
    """What the verifier makes of ``token``; any exception but Unauthenticated fails."""
    try:
        return asyncio.run(VERIFIER.verify(token))
    except Unauthenticated as refused:
        return refused


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)


_DROP = object()


def mutated(
    valid: dict[str, Any], likely: dict[str, st.SearchStrategy[Any]], extra: list[str]
) -> st.SearchStrategy[dict[str, Any]]:
    """``valid`` with up to three members removed, or replaced by a likely or a random
    value, and perhaps members from ``extra`` added: near misses reach the deep checks."""
    names = sorted(set(valid) | set(extra))
    change = st.one_of(st.just(_DROP), json_value, *(likely.values() or [json_value]))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        result = dict(valid)
        for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
            value = draw(st.one_of(likely[name], change) if name in likely else change)
            if value is _DROP:
                result.pop(name, None)
            else:
                result[name] = value
        return result

    return build()


HEADERS = mutated(
    {"alg": "ES256", "typ": "at+jwt", "kid": KID},
    {
        "alg": st.sampled_from(["none", "HS256", "RS256", "EdDSA", "ES256 ", "", "es256"]),
        "typ": st.sampled_from(["application/at+jwt", "AT+JWT", "JWT", "", "at+jwt; x=1"]),
        "kid": st.sampled_from(["../../dev/null", "'", "other", KID + " "]),
    },
    ["jku", "x5u", "jwk", "x5c", "crit", "b64", "cty", "x5t"],
)
CLAIMS = mutated(
    claims(),
    {
        "iss": st.sampled_from([ISSUER + "/", "https://evil.test", ""]),
        "aud": st.sampled_from([[AUDIENCE, "x"], [], "other", [AUDIENCE, 1]]),
        "sub": st.sampled_from(["client:bot", "service:nexus", "client:", "bot", ""]),
        "datapunk_roles": st.lists(st.text(max_size=12), max_size=5),
        "scope": st.text(max_size=30),
        "datapunk_attributes": st.dictionaries(st.text(max_size=8), json_leaf, max_size=3),
        "exp": st.integers(min_value=0, max_value=2**40),
        "nbf": st.integers(min_value=0, max_value=2**40),
        "iat": st.integers(min_value=0, max_value=2**40),
    },
    ["datapunk_attributes", "scp", "client_id"],
)


@FUZZ
@given(st.text(max_size=400))
def test_random_text(token: str) -> None:
    outcome(token)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_latin1(raw: bytes) -> None:
    outcome(raw.decode("latin-1"))


@FUZZ
@given(st.lists(st.binary(max_size=120), min_size=0, max_size=7))
def test_random_segment_counts_of_random_base64(segments: list[bytes]) -> None:
    assert isinstance(outcome(".".join(b64(s) for s in segments)), Unauthenticated)


@FUZZ
@given(st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_=+/.", max_size=60), max_size=5))
def test_random_base64_alphabet_soup(segments: list[str]) -> None:
    assert isinstance(outcome(".".join(segments)), Unauthenticated)


@FUZZ
@given(json_value, json_value, st.binary(max_size=80))
def test_random_json_segments(head: Any, body: Any, signature: bytes) -> None:
    raw = [json.dumps(head).encode(), json.dumps(body).encode(), signature]
    token = ".".join(base64.urlsafe_b64encode(part).decode().rstrip("=") for part in raw)
    assert isinstance(outcome(token), Unauthenticated)


@FUZZ
@given(HEADERS, CLAIMS, st.binary(max_size=80))
def test_random_headers_and_claims_with_random_signatures(
    head: dict[str, Any], body: dict[str, Any], signature: bytes
) -> None:
    assert isinstance(outcome(f"{b64json(head)}.{b64json(body)}.{b64(signature)}"), Unauthenticated)


@FUZZ
@given(HEADERS, CLAIMS)
def test_near_miss_tokens_signed_by_the_trusted_key(
    head: dict[str, Any], body: dict[str, Any]
) -> None:
    """Signed for real, so every header check, claim check and the claims mapping run on
    near-valid input; an accepted token is exactly the one that was signed."""
    result = outcome(sign(KEY, body, head, sign_as="ES256"))
    if isinstance(result, Identity):
        assert body["iss"] == ISSUER
        assert result.subject == body["sub"]
        assert result.credential_id == body["jti"]
