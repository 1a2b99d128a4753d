"""Access tokens: JWTs (RFC 9068, ``typ: at+jwt``) signed by the key ring's active key,
with the claim vocabulary of ``datapunk_shared.auth.claims`` (docs/identity.md, "Access
token claims")."""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from datapunk_shared.auth.claims import CLAIM_CLIENT_ID, CLAIM_ROLES, CLAIM_SCOPE, CLAIM_TENANT

from datapunk_nexus.identity.oauth.clients import OAuthClient
from datapunk_nexus.identity.signing import Signer

__all__ = ["ACCESS_TOKEN_TYPE", "AccessToken", "AccessTokenMinter", "b64url", "new_jti"]

ACCESS_TOKEN_TYPE = "at+jwt"


def new_jti() -> str:
    """A token id: 128 random bits, base64url."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An issued access token and what the server needs to remember about it."""

    token: str
    jti: str
    issued_at: int
    expires_at: int
    scopes: tuple[str, ...]
    audience: str
    kid: str
    """The id of the key that signed it."""

    @property
    def expires_in(self) -> int:
        return self.expires_at - self.issued_at


class AccessTokenMinter:
    """Makes access tokens for clients, signed by whatever key ``signer()`` says is
    active now (so a rotation on any instance is followed)."""

    def __init__(
        self,
        signer: Callable[[], Signer],
        *,
        issuer: str,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signer = signer
        self._issuer = issuer
        self._ttl = ttl
        self._clock = clock

    def active_kid(self) -> str:
        """The id of the key new tokens are signed with now."""
        return self._signer().kid

    def mint(self, client: OAuthClient, scopes: Sequence[str], audience: str) -> AccessToken:
        """A new access token for ``client`` with ``scopes`` for ``audience``."""
        claims: dict[str, Any] = {
            CLAIM_CLIENT_ID: client.client_id,
            CLAIM_TENANT: client.tenant,
            CLAIM_ROLES: sorted(client.roles),
        }
        if scopes:
            claims[CLAIM_SCOPE] = " ".join(scopes)
        return self._mint(client.subject, audience, claims, tuple(scopes))

    def mint_service(self, service: str, audience: str) -> AccessToken:
        """A service token: Datapunk service ``service`` (``sub`` ``service:<service>``,
        no tenant) calling the service whose audience is ``audience``. Only Nexus makes
        these, for itself; no client can be issued one."""
        return self._mint(f"service:{service}", audience, {}, ())

    def _mint(
        self, subject: str, audience: str, extra: dict[str, Any], scopes: tuple[str, ...]
    ) -> AccessToken:
        now = math.floor(self._clock())
        expires = now + max(1, math.floor(self._ttl))
        jti = new_jti()
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": audience,
            "exp": expires,
            "nbf": now,
            "iat": now,
            "jti": jti,
            **extra,
        }
        signer = self._signer()
        header = {"alg": signer.alg, "typ": ACCESS_TOKEN_TYPE, "kid": signer.kid}
        signing_input = f"{_segment(header)}.{_segment(claims)}"
        signature = signer.sign(signing_input.encode("ascii"))
        return AccessToken(
            token=f"{signing_input}.{b64url(signature)}",
            jti=jti,
            issued_at=now,
            expires_at=expires,
            scopes=scopes,
            audience=audience,
            kid=signer.kid,
        )


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _segment(document: dict[str, Any]) -> str:
    return b64url(json.dumps(document, separators=(",", ":"), sort_keys=True).encode())
