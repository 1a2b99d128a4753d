"""Claims to Identity: Nexus's own vocabulary and the configurable mapping of an external
OpenID Connect provider, including the claims a misconfigured issuer might send."""

from __future__ import annotations

from typing import Any

import pytest
from datapunk_shared.auth.claims import OidcClaims, datapunk_claims
from datapunk_shared.errors import Unauthenticated

from tests.token_kit import ISSUER, claims

IDP = "https://idp.test/realms/main"


def idp_claims(**overrides: Any) -> dict[str, Any]:
    base = claims(iss=IDP, sub="248289761001", aud="datapunk", client_id="web")
    for name in ("datapunk_tenant", "datapunk_roles"):
        base.pop(name)
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def malformed(claim: str, call: Any) -> None:
    with pytest.raises(Unauthenticated) as caught:
        call()
    assert caught.value.reason == "MALFORMED_TOKEN"
    assert caught.value.metadata == {"claim": claim}


def test_client_tokens_carry_tenant_roles_scopes_and_attributes() -> None:
    identity = datapunk_claims(
        claims(datapunk_attributes={"clearance": "secret", "level": 3, "staff": True})
    )
    assert identity.kind == "client"
    assert identity.subject == "client:ingest-bot"
    assert identity.tenant == "acme"
    assert identity.roles == {"writer"}
    assert identity.scopes == {"lake.read", "lake.write"}
    assert identity.issuer == ISSUER
    assert dict(identity.attributes) == {"clearance": "secret", "level": "3", "staff": "true"}


def test_service_tokens_need_no_tenant() -> None:
    identity = datapunk_claims(
        claims(sub="service:nexus", datapunk_tenant=None, datapunk_roles=None, scope=None)
    )
    assert identity.kind == "service"
    assert identity.subject == "service:nexus"
    assert identity.tenant == ""
    assert identity.roles == frozenset()
    assert identity.scopes == frozenset()


@pytest.mark.parametrize("sub", ["ingest-bot", "user:alice", "client:", "service:", "admin"])
def test_subjects_outside_the_vocabulary_are_refused(sub: str) -> None:
    malformed("sub", lambda: datapunk_claims(claims(sub=sub)))


@pytest.mark.parametrize(
    "tenant",
    # The last three are names but not tenant ids every service accepts.
    [None, "", "two words", 5, ["acme"], "x" * 129, "a\x00b", "x" * 33, "Acme", "acme_eu"],
)
def test_client_tokens_need_a_valid_tenant(tenant: Any) -> None:
    malformed("datapunk_tenant", lambda: datapunk_claims(claims(datapunk_tenant=tenant)))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("datapunk_roles", "admin writer"),  # a list, never a string to split
        ("datapunk_roles", [1]),
        ("datapunk_roles", ["ok", ""]),
        ("datapunk_roles", ["r"] * 65),
        ("datapunk_roles", {"admin": True}),
        ("scope", 42),
        ("scope", " ".join(f"s{i}" for i in range(65))),
        ("datapunk_attributes", ["clearance"]),
        ("datapunk_attributes", {"clearance": {"nested": 1}}),
        ("datapunk_attributes", {"clearance": "x" * 257}),
        ("datapunk_attributes", {"bad key": "v"}),
    ],
)
def test_malformed_role_scope_and_attribute_claims_are_refused(claim: str, value: Any) -> None:
    malformed(claim, lambda: datapunk_claims(claims(**{claim: value})))


def test_an_oidc_user_with_a_fixed_tenant() -> None:
    identity = OidcClaims(tenant="acme")(idp_claims())
    assert identity.kind == "user"
    assert identity.subject == f"user:{IDP}|248289761001"
    assert identity.tenant == "acme"
    assert identity.roles == frozenset()
    assert identity.issuer == IDP
    assert identity.credential_id == idp_claims()["jti"]


def test_an_oidc_user_with_tenant_roles_and_attributes_from_claims() -> None:
    mapping = OidcClaims(
        tenant_claim="org.id",
        roles_claim="realm_access.roles",
        attribute_claims={"clearance": "ext.clearance", "dept": "department"},
    )
    identity = mapping(
        idp_claims(
            org={"id": "globex"},
            realm_access={"roles": ["analyst", "viewer"]},
            ext={"clearance": "internal"},
            scope=None,
            scp=["read", "write"],
        )
    )
    assert identity.tenant == "globex"
    assert identity.roles == {"analyst", "viewer"}
    assert identity.scopes == {"read", "write"}
    assert dict(identity.attributes) == {"clearance": "internal"}  # no department claim


def test_a_role_map_renames_and_drops_unmapped_roles() -> None:
    mapping = OidcClaims(
        tenant="acme",
        roles_claim="groups",
        role_map={"data-engineers": "writer", "auditors": "auditor"},
    )
    identity = mapping(idp_claims(groups="data-engineers admin superuser"))
    assert identity.roles == {"writer"}  # "admin" at the provider is not a Datapunk admin


def test_an_oidc_user_without_the_roles_claim_has_no_roles() -> None:
    assert OidcClaims(tenant="acme", roles_claim="roles")(idp_claims()).roles == frozenset()


@pytest.mark.parametrize(
    "org", [None, {"id": ""}, {"id": 7}, "globex", {"id": "a b"}, {"id": "Globex.Corp"}]
)
def test_an_oidc_user_without_a_valid_tenant_claim_is_refused(org: Any) -> None:
    mapping = OidcClaims(tenant_claim="org.id")
    malformed("org.id", lambda: mapping(idp_claims(org=org)))


def test_oidc_roles_of_the_wrong_shape_are_refused() -> None:
    mapping = OidcClaims(tenant="acme", roles_claim="roles")
    malformed("roles", lambda: mapping(idp_claims(roles={"admin": True})))
    malformed("roles", lambda: mapping(idp_claims(roles=[["nested"]])))


@pytest.mark.parametrize(("tenant", "tenant_claim"), [("", ""), ("acme", "org")])
def test_an_oidc_mapping_needs_exactly_one_tenant_source(tenant: str, tenant_claim: str) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        OidcClaims(tenant=tenant, tenant_claim=tenant_claim)
