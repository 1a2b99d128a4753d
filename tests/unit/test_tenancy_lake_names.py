"""Where each Lake store puts a tenant's objects, without engines: the vector store's
collection names, QuestDB table and view names, PostGIS schemas; the contract's name
patterns agree with the stores' own, and no allowed combination exceeds an engine limit."""

from __future__ import annotations

import re
from typing import Any

import pytest
from datapunk.lake.v1 import spatial_pb2, timeseries_pb2, vectors_pb2
from datapunk_lake.spatial.postgis import (
    _CREATE_TABLE,
    _DISTANCE,
    FEATURE_SCHEMA,
    _sql,
    tenant_schema,
)
from datapunk_lake.timeseries import sql
from datapunk_lake.timeseries.domain import (
    IDENTIFIER,
    MAX_TABLE_NAME,
    AggregateQuery,
    DownsamplingRule,
    FieldSpec,
    FieldType,
    Fill,
    SeriesSchema,
    is_table_name,
)
from datapunk_lake.vectors.store import COLLECTION_ID, MAX_PHYSICAL_NAME
from datapunk_shared.auth.tenancy import MAX_TENANT_LENGTH, TenantNamespace
from hypothesis import given
from hypothesis import strategies as st

LONGEST_TENANT = "t" * MAX_TENANT_LENGTH
PG_MAX_IDENTIFIER = 63


def _contract_pattern(field: Any) -> re.Pattern[str]:
    """The buf.validate string pattern of a request field."""
    options = field.GetOptions()
    for descriptor, value in options.ListFields():
        if descriptor.full_name == "buf.validate.field":
            return re.compile(value.string.pattern)
    raise AssertionError(f"{field.full_name} has no pattern")


def _fits(pattern: re.Pattern[str], text: str) -> bool:
    """``text`` matches as protovalidate (RE2) would: ``$`` only at the very end."""
    return pattern.search(text) is not None and "\n" not in text


names = st.text(alphabet="az09_-A.", min_size=1, max_size=70)


@given(names)
def test_the_vector_store_accepts_exactly_the_contracts_collection_ids(name: str) -> None:
    contract = _contract_pattern(
        vectors_pb2.CreateCollectionRequest.DESCRIPTOR.fields_by_name["collection_id"]
    )
    assert (COLLECTION_ID.fullmatch(name) is not None) == _fits(contract, name)


@given(names)
def test_the_series_store_accepts_exactly_the_contracts_series_ids(name: str) -> None:
    contract = _contract_pattern(
        timeseries_pb2.CreateSeriesRequest.DESCRIPTOR.fields_by_name["series_id"]
    )
    assert (IDENTIFIER.fullmatch(name) is not None) == _fits(contract, name)


@given(names)
def test_layer_ids_are_the_same_form_as_collection_ids(name: str) -> None:
    contract = _contract_pattern(
        spatial_pb2.CreateLayerRequest.DESCRIPTOR.fields_by_name["layer_id"]
    )
    assert (COLLECTION_ID.fullmatch(name) is not None) == _fits(contract, name)


# ---- vectors -------------------------------------------------------------------------


def test_collection_names_for_any_tenant_fit_qdrant_and_the_trash_directory() -> None:
    longest = TenantNamespace(LONGEST_TENANT).physical(
        "c" * 50, pattern=COLLECTION_ID, max_length=MAX_PHYSICAL_NAME
    )
    assert len(longest) == 1 + MAX_TENANT_LENGTH + 2 + 50
    assert len(f".deleted-{'c' * MAX_PHYSICAL_NAME}-{'0' * 8}") == 255


# ---- time series ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["cpu", "cpu__hourly", "_acme__cpu", "_acme-eu__cpu__hourly", "_t1__a" + "b" * 62]
)
def test_physical_table_names(name: str) -> None:
    assert is_table_name(name)
    assert sql.table(name) == f'"{name}"'
    assert sql.literal_name(name) == f"'{name}'"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Cpu",
        "_acme__Cpu",
        "_acme_cpu",
        "_default__cpu",
        "_acme__",
        "__cpu",
        'cpu"; DROP TABLE x; --',
        "cpu\n",
        "_acme__cpu\n",
        "cpu-1",
        "c" * 64,
    ],
)
def test_anything_else_is_no_table_name(name: str) -> None:
    assert not is_table_name(name)
    with pytest.raises(ValueError, match="not an identifier"):
        sql.table(name)
    with pytest.raises(ValueError, match="not an identifier"):
        sql.literal_name(name)


def test_column_identifiers_take_no_tenant_prefix() -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        sql.ident("_acme__cpu")
    with pytest.raises(ValueError, match="not an identifier"):
        sql.ident("usage\n")


def test_series_and_view_names_for_any_tenant_fit_questdb() -> None:
    namespace = TenantNamespace(LONGEST_TENANT)
    series = namespace.physical("s" * 63, pattern=IDENTIFIER, max_length=MAX_TABLE_NAME)
    # A rule's view id is at most 63 characters too (the store refuses longer ones).
    view = namespace.physical("v" * 63, pattern=IDENTIFIER, max_length=MAX_TABLE_NAME)
    assert len(series) == len(view) == 98 <= MAX_TABLE_NAME
    assert is_table_name(series)
    assert is_table_name(view)


def test_a_rule_view_is_the_tenants_view_id_and_the_series_name_plus_the_rule() -> None:
    namespace = TenantNamespace("acme")
    rule = DownsamplingRule("cpu", "hourly", 3600, (), ())
    view = namespace.physical(rule.view_id, pattern=IDENTIFIER, max_length=MAX_TABLE_NAME)
    table = namespace.physical("cpu", pattern=IDENTIFIER, max_length=MAX_TABLE_NAME)
    assert view == f"{table}__hourly" == "_acme__cpu__hourly"
    schema = SeriesSchema("_acme__cpu", "ts", (), (FieldSpec("usage", FieldType.DOUBLE),))
    query = AggregateQuery("cpu", None, None, 3600, (), (), (), (), Fill(), 0)
    statement = sql.create_view(schema, view, query, None)
    assert statement.text.startswith('CREATE MATERIALIZED VIEW "_acme__cpu__hourly" AS (')
    assert ' FROM "_acme__cpu" SAMPLE BY 1h' in statement.text
    assert sql.drop_view(view).text == 'DROP MATERIALIZED VIEW "_acme__cpu__hourly"'
    assert sql.create_series(schema).text.startswith('CREATE TABLE "_acme__cpu" (')


# ---- spatial -------------------------------------------------------------------------


def test_each_tenant_has_its_own_schema() -> None:
    assert tenant_schema("default") == FEATURE_SCHEMA == "lake_spatial"
    assert tenant_schema("acme") == "lake_spatial__acme"
    assert tenant_schema("acme-eu") == "lake_spatial__acme-eu"
    assert len(tenant_schema(LONGEST_TENANT)) <= PG_MAX_IDENTIFIER
    # The longest layer's index name stays within PostgreSQL's identifier limit too.
    assert len("l" * 50 + "_geog") <= PG_MAX_IDENTIFIER


@given(st.from_regex(r"\A[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,4}){0,2}\Z"), st.data())
def test_no_two_tenants_share_a_schema(tenant: str, data: st.DataObject) -> None:
    other = data.draw(st.from_regex(r"\A[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,4}){0,2}\Z"))
    if tenant != other:
        assert tenant_schema(tenant) != tenant_schema(other)


@pytest.mark.parametrize("tenant", ["", "Acme", "a_b", "../x", "acme\n"])
def test_no_schema_for_a_malformed_tenant(tenant: str) -> None:
    with pytest.raises(ValueError, match="not a tenant id"):
        tenant_schema(tenant)


def test_layer_statements_name_the_tenants_tables_and_indexes() -> None:
    create = _sql(_CREATE_TABLE, "roads", schema="lake_spatial__acme").as_string(None)
    assert 'CREATE TABLE "lake_spatial__acme"."roads" (' in create
    assert 'CREATE INDEX "roads_geom" ON "lake_spatial__acme"."roads" USING gist' in create
    assert 'CREATE INDEX "roads_geog" ON "lake_spatial__acme"."roads" USING gist' in create
    distance = _sql(_DISTANCE, "roads", "rivers", "lake_spatial__acme").as_string(None)
    assert '"lake_spatial__acme"."roads"' in distance
    assert '"lake_spatial__acme"."rivers"' in distance
    assert '"lake_spatial"."roads"' in _sql(_CREATE_TABLE, "roads").as_string(None)
