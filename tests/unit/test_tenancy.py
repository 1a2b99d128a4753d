"""Tenancy without engines: the tenant id form, which tenant a call acts for, and the
physical naming of flat namespaces (no collisions, one way to decode, lengths, bounds,
errors rewritten into logical names)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from datapunk_shared.auth.identity import ANONYMOUS, Identity, identity_var
from datapunk_shared.auth.tenancy import (
    DEFAULT_TENANT,
    MAX_TENANT_LENGTH,
    TENANT_PATTERN,
    TenantNamespace,
    current_namespace,
    current_tenant,
    default_tenant,
    is_tenant_id,
    set_default_tenant,
    split_physical_name,
)
from datapunk_shared.config import AuthSettings
from datapunk_shared.errors import (
    ConfigError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

# The Lake's logical name forms (vectors/spatial ids, time-series identifiers), and the
# loosest form the scheme allows (a lower-case letter first), for the properties.
COLLECTION_ID = re.compile(r"[a-z](?:[a-z0-9_-]{0,48}[a-z0-9])?")
IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")
ANY_NAME = re.compile(r"[a-z][a-z0-9_-]*")

GOOD_TENANTS = ["default", "acme", "acme-eu", "t42", "a", "a-1-b", "x" * MAX_TENANT_LENGTH]
BAD_TENANTS = [
    "",
    "Acme",
    "acme_eu",
    "acme--eu",
    "acme-",
    "-acme",
    "1acme",
    "acme eu",
    "acme\n",
    "acme/..",
    "acmé",
    "x" * (MAX_TENANT_LENGTH + 1),
]

tenants = st.from_regex(r"\A[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,4}){0,2}\Z")
logical_names = st.from_regex(r"\A[a-z][a-z0-9_-]{0,20}\Z")


@pytest.fixture(autouse=True)
def _default_tenant_restored() -> Iterator[None]:
    yield
    set_default_tenant(DEFAULT_TENANT)


def _acting(identity: Identity | None) -> Iterator[None]:
    token = identity_var.set(identity)
    try:
        yield
    finally:
        identity_var.reset(token)


def _namespace(tenant: str) -> TenantNamespace:
    return TenantNamespace(tenant)


def _physical(tenant: str, name: str, max_length: int = 255) -> str:
    return _namespace(tenant).physical(name, pattern=ANY_NAME, max_length=max_length)


# ---- tenant ids ----------------------------------------------------------------------


@pytest.mark.parametrize("tenant", GOOD_TENANTS)
def test_well_formed_tenant_ids(tenant: str) -> None:
    assert is_tenant_id(tenant)
    TenantNamespace(tenant)
    AuthSettings(default_tenant=tenant)


@pytest.mark.parametrize("tenant", BAD_TENANTS)
def test_malformed_tenant_ids_are_refused_everywhere(tenant: str) -> None:
    assert not is_tenant_id(tenant)
    with pytest.raises(ValueError, match="not a tenant id"):
        TenantNamespace(tenant)
    with pytest.raises(ConfigError) as caught:
        set_default_tenant(tenant)
    assert caught.value.keys == ["auth.default_tenant"]
    assert default_tenant() == DEFAULT_TENANT
    with pytest.raises(ValidationError):
        AuthSettings(default_tenant=tenant)


@given(st.text(alphabet="abz09-_A.\n ", max_size=40))
def test_the_settings_field_and_the_library_agree_on_the_form(value: str) -> None:
    try:
        AuthSettings(default_tenant=value)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == is_tenant_id(value)
    assert TENANT_PATTERN in str(AuthSettings.model_fields["default_tenant"].metadata)


# ---- the tenant of a call ------------------------------------------------------------


def test_without_an_identity_the_call_acts_for_the_configured_default() -> None:
    assert current_tenant() == DEFAULT_TENANT
    set_default_tenant("dev-box")
    assert current_tenant() == "dev-box"
    assert current_namespace() == TenantNamespace("dev-box")


def test_the_identity_tenant_wins_over_the_default() -> None:
    set_default_tenant("dev-box")
    for _ in _acting(Identity(subject="client:ingest", tenant="acme", kind="client")):
        assert current_tenant() == "acme"


def test_a_forwarded_call_acts_for_the_caller_nexus_forwards() -> None:
    user = Identity(subject="user:idp|alice", tenant="acme-eu", kind="user")
    nexus = Identity(subject="service:nexus", tenant="", kind="service", on_behalf_of=user)
    for _ in _acting(nexus):
        assert current_tenant() == "acme-eu"


@pytest.mark.parametrize("tenant", BAD_TENANTS)
def test_an_identity_with_a_malformed_tenant_is_refused(tenant: str) -> None:
    for _ in _acting(Identity(subject="client:x", tenant=tenant, kind="client")):
        with pytest.raises(PermissionDenied) as caught:
            current_tenant()
    assert caught.value.reason == "INVALID_TENANT"
    assert caught.value.metadata == {}


def test_a_service_acting_for_itself_without_a_tenant_is_refused() -> None:
    for _ in _acting(Identity(subject="service:stream", tenant="", kind="service")):
        with pytest.raises(PermissionDenied, match="tenant"):
            current_tenant()


def test_an_anonymous_identity_is_not_the_default_tenant() -> None:
    for _ in _acting(ANONYMOUS):
        with pytest.raises(Unauthenticated) as caught:
            current_tenant()
    assert caught.value.reason == "MISSING_CREDENTIALS"


# ---- physical names ------------------------------------------------------------------


def test_the_default_tenant_keeps_plain_names_and_others_get_a_prefix() -> None:
    assert _physical("default", "docs") == "docs"
    assert _physical("acme", "docs") == "_acme__docs"
    assert _physical("acme-eu", "docs") == "_acme-eu__docs"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # A logical name that spells out another tenant's physical name.
        (("default", "acme__docs"), ("acme", "docs")),
        # Separators inside logical names, and tenants that are prefixes of each other.
        (("a", "b__c"), ("a-b", "c")),
        (("acme", "eu__docs"), ("acme-eu", "docs")),
        (("acme", "x"), ("acmex", "x")),
        (("acme", "docs_"), ("acme", "docs")),
        (("a", "_b__c"), ("b", "c")),
    ],
)
def test_tricky_pairs_never_collide(first: tuple[str, str], second: tuple[str, str]) -> None:
    try:
        one = _physical(*first)
    except InvalidArgument:
        return  # refused outright: then it cannot collide either
    assert one != _physical(*second)


@given(tenants, logical_names)
def test_every_physical_name_decodes_to_its_one_tenant_and_name(tenant: str, name: str) -> None:
    physical = _physical(tenant, name)
    assert split_physical_name(physical) == (tenant, name)
    assert _namespace(tenant).logical(physical) == name


@given(tenants, logical_names, tenants, logical_names)
def test_two_different_pairs_never_share_a_physical_name(
    tenant: str, name: str, other_tenant: str, other_name: str
) -> None:
    if (tenant, name) != (other_tenant, other_name):
        assert _physical(tenant, name) != _physical(other_tenant, other_name)


@given(tenants, logical_names, tenants, logical_names)
def test_a_tenant_recognises_only_its_own_names(
    tenant: str, name: str, other_tenant: str, other_name: str
) -> None:
    if tenant != other_tenant:
        assert _namespace(tenant).logical(_physical(other_tenant, other_name)) is None


@given(tenants, logical_names, tenants, logical_names)
def test_bounds_hold_exactly_the_tenants_names(
    tenant: str, name: str, other_tenant: str, other_name: str
) -> None:
    low, high = _namespace(tenant).bounds()
    assert low < _physical(tenant, name) < high
    if tenant != other_tenant:
        assert not low < _physical(other_tenant, other_name) < high


@pytest.mark.parametrize(
    "name", ["", "_acme__docs", "Docs", "9lives", "docs\n", "../etc", "a/b", "é", "docs-"]
)
@pytest.mark.parametrize("tenant", ["default", "acme"])
def test_names_outside_the_store_form_are_refused(tenant: str, name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _namespace(tenant).physical(
            name, pattern=COLLECTION_ID, max_length=255, field="collection_id"
        )
    assert caught.value.reason == "INVALID_NAME"
    assert caught.value.violations[0].field == "collection_id"


def test_too_long_combinations_are_refused_with_the_room_left() -> None:
    name = "s" * 63
    assert _namespace("default").physical(name, pattern=IDENTIFIER, max_length=63) == name
    with pytest.raises(InvalidArgument) as caught:
        _namespace("acme").physical(name, pattern=IDENTIFIER, max_length=63, field="series_id")
    error = caught.value
    assert error.reason == "NAME_TOO_LONG"
    assert error.metadata == {"max_length": str(63 - len("_acme__"))}
    assert error.violations == [
        FieldViolation("series_id", "at most 56 characters", "NAME_TOO_LONG")
    ]
    assert "_acme__" not in error.message
    fits = "s" * 56
    assert _namespace("acme").physical(fits, pattern=IDENTIFIER, max_length=63) == f"_acme__{fits}"


@pytest.mark.parametrize(
    "physical",
    [
        "",
        "_",
        "__docs",
        "_acme_docs",
        "_acme__",
        "_acme___docs",
        "_Acme__docs",
        "_acme--eu__docs",
        "_default__docs",
        "Docs",
        "9docs",
        ".deleted-docs",
        "-docs",
    ],
)
def test_names_no_tenant_makes_decode_to_nobody(physical: str) -> None:
    assert split_physical_name(physical) is None
    for tenant in ("default", "acme"):
        assert _namespace(tenant).logical(physical) is None


def test_plain_names_are_the_default_tenants() -> None:
    assert split_physical_name("telemetry") == ("default", "telemetry")
    assert split_physical_name("cpu__hourly") == ("default", "cpu__hourly")


# ---- errors in logical terms ---------------------------------------------------------


def test_engine_errors_are_rewritten_into_logical_names() -> None:
    namespace = TenantNamespace("acme")
    with pytest.raises(NotFound) as caught, namespace.logical_errors():
        raise NotFound(
            "collection '_acme__docs' does not exist",
            reason="COLLECTION_NOT_FOUND",
            metadata={"collection": "collections/_acme__docs"},
        )
    assert caught.value.message == "collection 'docs' does not exist"
    assert caught.value.args == ("collection 'docs' does not exist",)
    assert caught.value.metadata == {"collection": "collections/docs"}
    assert caught.value.reason == "COLLECTION_NOT_FOUND"
    with pytest.raises(InvalidArgument) as refused, namespace.logical_errors():
        raise InvalidArgument(
            "QuestDB refused the batch for series '_acme__cpu': bad",
            violations=[FieldViolation("rows", "table=_acme__cpu__hourly", "ENGINE_REJECTED")],
            metadata={"series": "_acme__cpu"},
        )
    assert refused.value.message == "QuestDB refused the batch for series 'cpu': bad"
    assert refused.value.violations == [
        FieldViolation("rows", "table=cpu__hourly", "ENGINE_REJECTED")
    ]
    assert refused.value.metadata == {"series": "cpu"}


def test_the_default_tenant_errors_pass_unchanged() -> None:
    original = NotFound("collection 'docs' does not exist", metadata={"c": "collections/docs"})
    with pytest.raises(NotFound) as caught, TenantNamespace("default").logical_errors():
        raise original
    assert caught.value is original
    assert caught.value.message == "collection 'docs' does not exist"
