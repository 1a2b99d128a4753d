"""The audit trail's pure logic, without engines: the hash chain (stable, keyed, sensitive
to every field), the walk that names the first broken record and how it was broken, the
cleaning of events, and the event type having no field for a secret."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from datapunk.nexus.v1 import audit_pb2
from datapunk_nexus.identity.audit.chain import ChainHasher, Checkpoint, Head, Problem, verify_chain
from datapunk_nexus.identity.audit.events import (
    FIELD_LIMITS,
    GENESIS_HASH,
    AuditEvent,
    Outcome,
    RecordedEvent,
    clean_event,
)
from datapunk_shared.auth.identity import Identity
from datapunk_shared.errors import ConfigError

KEY = b"unit-test-audit-chain-key-32byte"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _chain(hasher: ChainHasher, count: int, tenant: str = "acme") -> list[RecordedEvent]:
    records: list[RecordedEvent] = []
    previous = GENESIS_HASH
    for i in range(1, count + 1):
        event = clean_event(
            AuditEvent(
                action="data.read",
                outcome=Outcome.ALLOW if i % 3 else Outcome.DENY,
                tenant=tenant,
                principal=f"client:c{i % 4}",
                principal_kind="client",
                resource=f"lake/collections/c{i}",
                time=T0 + timedelta(seconds=i),
            )
        )
        unsealed = RecordedEvent(event, i, previous, b"")
        record = dataclasses.replace(unsealed, hash=hasher.record_hash(unsealed))
        records.append(record)
        previous = record.hash
    return records


def _head(hasher: ChainHasher, records: list[RecordedEvent], tenant: str = "acme") -> Head:
    last = records[-1]
    return Head(
        tenant, last.sequence, last.hash, hasher.head_seal(tenant, last.sequence, last.hash)
    )


async def _iterate(records: Iterable[RecordedEvent]) -> AsyncIterator[RecordedEvent]:
    for record in sorted(records, key=lambda r: r.sequence):
        yield record


async def _verify(
    hasher: ChainHasher, records: list[RecordedEvent], head: Head | None, **kwargs: object
) -> tuple[int, Problem | None]:
    verdict = await verify_chain(
        hasher,
        _iterate(records),
        first_sequence=1,
        prev_hash=GENESIS_HASH,
        check_end=True,
        head=head,
        **kwargs,  # type: ignore[arg-type]
    )
    assert verdict.ok == (verdict.problem is None)
    return verdict.broken_sequence, verdict.problem


def _renumber(record: RecordedEvent, sequence: int) -> RecordedEvent:
    return dataclasses.replace(record, sequence=sequence)


@pytest.fixture(params=[KEY, None], ids=["hmac", "sha256"])
def hasher(request: pytest.FixtureRequest) -> ChainHasher:
    return ChainHasher(request.param)


async def test_an_intact_chain_verifies(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    verdict = await verify_chain(
        hasher,
        _iterate(records),
        first_sequence=1,
        prev_hash=GENESIS_HASH,
        check_end=True,
        head=_head(hasher, records),
    )
    assert (verdict.ok, verdict.checked, verdict.first_sequence, verdict.last_sequence) == (
        True,
        10,
        1,
        10,
    )


def test_the_hash_is_stable_and_covers_every_field() -> None:
    hasher = ChainHasher(KEY)
    record = _chain(hasher, 1)[0]
    # The documented canonical form, rebuilt here by hand: a version tag, the fields in
    # a fixed order (time in microseconds), the previous hash in hex, as compact JSON.
    micros = int((T0 + timedelta(seconds=1)).timestamp()) * 1_000_000 + 678901
    canonical = [
        "datapunk.audit.record.v1",
        "acme",
        1,
        micros,
        "client:c1",
        "client",
        "",
        "data.read",
        "",
        "lake/collections/c1",
        "allow",
        "",
        "",
        "",
        "00" * 32,
    ]
    data = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode()
    assert record.hash == hmac.new(KEY, data, hashlib.sha256).digest()
    assert ChainHasher(None).record_hash(record) == hashlib.sha256(data).digest()
    # Stored chains depend on this digest never changing.
    assert record.hash.hex() == "4533019359690aaa78c6222389c2fae49175610cc4044360fbafad7752921de8"
    changed: dict[str, Any] = {
        "tenant": "other",
        "principal": "client:x",
        "principal_kind": "user",
        "credential_id": "jti-1",
        "action": "data.write",
        "method": "/x.y/Z",
        "resource": "lake/other",
        "outcome": Outcome.ERROR,
        "reason": "TOKEN_EXPIRED",
        "client_address": "10.0.0.1",
        "request_id": "r-1",
        "time": T0 + timedelta(microseconds=1),
    }
    for name, value in changed.items():
        edited = dataclasses.replace(
            record, event=dataclasses.replace(record.event, **{name: value})
        )
        assert hasher.record_hash(edited) != record.hash, name
    assert hasher.record_hash(_renumber(record, 2)) != record.hash
    assert hasher.record_hash(dataclasses.replace(record, prev_hash=b"\x01" * 32)) != record.hash
    assert ChainHasher(b"another-key-of-32-bytes-length!!").record_hash(record) != record.hash
    assert ChainHasher(None).record_hash(record) != record.hash


def test_a_short_chain_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        ChainHasher(b"short")


async def test_an_edited_record_is_named(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    head = _head(hasher, records)
    records[4] = dataclasses.replace(
        records[4], event=dataclasses.replace(records[4].event, resource="lake/secret")
    )
    assert await _verify(hasher, records, head) == (5, Problem.EDITED)


async def test_an_edited_link_is_named_as_an_edit(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    head = _head(hasher, records)
    records[4] = dataclasses.replace(records[4], prev_hash=b"\x07" * 32)
    assert await _verify(hasher, records, head) == (5, Problem.EDITED)


async def test_a_deleted_record_is_named_as_missing(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    head = _head(hasher, records)
    del records[4]
    assert await _verify(hasher, records, head) == (5, Problem.MISSING)


async def test_a_record_deleted_and_the_rest_renumbered_is_found(hasher: ChainHasher) -> None:
    """The record that took the deleted one's number no longer matches its hash (the
    number is hashed) nor links to the record before it."""
    records = _chain(hasher, 10)
    head = _head(hasher, records)
    del records[4]
    records = records[:4] + [_renumber(r, r.sequence - 1) for r in records[4:]]
    verdict = await verify_chain(
        hasher,
        _iterate(records),
        first_sequence=1,
        prev_hash=GENESIS_HASH,
        check_end=True,
        head=head,
    )
    assert (verdict.broken_sequence, verdict.problem) == (5, Problem.EDITED)
    assert "renumbered" in verdict.description


async def test_an_inserted_record_is_named(hasher: ChainHasher) -> None:
    """A forger renumbers the records after the spot and puts one in, linked to the
    record before it; with a key its hash cannot be right, without one it can."""
    records = _chain(hasher, 10)
    head = _head(hasher, records)
    forged_event = dataclasses.replace(records[4].event, principal="client:forger")
    forged = RecordedEvent(forged_event, 5, records[3].hash, b"")
    forger = ChainHasher(None)  # the forger does not have the key
    forged = dataclasses.replace(forged, hash=forger.record_hash(forged))
    tampered = [*records[:4], forged, *(_renumber(r, r.sequence + 1) for r in records[4:])]
    assert await _verify(hasher, tampered, head) == (5, Problem.INSERTED)


async def test_reordered_records_are_named(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    head = _head(hasher, records)
    records[4], records[5] = _renumber(records[5], 5), _renumber(records[4], 6)
    assert await _verify(hasher, records, head) == (5, Problem.OUT_OF_ORDER)


async def test_newest_records_cut_off_are_missing(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    head = _head(hasher, records)
    assert await _verify(hasher, records[:8], head) == (9, Problem.MISSING)


async def test_a_head_moved_back_over_cut_records_is_caught_with_a_key() -> None:
    hasher = ChainHasher(KEY)
    records = _chain(hasher, 10)
    last = records[7]
    # The forger points the head at record 8, but cannot seal it without the key.
    forged_head = Head("acme", 8, last.hash, ChainHasher(None).head_seal("acme", 8, last.hash))
    assert await _verify(hasher, records[:8], forged_head) == (8, Problem.EDITED)


async def test_records_after_the_head_are_inserted(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    assert await _verify(hasher, records, _head(hasher, records[:9])) == (10, Problem.INSERTED)


async def test_records_without_a_head_are_reported(hasher: ChainHasher) -> None:
    records = _chain(hasher, 3)
    assert await _verify(hasher, records, None) == (3, Problem.EDITED)
    assert await _verify(hasher, [], None) == (0, None)


async def test_a_walk_from_a_checkpoint(hasher: ChainHasher) -> None:
    records = _chain(hasher, 10)
    removed = records[5]
    created = T0 + timedelta(days=1)
    checkpoint = Checkpoint(
        "acme",
        6,
        removed.hash,
        created,
        hasher.checkpoint_seal("acme", 6, removed.hash, created),
    )

    async def walk(cp: Checkpoint, rest: list[RecordedEvent]) -> tuple[int, Problem | None]:
        verdict = await verify_chain(
            hasher,
            _iterate(rest),
            first_sequence=cp.sequence + 1,
            prev_hash=cp.hash,
            checkpoint=cp,
            check_end=True,
            head=_head(hasher, records),
        )
        return verdict.broken_sequence, verdict.problem

    assert await walk(checkpoint, records[6:]) == (0, None)
    assert await walk(checkpoint, records[7:]) == (7, Problem.MISSING)
    moved = dataclasses.replace(checkpoint, hash=records[6].hash, sequence=7)
    if hasher.keyed:
        assert await walk(moved, records[7:]) == (7, Problem.EDITED)


async def test_a_range_stops_at_its_end_and_uses_the_next_record_as_look_ahead(
    hasher: ChainHasher,
) -> None:
    records = _chain(hasher, 10)
    records[7] = dataclasses.replace(
        records[7], event=dataclasses.replace(records[7].event, action="x")
    )
    verdict = await verify_chain(
        hasher, _iterate(records[2:]), first_sequence=3, prev_hash=records[1].hash, last_sequence=6
    )
    assert (verdict.ok, verdict.checked, verdict.first_sequence, verdict.last_sequence) == (
        True,
        4,
        3,
        6,
    )
    verdict = await verify_chain(
        hasher, _iterate(records[2:]), first_sequence=3, prev_hash=records[1].hash, last_sequence=9
    )
    assert (verdict.broken_sequence, verdict.problem) == (8, Problem.EDITED)


def test_events_are_cleaned_before_they_are_stored() -> None:
    long = "x" * 5000
    event = clean_event(
        AuditEvent(action="a\x00b", outcome=Outcome.DENY, resource=long, principal="\ud800x"),
        now=T0,
    )
    assert event.action == "a\ufffdb"
    assert len(event.resource) == FIELD_LIMITS["resource"]
    assert event.resource.endswith("…")
    assert event.principal == "?x"
    assert event.time == T0
    with pytest.raises(ValueError, match="timezone-aware"):
        clean_event(AuditEvent(action="a", outcome=Outcome.ALLOW, time=datetime(2026, 1, 1)))


def test_no_field_can_hold_a_secret() -> None:
    """The record has a field for a credential's public id and none for the credential."""
    fields = {f.name for f in dataclasses.fields(AuditEvent)}
    assert fields == {
        "action",
        "outcome",
        "tenant",
        "principal",
        "principal_kind",
        "credential_id",
        "method",
        "resource",
        "reason",
        "client_address",
        "request_id",
        "time",
    }
    proto_fields = {f.name for f in audit_pb2.AuditEvent.DESCRIPTOR.fields}
    assert proto_fields == (fields - {"outcome", "time"}) | {
        "outcome",
        "time",
        "sequence",
        "previous_hash",
        "hash",
    }


def test_an_event_of_an_identity_names_the_caller_it_acts_for() -> None:
    caller = Identity(
        subject="client:ingest",
        tenant="acme",
        kind="client",
        credential_id="jti-42",
        roles=frozenset({"admin"}),
    )
    nexus = Identity(subject="service:nexus", tenant="", kind="service", on_behalf_of=caller)
    event = AuditEvent.of(nexus, "data.read", Outcome.ALLOW, resource="lake/collections/x")
    assert (event.tenant, event.principal, event.principal_kind, event.credential_id) == (
        "acme",
        "client:ingest",
        "client",
        "jti-42",
    )
    anonymous = AuditEvent.of(None, "authenticate", Outcome.DENY, reason="TOKEN_EXPIRED")
    assert (anonymous.tenant, anonymous.principal) == ("", "")
