"""The token verifier against the attack list of docs/identity.md: every forged, stale,
misdirected or tampered token is refused with the reason that names its flaw, a valid one
becomes the right Identity, and no refusal quotes the token."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from datapunk_shared.auth.claims import datapunk_claims
from datapunk_shared.auth.keys import import_public_keys
from datapunk_shared.auth.tokens import IssuerPolicy, StaticKeySource, TokenVerifier
from datapunk_shared.errors import Unauthenticated
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey

from tests.token_kit import (
    AUDIENCE,
    ISSUER,
    KID,
    b64,
    b64json,
    claims,
    ec_key,
    header,
    jwks,
    sign,
    verifier,
)

KEY = ec_key()


class RecordingKeys:
    """A key source that remembers every lookup, to show refused tokens cause none."""

    def __init__(self, *keys: Key) -> None:
        self.inner = StaticKeySource({ISSUER: jwks(*keys)})
        self.lookups: list[tuple[str, str]] = []

    async def key(self, issuer: str, kid: str) -> Key:
        self.lookups.append((issuer, kid))
        return await self.inner.key(issuer, kid)


def recording_verifier(**kwargs: Any) -> tuple[TokenVerifier, RecordingKeys]:
    keys = RecordingKeys(KEY)
    policy = IssuerPolicy(
        issuer=ISSUER,
        audiences=frozenset({AUDIENCE}),
        algorithms=frozenset({"ES256"}),
        mapper=datapunk_claims,
    )
    return TokenVerifier([policy], keys, **kwargs), keys


async def refused(token: str, reason: str, verifier_: TokenVerifier | None = None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await (verifier_ or verifier(KEY)).verify(token)
    assert caught.value.reason == reason, caught.value.message
    # Nothing of the token (not even one segment) ever reaches a message or metadata.
    told = caught.value.message + json.dumps(caught.value.metadata)
    for segment in token.split("."):
        if len(segment) >= 8:
            assert segment not in told


async def test_a_valid_token_becomes_the_clients_identity() -> None:
    identity = await verifier(KEY).verify(sign(KEY))
    assert identity.kind == "client"
    assert identity.subject == "client:ingest-bot"
    assert identity.tenant == "acme"
    assert identity.roles == {"writer"}
    assert identity.scopes == {"lake.read", "lake.write"}
    assert identity.issuer == ISSUER
    assert identity.credential_id == claims()["jti"]


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
async def test_both_spellings_of_the_access_token_type_are_accepted(typ: str) -> None:
    identity = await verifier(KEY).verify(sign(KEY, header_=header(typ=typ)))
    assert identity.subject == "client:ingest-bot"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(alg: str) -> None:
    await refused(sign(None, header_=header(alg=alg)), "UNSUPPORTED_ALGORITHM")
    # Even with a made-up signature segment appended.
    token = sign(None, header_=header(alg=alg)) + b64(b"whatever")
    await refused(token, "UNSUPPORTED_ALGORITHM")


async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    """The classic key confusion: the attacker HMACs with the issuer's public key."""
    public_pem = KEY.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, json.dumps(KEY.as_dict(private=False)).encode()):
        signing_input = f"{b64json(header(alg='HS256'))}.{b64json(claims())}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await refused(f"{signing_input}.{b64(mac)}", "UNSUPPORTED_ALGORITHM")


async def test_hs256_is_refused_even_if_the_key_source_had_a_symmetric_key() -> None:
    secret = OctKey.generate_key(256, {"kid": KID})
    token = sign(secret, header_=header(alg="HS256"))
    await refused(token, "UNSUPPORTED_ALGORITHM")
    # And a key set cannot smuggle an oct key in: it is dropped on import.
    assert import_public_keys({"keys": [secret.as_dict()]}) == {}


async def test_edited_claims_break_the_signature() -> None:
    token = sign(KEY)
    head, _, signature = token.split(".")
    for edit in (
        claims(sub="client:admin"),
        claims(datapunk_tenant="other-tenant"),
        claims(datapunk_roles=["admin"]),
        claims(exp=int(time.time()) + 86400),
    ):
        await refused(f"{head}.{b64json(edit)}.{signature}", "BAD_SIGNATURE")


async def test_a_signature_by_another_key_with_the_same_kid_is_refused() -> None:
    await refused(sign(ec_key(KID)), "BAD_SIGNATURE")


@pytest.mark.parametrize(
    "signature", ["", b64(b"\x00" * 64), b64(b"short"), b64(b"\xff" * 64), "A" * 86]
)
async def test_garbage_signatures_are_refused(signature: str) -> None:
    head, payload, _ = sign(KEY).split(".")
    await refused(f"{head}.{payload}.{signature}", "BAD_SIGNATURE")


async def test_expired_tokens_are_refused_past_the_leeway() -> None:
    now = int(time.time())
    await refused(sign(KEY, claims(exp=now - 31, iat=now - 400, nbf=now - 400)), "TOKEN_EXPIRED")
    # Within the 30 s leeway a just-expired token still passes (clock skew).
    await verifier(KEY).verify(sign(KEY, claims(exp=now - 5, iat=now - 400, nbf=now - 400)))


async def test_tokens_not_yet_valid_are_refused() -> None:
    now = int(time.time())
    await refused(sign(KEY, claims(nbf=now + 120)), "TOKEN_NOT_YET_VALID")
    await refused(sign(KEY, claims(iat=now + 120)), "TOKEN_NOT_YET_VALID")
    await verifier(KEY).verify(sign(KEY, claims(nbf=now + 10, iat=now + 10)))


async def test_the_clock_is_the_verifiers() -> None:
    token = sign(KEY)
    later = verifier(KEY, clock=lambda: time.time() + 3600)
    await refused(token, "TOKEN_EXPIRED", later)


@pytest.mark.parametrize("aud", ["datapunk:stream", ["datapunk:stream", "other"], "DATAPUNK:LAKE"])
async def test_a_token_for_another_audience_is_refused(aud: Any) -> None:
    await refused(sign(KEY, claims(aud=aud)), "WRONG_AUDIENCE")


async def test_an_audience_list_naming_this_service_is_accepted() -> None:
    await verifier(KEY).verify(sign(KEY, claims(aud=["datapunk:stream", AUDIENCE])))


@pytest.mark.parametrize("iss", ["https://evil.test", ISSUER + "/", ISSUER.upper(), 42, None])
async def test_untrusted_issuers_are_refused_before_any_key_lookup(iss: Any) -> None:
    verifier_, keys = recording_verifier()
    await refused(sign(KEY, claims(iss=iss)), "UNTRUSTED_ISSUER", verifier_)
    assert keys.lookups == []


@pytest.mark.parametrize("typ", ["JWT", "jwt", "id_token+jwt", "logout+jwt", None, 1])
async def test_id_tokens_and_other_types_are_refused(typ: Any) -> None:
    """An ID token (typ JWT, or none at all) signed by the trusted issuer is still not
    an access token."""
    id_claims = claims(nonce="n-0S6_WzA2Mj", auth_time=int(time.time()))
    await refused(sign(KEY, id_claims, header(typ=typ)), "WRONG_TOKEN_TYPE")


@pytest.mark.parametrize(
    "kid",
    [
        "../../dev/null",
        "/etc/passwd",
        "' OR '1'='1",
        '"; DROP TABLE keys; --',
        "https://evil.test/jwks.json",
        "file:///dev/null",
        "kid with spaces",
        "",
        "x" * 129,
        "nexus-1\x00",
        7,
        None,
    ],
)
async def test_kid_injection_is_just_an_unknown_key(kid: Any) -> None:
    verifier_, keys = recording_verifier()
    await refused(sign(KEY, header_=header(kid=kid)), "UNKNOWN_KEY", verifier_)
    assert keys.lookups == []  # never looked up anywhere, not even in the key source


async def test_a_plain_but_unknown_kid_is_an_unknown_key() -> None:
    verifier_, keys = recording_verifier()
    await refused(sign(ec_key("nexus-9"), header_=header(kid="nexus-9")), "UNKNOWN_KEY", verifier_)
    assert keys.lookups == [(ISSUER, "nexus-9")]


@pytest.mark.parametrize("name", ["jku", "x5u", "jwk", "x5c"])
async def test_headers_that_point_at_keys_are_refused_not_followed(name: str) -> None:
    attacker = ec_key(KID)
    values = {
        "jku": "https://evil.test/jwks.json",
        "x5u": "https://evil.test/cert.pem",
        "jwk": attacker.as_dict(private=False),
        "x5c": ["MIIBszCCAVmgAwIBAgIU"],
    }
    verifier_, keys = recording_verifier()
    # Signed by the attacker's key, which the header offers: refused before any lookup.
    token = sign(attacker, header_=header(**{name: values[name]}))
    await refused(token, "FORBIDDEN_HEADER", verifier_)
    # Even a token the real key signed may not carry them.
    await refused(sign(KEY, header_=header(**{name: values[name]})), "FORBIDDEN_HEADER", verifier_)
    assert keys.lookups == []


async def test_crit_headers_are_refused() -> None:
    token = sign(KEY, header_=header(crit=["exp"], exp=1))
    await refused(token, "FORBIDDEN_HEADER")
    await refused(sign(KEY, header_=header(crit=["b64"], b64=False)), "FORBIDDEN_HEADER")


async def test_oversized_tokens_are_refused_before_parsing() -> None:
    await refused("x" * 8193, "TOKEN_TOO_LARGE")  # not even a JWT: size comes first
    padded = sign(KEY, claims(padding="p" * 9000))
    await refused(padded, "TOKEN_TOO_LARGE")


async def test_the_size_limit_is_the_issuers() -> None:
    policy = IssuerPolicy(
        issuer=ISSUER,
        audiences=frozenset({AUDIENCE}),
        algorithms=frozenset({"ES256"}),
        mapper=datapunk_claims,
        max_token_bytes=1024,
    )
    small = TokenVerifier([policy], StaticKeySource({ISSUER: jwks(KEY)}))
    await small.verify(sign(KEY))
    await refused(sign(KEY, claims(padding="p" * 800)), "TOKEN_TOO_LARGE", small)


@pytest.mark.parametrize("missing", ["jti", "sub", "iat", "exp", "nbf", "aud"])
async def test_tokens_missing_a_required_claim_are_refused(missing: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await verifier(KEY).verify(sign(KEY, claims(**{missing: None})))
    assert caught.value.reason == "MALFORMED_TOKEN"
    assert caught.value.metadata == {"claim": missing}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("exp", "2030-01-01"),
        ("exp", True),
        ("exp", 1e400),
        ("exp", 10**30),
        ("nbf", -5),
        ("iat", [1]),
        ("jti", ""),
        ("jti", 12),
        ("sub", {"id": 1}),
        ("aud", []),
        ("aud", [1, 2]),
    ],
)
async def test_claims_of_the_wrong_type_are_refused(name: str, value: Any) -> None:
    await refused(sign(KEY, claims(**{name: value})), "MALFORMED_TOKEN")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",  # a JWE: encrypted tokens are not access tokens here
        "..",
        "!!!.???.###",
        "eyJhbGciOiJFUzI1NiJ9.e30.=padded=",
        f"{b64(b'not json')}.{b64json({})}.sig",
        f"{b64json([1, 2])}.{b64json({})}.sig",
        f"{b64json(header())}.{b64(b'[]')}.sig",
        b64json(header()) + "." + b64(b'{"a": NaN}') + ".sig",
        f"{b64json({'typ': 'at+jwt'})}.{b64json(claims())}.sig",  # no alg
        f"{b64json(header(alg=5))}.{b64json(claims())}.sig",
        f"{b64(b'[' * 5000)}.{b64json({})}.sig",  # nesting deep enough to blow a stack
        "ÿÿÿ.ÿÿÿ.ÿÿÿ",
        "a" * 5 + ".b.c",  # a base64 length no encoder produces
    ],
)
async def test_malformed_tokens_are_refused(token: str) -> None:
    await refused(token, "MALFORMED_TOKEN")


async def test_duplicate_header_members_are_refused() -> None:
    """Two ``alg`` members could mean one thing to us and another to a proxy."""
    raw_header = b'{"alg":"ES256","typ":"at+jwt","kid":"nexus-1","alg":"none"}'
    await refused(f"{b64(raw_header)}.{b64json(claims())}.", "MALFORMED_TOKEN")
    raw_claims = json.dumps(claims())[:-1] + ', "sub": "client:admin"}'
    await refused(f"{b64json(header())}.{b64(raw_claims.encode())}.sig", "MALFORMED_TOKEN")


async def test_an_algorithm_the_issuer_does_not_use_is_refused() -> None:
    rsa = RSAKey.generate_key(2048, {"kid": KID})
    token = sign(rsa, header_=header(alg="RS256"))
    await refused(token, "UNSUPPORTED_ALGORITHM", verifier(KEY))


async def test_a_key_of_the_wrong_type_for_the_algorithm_is_a_bad_signature() -> None:
    rsa = RSAKey.generate_key(2048, {"kid": KID})
    both = verifier(rsa, algorithms=frozenset({"ES256", "RS256"}))
    await refused(sign(KEY), "BAD_SIGNATURE", both)  # ES256 header, RSA key behind the kid


async def test_rs256_and_eddsa_issuers_are_verified() -> None:
    rsa = RSAKey.generate_key(2048, {"kid": "rsa-1"})
    ed = OKPKey.generate_key("Ed25519", {"kid": "ed-1"})
    multi = verifier(rsa, ed, algorithms=frozenset({"RS256", "EdDSA", "Ed25519"}))
    await multi.verify(sign(rsa, header_=header(alg="RS256", kid="rsa-1")))
    await multi.verify(sign(ed, header_=header(alg="EdDSA", kid="ed-1")))
    await multi.verify(sign(ed, header_=header(alg="Ed25519", kid="ed-1")))
    # PS256 with an RSA key is asymmetric too, but this issuer never uses it.
    await refused(
        sign(rsa, header_=header(alg="PS256", kid="rsa-1")), "UNSUPPORTED_ALGORITHM", multi
    )


async def test_revoked_tokens_are_refused_and_the_hook_sees_only_verified_tokens() -> None:
    asked: list[str] = []

    async def is_revoked(jti: str) -> bool:
        asked.append(jti)
        return jti == "revoked-1"

    checked = verifier(KEY, is_revoked=is_revoked)
    await refused(sign(KEY, claims(jti="revoked-1")), "TOKEN_REVOKED", checked)
    await checked.verify(sign(KEY, claims(jti="fine-1")))
    await refused(sign(ec_key(), claims(jti="forged-1")), "BAD_SIGNATURE", checked)
    assert asked == ["revoked-1", "fine-1"]


async def test_a_revocation_list_that_cannot_be_read_fails_closed() -> None:
    async def broken(jti: str) -> bool:
        raise ConnectionError("revocation store down")

    with pytest.raises(ConnectionError):
        await verifier(KEY, is_revoked=broken).verify(sign(KEY))


async def test_several_issuers_each_with_their_own_policy() -> None:
    other_key = ec_key("idp-1")
    policies = [
        IssuerPolicy(ISSUER, frozenset({AUDIENCE}), frozenset({"ES256"}), datapunk_claims),
        IssuerPolicy("https://idp.test", frozenset({"api"}), frozenset({"ES256"}), datapunk_claims),
    ]
    keys = StaticKeySource({ISSUER: jwks(KEY), "https://idp.test": jwks(other_key)})
    both = TokenVerifier(policies, keys)
    assert both.issuers == {ISSUER, "https://idp.test"}
    idp_claims = claims(iss="https://idp.test", aud="api")
    await both.verify(sign(other_key, idp_claims, header(kid="idp-1")))
    # The other issuer's key never verifies this issuer's tokens, and audiences do not mix.
    await refused(sign(other_key, claims(), header(kid="idp-1")), "UNKNOWN_KEY", both)
    await refused(sign(KEY, claims(aud="api")), "WRONG_AUDIENCE", both)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("algorithms", frozenset({"HS256"})),
        ("algorithms", frozenset({"none"})),
        ("algorithms", frozenset({"ES256", "HS512"})),
        ("algorithms", frozenset()),
        ("audiences", frozenset()),
        ("audiences", frozenset({""})),
        ("issuer", ""),
        ("token_types", frozenset()),
        ("leeway", -1.0),
        ("max_token_bytes", 10),
    ],
)
def test_unsafe_policies_are_refused_at_configuration(field: str, value: Any) -> None:
    fields: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": frozenset({AUDIENCE}),
        "algorithms": frozenset({"ES256"}),
        "mapper": datapunk_claims,
    }
    fields[field] = value
    with pytest.raises(ValueError, match=r"."):
        IssuerPolicy(**fields)


def test_key_sets_keep_only_public_asymmetric_signing_keys() -> None:
    good = ec_key("good")
    entries = [
        good.as_dict(private=True),  # private parts are dropped
        OctKey.generate_key(256, {"kid": "sym"}).as_dict(),
        {**ec_key("enc").as_dict(private=False), "use": "enc"},
        {**ec_key("ops").as_dict(private=False), "key_ops": ["sign"]},
        {**ec_key("../x").as_dict(private=False)},
        {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
        "not a key",
    ]
    keys = import_public_keys({"keys": entries})
    assert set(keys) == {"good"}
    assert not keys["good"].is_private
    with pytest.raises(ValueError, match="keys"):
        import_public_keys({"keys": "nope"})
    with pytest.raises(ValueError, match="at most"):
        import_public_keys({"keys": [good.as_dict(private=False)] * 65})


def test_short_rsa_keys_are_dropped() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    n = numbers.public_numbers().n.to_bytes(128, "big")
    weak = {"kty": "RSA", "kid": "weak", "n": b64(n), "e": "AQAB"}
    assert import_public_keys({"keys": [weak]}) == {}


async def test_static_key_source_follows_a_replaced_key_set() -> None:
    new = ec_key("nexus-2")
    keys = StaticKeySource({ISSUER: jwks(KEY)})
    policy = IssuerPolicy(ISSUER, frozenset({AUDIENCE}), frozenset({"ES256"}), datapunk_claims)
    rotating = TokenVerifier([policy], keys)
    new_token = sign(new, header_=header(kid="nexus-2"))
    await refused(new_token, "UNKNOWN_KEY", rotating)
    keys.set_jwks(ISSUER, jwks(KEY, new))
    await rotating.verify(new_token)
    keys.set_jwks(ISSUER, jwks(new))
    await refused(sign(KEY), "UNKNOWN_KEY", rotating)  # a deleted key verifies nothing


async def test_ec_keys_on_another_curve_do_not_verify_es256() -> None:
    p384 = ECKey.generate_key("P-384", {"kid": KID})
    await refused(sign(KEY), "BAD_SIGNATURE", verifier(p384))


@pytest.mark.parametrize(
    "refresh_token",
    ["dprt_Zk3vQ9x2mW8rT1yH5nB7cL0pJ4sD6fGa", "8xLr2Vq9TnW4bM7cK1pZ5sH3dF6gJ0aE"],
)
async def test_an_opaque_refresh_token_is_not_an_access_token(refresh_token: str) -> None:
    await refused(refresh_token, "MALFORMED_TOKEN")
