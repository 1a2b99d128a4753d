"""From verified token claims to an ``Identity``: Nexus's own claim vocabulary
(docs/identity.md, "Access token claims") and the configurable mapping of an external
OpenID Connect provider's claims.

Both run only on claims whose signature, issuer, audience and lifetime have been checked;
they still check every claim's type, because a trusted issuer can be misconfigured. A
claim they need that is missing or malformed is ``Unauthenticated`` ``MALFORMED_TOKEN``
naming the claim (never its value).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.tenancy import is_tenant_id
from datapunk_shared.errors import Unauthenticated

__all__ = [
    "CLAIM_ATTRIBUTES",
    "CLAIM_CLIENT_ID",
    "CLAIM_ROLES",
    "CLAIM_SCOPE",
    "CLAIM_TENANT",
    "MAX_LIST_ITEMS",
    "OidcClaims",
    "datapunk_claims",
]

CLAIM_CLIENT_ID = "client_id"
CLAIM_SCOPE = "scope"
CLAIM_TENANT = "datapunk_tenant"
CLAIM_ROLES = "datapunk_roles"
CLAIM_ATTRIBUTES = "datapunk_attributes"

MAX_LIST_ITEMS = 64
"""The most roles, scopes or attributes one token may carry."""

_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")
"""A tenant, role, scope or attribute name: 1 to 128 characters, no spaces or controls."""
_KINDS = {"client:": "client", "service:": "service"}


def _malformed(claim: str, what: str) -> Unauthenticated:
    return Unauthenticated(
        f"the token's '{claim}' claim {what}",
        reason="MALFORMED_TOKEN",
        metadata={"claim": claim},
    )


def _name(value: object, claim: str) -> str:
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise _malformed(claim, "is not a name (1-128 characters, no spaces)")
    return value


def _tenant(value: object, claim: str) -> str:
    """A tenant id in the form every service accepts (``tenancy.is_tenant_id``): a token
    naming any other is refused here, not later by the service it reaches."""
    name = _name(value, claim)
    if not is_tenant_id(name):
        raise _malformed(claim, "is not a tenant id (lower-case words joined by '-')")
    return name


def _names(value: object, claim: str, *, spaced: bool = True) -> frozenset[str]:
    """A list of names or, when ``spaced``, one space-separated string of them (OAuth's
    ``scope``)."""
    items = value.split() if spaced and isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_LIST_ITEMS:
        raise _malformed(claim, f"is not a list of at most {MAX_LIST_ITEMS} names")
    return frozenset(_name(item, claim) for item in items)


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    if CLAIM_SCOPE in claims:
        return _names(claims[CLAIM_SCOPE], CLAIM_SCOPE)
    if "scp" in claims:  # some providers send the scopes as a list under "scp"
        return _names(claims["scp"], "scp")
    return frozenset()


def _attribute_value(value: object, claim: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str) and len(str(value)) <= 256:
        return str(value)
    raise _malformed(claim, "is not a string or integer of at most 256 characters")


def datapunk_claims(claims: Mapping[str, Any]) -> Identity:
    """The identity a Nexus-issued access token proves.

    ``sub`` is ``client:<client id>`` (client-credentials tokens, kind ``client``) or
    ``service:<service>`` (service tokens, kind ``service``); ``datapunk_tenant`` is
    required for clients; ``scope``, ``datapunk_roles`` and ``datapunk_attributes`` are
    optional."""
    subject = _name(claims.get("sub"), "sub")
    kind = next((k for prefix, k in _KINDS.items() if subject.startswith(prefix)), None)
    if kind is None or subject.endswith(":"):
        raise _malformed("sub", "is not 'client:<id>' or 'service:<name>'")
    if kind == "client" or CLAIM_TENANT in claims:
        tenant = _tenant(claims.get(CLAIM_TENANT), CLAIM_TENANT)
    else:
        tenant = ""
    raw_attributes = claims.get(CLAIM_ATTRIBUTES, {})
    if not isinstance(raw_attributes, dict) or len(raw_attributes) > MAX_LIST_ITEMS:
        raise _malformed(CLAIM_ATTRIBUTES, "is not an object of at most 64 attributes")
    attributes = {
        _name(key, CLAIM_ATTRIBUTES): _attribute_value(value, CLAIM_ATTRIBUTES)
        for key, value in raw_attributes.items()
    }
    return Identity(
        subject=subject,
        tenant=tenant,
        kind="client" if kind == "client" else "service",
        roles=_names(claims.get(CLAIM_ROLES, []), CLAIM_ROLES, spaced=False),
        scopes=_scopes(claims),
        issuer=claims["iss"],
        credential_id=claims["jti"],
        attributes=MappingProxyType(attributes),
    )


def _claim_at(claims: Mapping[str, Any], path: str) -> object:
    """The claim at a dotted path (``realm_access.roles``), or ``None``."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True, slots=True)
class OidcClaims:
    """How an external OpenID Connect provider's access-token claims become an
    ``Identity(kind="user", subject="user:<iss>|<sub>")``."""

    tenant: str = ""
    """The tenant of every user of this provider, when ``tenant_claim`` is not set."""
    tenant_claim: str = ""
    """The claim (dotted path) holding the user's tenant; wins over ``tenant``."""
    roles_claim: str = ""
    """The claim (dotted path) holding the user's roles (a list or a space-separated
    string); empty: the provider grants no roles."""
    role_map: Mapping[str, str] = field(default_factory=dict)
    """Provider role name to Datapunk role name. When set, roles it does not name are
    dropped, so a provider's role can never be mistaken for a Datapunk role by accident."""
    attribute_claims: Mapping[str, str] = field(default_factory=dict)
    """Identity attribute name to the claim (dotted path) it is read from; a missing
    claim leaves the attribute out."""

    def __post_init__(self) -> None:
        if bool(self.tenant) == bool(self.tenant_claim):
            raise ValueError("set exactly one of tenant and tenant_claim")

    def __call__(self, claims: Mapping[str, Any]) -> Identity:
        issuer, sub = claims["iss"], claims["sub"]
        if self.tenant_claim:
            tenant = _tenant(_claim_at(claims, self.tenant_claim), self.tenant_claim)
        else:
            tenant = self.tenant
        roles: frozenset[str] = frozenset()
        if self.roles_claim:
            found = _claim_at(claims, self.roles_claim)
            roles = frozenset() if found is None else _names(found, self.roles_claim)
            if self.role_map:
                roles = frozenset(self.role_map[r] for r in roles if r in self.role_map)
        attributes: dict[str, str] = {}
        for name, path in self.attribute_claims.items():
            value = _claim_at(claims, path)
            if value is not None:
                attributes[name] = _attribute_value(value, path)
        return Identity(
            subject=f"user:{issuer}|{sub}",
            tenant=tenant,
            kind="user",
            roles=roles,
            scopes=_scopes(claims),
            issuer=issuer,
            credential_id=claims["jti"],
            attributes=MappingProxyType(attributes),
        )
