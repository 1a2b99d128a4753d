"""Who is calling: the one ``Identity`` every part of the platform passes around once a
caller is authenticated (by a Datapunk access token, an external OpenID Connect token or
an API key), and the context variable that carries it through one call."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = ["ANONYMOUS", "Identity", "IdentityKind", "identity_var"]

IdentityKind = Literal["client", "user", "api_key", "service", "anonymous"]
"""``client``: a machine client of Nexus's token endpoint (client credentials);
``user``: a person signed in at an external OpenID Connect provider; ``api_key``: the
holder of an API key; ``service``: a Datapunk service calling another one;
``anonymous``: nobody has been authenticated."""


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller. Built only from verified credentials, never from anything
    a request body or an unverified header says."""

    subject: str
    """The principal's stable id, qualified by kind, e.g. ``client:ingest-bot``,
    ``user:https://idp.example/|alice``, ``key:k_2f9c1a`` or ``service:nexus``."""
    tenant: str
    """The tenant the principal belongs to; every object it reaches is in this tenant."""
    kind: IdentityKind
    roles: frozenset[str] = frozenset()
    """Role names within ``tenant`` that came with the credential (token claims, the
    key's roles); role bindings kept by the policy service are added to these."""
    scopes: frozenset[str] = frozenset()
    """OAuth scopes of the credential; empty means none were asked for."""
    issuer: str = ""
    """Who vouched for the identity: a token's ``iss``, or ``datapunk:api-key``."""
    credential_id: str = ""
    """The token's ``jti`` or the API key's id (never a secret), for audit and
    revocation."""
    expires_at: float | None = None
    """When the credential stops being valid (Unix seconds), if it expires."""
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Attributes the policy may test, such as ``clearance`` (a data classification
    level)."""
    on_behalf_of: Identity | None = None
    """For a service call made on a caller's behalf (Nexus forwarding a request): that
    caller, as the edge authenticated it."""

    @property
    def effective(self) -> Identity:
        """The identity whose permissions apply: the caller a service acts for, else
        this one."""
        return self.on_behalf_of or self


ANONYMOUS = Identity(subject="anonymous", tenant="", kind="anonymous")

identity_var: ContextVar[Identity | None] = ContextVar("datapunk_identity", default=None)
"""The identity of the call being served, set by the authentication edge of the entry or
the service; ``None`` outside a call."""
