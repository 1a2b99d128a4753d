"""The tamper-evident audit trail (``datapunk.nexus.v1.AuditService``).

Modules: :mod:`.events` (what a record says; no field for a secret), :mod:`.chain` (the
hash chain and the walk that finds where it is broken), :mod:`.writer` (appending to the
chains in PostgreSQL, several writers at once), :mod:`.log` (``AuditLog.record``: group
commit, fail closed), :mod:`.store` (search, export, verify, retention checkpoints) and
:mod:`.servicer` (protobuf, and ``add_audit_service``).

Retention: deleting records breaks the chain, except through ``AuditStore.prune``, which
verifies the records it removes and leaves a sealed checkpoint that verification starts
from."""

from __future__ import annotations

from datapunk_nexus.identity.audit.chain import ChainHasher, ChainVerdict, Checkpoint, Problem
from datapunk_nexus.identity.audit.events import (
    AuditEvent,
    AuditQuery,
    Order,
    Outcome,
    RecordedEvent,
)
from datapunk_nexus.identity.audit.log import AuditLog
from datapunk_nexus.identity.audit.store import (
    AuditStore,
    SearchPage,
    audit_unavailable,
    open_audit_pool,
)
from datapunk_nexus.identity.audit.writer import ChainWriter

__all__ = [
    "AuditEvent",
    "AuditLog",
    "AuditQuery",
    "AuditStore",
    "ChainHasher",
    "ChainVerdict",
    "ChainWriter",
    "Checkpoint",
    "Order",
    "Outcome",
    "Problem",
    "RecordedEvent",
    "SearchPage",
    "audit_unavailable",
    "open_audit_pool",
]
