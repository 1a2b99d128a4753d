"""What the authorization server needs of the signing key ring
(``datapunk_nexus.identity.signing.SigningKeyRing``), and the ``KeySource`` that verifies
Nexus's own tokens against the keys the ring publishes right now."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from datapunk_shared.auth.keys import import_public_keys
from datapunk_shared.auth.tokens import refuse
from joserfc.jwk import Key

from datapunk_nexus.identity.signing import Signer

__all__ = ["KeyInfo", "KeyRing", "RingKeySource"]


class KeyInfo(Protocol):
    """One signing key as the ring records it (public material only)."""

    @property
    def kid(self) -> str: ...
    @property
    def alg(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def public_jwk(self) -> Mapping[str, str]: ...


class KeyRing(Protocol):
    """The signing key ring's operations the authorization server uses."""

    def active_signer(self) -> Signer: ...
    async def jwks(self) -> Mapping[str, Any]: ...
    async def keys(self) -> Sequence[KeyInfo]: ...
    async def rotate(self) -> KeyInfo: ...
    async def delete(self, kid: str) -> None: ...


class RingKeySource:
    """The public keys of ``issuer`` as the ring publishes them at the moment of the
    call, so that a rotation is followed and a deleted key fails at once (UNKNOWN_KEY)."""

    def __init__(self, ring: KeyRing, issuer: str) -> None:
        self._ring = ring
        self._issuer = issuer

    async def key(self, issuer: str, kid: str) -> Key:
        keys = import_public_keys(await self._ring.jwks()) if issuer == self._issuer else {}
        key = keys.get(kid)
        if key is None:
            raise refuse(
                "UNKNOWN_KEY", "the token is signed with a key the issuer does not publish"
            )
        return key
