"""Nexus's own credentials towards the services it forwards to: a service token per
backend (``sub`` ``service:nexus``, ``aud`` ``datapunk:<owner>``), signed with the active
signing key and reused until half its life is gone, so forwarding pays for a signature
(on the PKCS#11 token, a round trip to it) a few times an hour, not per call.

A token is also renewed as soon as the active key is another than the one that signed it
(a rotation here or on another instance): the retired key may be deleted at any time
after, and the backends would then refuse every call made with a token it signed."""

from __future__ import annotations

import time
from collections.abc import Callable

from datapunk_nexus.identity.oauth.access import AccessTokenMinter

__all__ = ["ServiceTokens"]


class ServiceTokens:
    """Bearer tokens of ``service`` for calling each backend."""

    def __init__(
        self,
        minter: AccessTokenMinter,
        audience: Callable[[str], str],
        *,
        service: str = "nexus",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._minter = minter
        self._audience = audience
        self._service = service
        self._clock = clock
        # owner -> (authorization value, renew at, kid of the key that signed it)
        self._tokens: dict[str, tuple[str, float, str]] = {}

    def authorization(self, owner: str) -> str:
        """The ``authorization`` metadata value for a call to ``owner``."""
        cached = self._tokens.get(owner)
        now = self._clock()
        if cached is not None and now < cached[1] and cached[2] == self._minter.active_kid():
            return cached[0]
        token = self._minter.mint_service(self._service, self._audience(owner))
        renew_at = token.issued_at + (token.expires_at - token.issued_at) / 2
        value = f"Bearer {token.token}"
        self._tokens[owner] = (value, renew_at, token.kid)
        return value

    def forget(self) -> None:
        """Drop every token (after a key rotation or deletion), so the next call gets one
        signed with the active key."""
        self._tokens.clear()
