"""The audit records of the token endpoints (``/oauth/token``, ``/oauth/revoke``,
``/oauth/introspect`` and their gRPC twins), which the entries let through unaudited
because the client authenticates inside the request: every token request, granted
(``token.issue`` ALLOW, with the new access token's ``jti``) or refused (DENY with the
refusal's reason: a wrong secret, a replayed refresh token), every client authentication
that fails at revocation or introspection, and every revocation. A record names the
client by its id, never by its secret or a token. Records go to the client's tenant's
trail, or the platform's when the client could not be identified; like every record,
they fail closed (``Unavailable``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from datapunk_shared.logging import request_id_var

from datapunk_nexus.identity.audit import AuditEvent, Outcome
from datapunk_nexus.identity.oauth.clients import OAuthClient

__all__ = ["INTROSPECT_METHOD", "ISSUE_METHOD", "REVOKE_METHOD", "Recorder", "TokenTrail"]

Recorder = Callable[[AuditEvent], Awaitable[None]]
"""``AuditLog.record``."""

_SERVICE = "/datapunk.nexus.v1.AuthService/"
ISSUE_METHOD = _SERVICE + "IssueToken"
REVOKE_METHOD = _SERVICE + "RevokeToken"
INTROSPECT_METHOD = _SERVICE + "IntrospectToken"


class TokenTrail:
    """Writes the token endpoints' records with ``record`` (nothing when it is None: an
    authorization server tested on its own)."""

    def __init__(self, record: Recorder | None = None) -> None:
        self._record = record

    async def issued(self, client: OAuthClient, jti: str, client_address: str) -> None:
        await self._write(
            "token.issue",
            ISSUE_METHOD,
            Outcome.ALLOW,
            client,
            client.client_id,
            client_address,
            jti,
        )

    async def revoked(self, client: OAuthClient, client_address: str) -> None:
        await self._write(
            "token.revoke", REVOKE_METHOD, Outcome.ALLOW, client, client.client_id, client_address
        )

    async def refused(
        self,
        action: str,
        method: str,
        reason: str,
        *,
        client: OAuthClient | None,
        client_id: str,
        client_address: str,
    ) -> None:
        """A refused request of ``client`` (None: not identified, ``client_id`` is what the
        caller claimed)."""
        await self._write(
            action, method, Outcome.DENY, client, client_id, client_address, reason=reason
        )

    async def _write(
        self,
        action: str,
        method: str,
        outcome: Outcome,
        client: OAuthClient | None,
        client_id: str,
        client_address: str,
        credential_id: str = "",
        *,
        reason: str = "",
    ) -> None:
        if self._record is None:
            return
        await self._record(
            AuditEvent(
                action=action,
                outcome=outcome,
                tenant=client.tenant if client is not None else "",
                principal=client.subject if client is not None else "",
                principal_kind="client" if client is not None else "",
                credential_id=credential_id,
                method=method,
                resource=f"client/{client_id}" if client_id else "",
                reason=reason,
                client_address=client_address,
                request_id=request_id_var.get() or "",
            )
        )
