"""What an edge remembers about credentials must not outlive a signing key: a token the
edge verified and remembers is refused once its key is deleted, and Nexus's own service
tokens towards the backends follow the active key (tests/integration/test_attack_list.py
shows both end to end)."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from datapunk_nexus.identity.enforce import EdgeAuthenticator
from datapunk_nexus.identity.oauth.access import AccessTokenMinter
from datapunk_nexus.identity.service_tokens import ServiceTokens
from datapunk_nexus.identity.signing import SoftwareSigner
from datapunk_shared.auth.claims import datapunk_claims
from datapunk_shared.auth.tokens import IssuerPolicy, StaticKeySource, TokenVerifier
from datapunk_shared.errors import Unauthenticated

from tests.token_kit import b64, b64json, claims

ISSUER = "https://nexus.test"
AUDIENCE = "datapunk:lake"


def _signer() -> SoftwareSigner:
    return SoftwareSigner(ec.generate_private_key(ec.SECP256R1()))


def _token(signer: SoftwareSigner, **overrides: object) -> str:
    header = {"alg": "ES256", "typ": "at+jwt", "kid": signer.kid}
    signing_input = f"{b64json(header)}.{b64json(claims(iss=ISSUER, **overrides))}"
    return f"{signing_input}.{b64(signer.sign(signing_input.encode()))}"


def _kid(authorization: str) -> str:
    token = authorization.removeprefix("Bearer ")
    segment = token.split(".")[0]
    header: dict[str, str] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return header["kid"]


def _authenticator(keys: StaticKeySource, *, own: bool) -> EdgeAuthenticator:
    policy = IssuerPolicy(
        issuer=ISSUER,
        audiences=frozenset({AUDIENCE}),
        algorithms=frozenset({"ES256"}),
        mapper=datapunk_claims,
    )
    return EdgeAuthenticator(
        TokenVerifier([policy], keys),
        None,
        own_keys=keys if own else None,
        own_issuer=ISSUER if own else "",
    )


async def test_a_remembered_token_is_refused_once_its_key_is_deleted() -> None:
    old, new = _signer(), _signer()
    keys = StaticKeySource({ISSUER: {"keys": [old.public_jwk(), new.public_jwk()]}})
    edge = _authenticator(keys, own=True)
    token = _token(old)
    identity = await edge.authenticate(f"Bearer {token}", None)
    assert identity is not None
    assert identity.subject == "client:ingest-bot"
    keys.set_jwks(ISSUER, {"keys": [new.public_jwk()]})  # the old key is deleted
    with pytest.raises(Unauthenticated) as refused:
        await edge.authenticate(f"Bearer {token}", None)
    assert refused.value.reason == "UNKNOWN_KEY"
    # And forgotten: asked again, it is verified afresh and refused the same way.
    with pytest.raises(Unauthenticated) as refused:
        await edge.authenticate(f"Bearer {token}", None)
    assert refused.value.reason == "UNKNOWN_KEY"
    # Tokens of the key still published are unaffected.
    assert await edge.authenticate(f"Bearer {_token(new)}", None) is not None


async def test_without_own_keys_a_token_is_remembered_for_its_time() -> None:
    # The edge checks only the keys it is told are its own (another issuer's keys are
    # followed by their JWKS cache).
    old = _signer()
    keys = StaticKeySource({ISSUER: {"keys": [old.public_jwk()]}})
    edge = _authenticator(keys, own=False)
    token = _token(old)
    await edge.authenticate(f"Bearer {token}", None)
    keys.set_jwks(ISSUER, {"keys": []})
    assert await edge.authenticate(f"Bearer {token}", None) is not None


def test_service_tokens_are_reused_until_the_active_key_changes() -> None:
    first, second = _signer(), _signer()
    active = [first]
    minter = AccessTokenMinter(lambda: active[0], issuer=ISSUER, ttl=300)
    tokens = ServiceTokens(minter, lambda owner: f"datapunk:{owner}")
    lake = tokens.authorization("lake")
    assert _kid(lake) == first.kid
    assert tokens.authorization("lake") == lake  # reused: no signature per call
    active[0] = second  # a rotation, here or on another instance
    renewed = tokens.authorization("lake")
    assert _kid(renewed) == second.kid
    assert tokens.authorization("lake") == renewed
