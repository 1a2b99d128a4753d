"""The AuditService servicer: the caller's trail from its verified identity, protobuf to
domain and back, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from datapunk.nexus.v1 import audit_pb2, audit_pb2_grpc
from datapunk_shared.auth.identity import identity_var
from datapunk_shared.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from datapunk_shared.rpc.server import ServiceContext
from google.protobuf.timestamp_pb2 import Timestamp

from datapunk_nexus.identity.audit.chain import ChainHasher, ChainVerdict, Problem
from datapunk_nexus.identity.audit.events import AuditQuery, Order, Outcome, RecordedEvent
from datapunk_nexus.identity.audit.log import AuditLog
from datapunk_nexus.identity.audit.store import AuditStore, open_audit_pool
from datapunk_nexus.identity.audit.writer import ChainWriter

__all__ = ["SERVICE_NAME", "AuditServicer", "add_audit_service"]

SERVICE_NAME: str = audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name
# The generated gRPC module is untyped; use it through Any.
_grpc: Any = audit_pb2_grpc

_OUTCOME_TO_PROTO = {
    Outcome.ALLOW: audit_pb2.AUDIT_OUTCOME_ALLOW,
    Outcome.DENY: audit_pb2.AUDIT_OUTCOME_DENY,
    Outcome.ERROR: audit_pb2.AUDIT_OUTCOME_ERROR,
}
_OUTCOME_FROM_PROTO = {value: key for key, value in _OUTCOME_TO_PROTO.items()}
_ORDER_FROM_PROTO = {
    audit_pb2.AUDIT_ORDER_UNSPECIFIED: Order.NEWEST_FIRST,
    audit_pb2.AUDIT_ORDER_NEWEST_FIRST: Order.NEWEST_FIRST,
    audit_pb2.AUDIT_ORDER_OLDEST_FIRST: Order.OLDEST_FIRST,
}
_PROBLEM_TO_PROTO = {
    Problem.EDITED: audit_pb2.AUDIT_CHAIN_PROBLEM_EDITED,
    Problem.INSERTED: audit_pb2.AUDIT_CHAIN_PROBLEM_INSERTED,
    Problem.MISSING: audit_pb2.AUDIT_CHAIN_PROBLEM_MISSING,
    Problem.OUT_OF_ORDER: audit_pb2.AUDIT_CHAIN_PROBLEM_OUT_OF_ORDER,
}


def _time(message: Any, name: str, where: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{where} is not a valid timestamp",
            violations=[FieldViolation(where, "not a valid timestamp", "INVALID_TIMESTAMP")],
        ) from None


def _query(tenant: str, message: audit_pb2.AuditEventFilter) -> AuditQuery:
    return AuditQuery(
        tenant=tenant,
        principal=message.principal,
        action=message.action,
        resource_prefix=message.resource_prefix,
        outcome=_OUTCOME_FROM_PROTO.get(message.outcome),
        start_time=_time(message, "start_time", "filter.start_time"),
        end_time=_time(message, "end_time", "filter.end_time"),
    )


def _event_to_proto(record: RecordedEvent) -> audit_pb2.AuditEvent:
    event = record.event
    message = audit_pb2.AuditEvent(
        sequence=record.sequence,
        tenant=event.tenant,
        principal=event.principal,
        principal_kind=event.principal_kind,
        credential_id=event.credential_id,
        action=event.action,
        method=event.method,
        resource=event.resource,
        outcome=_OUTCOME_TO_PROTO[event.outcome],
        reason=event.reason,
        client_address=event.client_address,
        request_id=event.request_id,
        previous_hash=record.prev_hash,
        hash=record.hash,
    )
    message.time.FromDatetime(record.time)
    return message


def _verdict_to_proto(verdict: ChainVerdict) -> audit_pb2.VerifyAuditTrailResponse:
    return audit_pb2.VerifyAuditTrailResponse(
        ok=verdict.ok,
        checked_count=verdict.checked,
        first_sequence=verdict.first_sequence,
        last_sequence=verdict.last_sequence,
        checkpoint_sequence=verdict.checkpoint_sequence,
        broken_sequence=verdict.broken_sequence,
        problem=(
            _PROBLEM_TO_PROTO[verdict.problem]
            if verdict.problem is not None
            else audit_pb2.AUDIT_CHAIN_PROBLEM_UNSPECIFIED
        ),
        description=verdict.description,
    )


class AuditServicer(_grpc.AuditServiceServicer):  # type: ignore[misc]
    """``datapunk.nexus.v1.AuditService`` over an :class:`AuditStore`."""

    def __init__(
        self, store: AuditStore, *, platform_tenant: str, platform_admin_role: str
    ) -> None:
        self._store = store
        self._platform_tenant = platform_tenant
        self._platform_admin_role = platform_admin_role

    def _trail(self, platform: bool) -> str:
        """The tenant whose trail the caller reads: its own, or the platform's (empty),
        which belongs to the platform tenant's holders of the platform administrator
        role (the policy at the entries decides the same before the call gets here)."""
        identity = identity_var.get()
        if identity is None or identity.effective.kind == "anonymous":
            raise Unauthenticated(
                "the audit trail needs an authenticated caller", reason="MISSING_CREDENTIALS"
            )
        caller = identity.effective
        if platform or not caller.tenant:
            if not (
                self._platform_tenant
                and caller.tenant == self._platform_tenant
                and self._platform_admin_role in caller.roles
            ):
                raise PermissionDenied(
                    "only platform administrators may read the platform's audit trail",
                    reason="PLATFORM_ADMIN_REQUIRED",
                    metadata={"role": self._platform_admin_role},
                )
            return ""
        return caller.tenant

    async def SearchAuditEvents(
        self, request: audit_pb2.SearchAuditEventsRequest, context: Any
    ) -> audit_pb2.SearchAuditEventsResponse:
        query = _query(self._trail(request.platform), request.filter)
        page = await self._store.search(
            query, _ORDER_FROM_PROTO[request.order], request.page_size, request.page_token
        )
        return audit_pb2.SearchAuditEventsResponse(
            events=[_event_to_proto(record) for record in page.records],
            next_page_token=page.next_page_token,
        )

    async def ExportAuditEvents(
        self, request: audit_pb2.ExportAuditEventsRequest, context: Any
    ) -> AsyncIterator[audit_pb2.ExportAuditEventsResponse]:
        query = _query(self._trail(request.platform), request.filter)
        async for record in self._store.export(query, _ORDER_FROM_PROTO[request.order]):
            yield audit_pb2.ExportAuditEventsResponse(event=_event_to_proto(record))

    async def VerifyAuditTrail(
        self, request: audit_pb2.VerifyAuditTrailRequest, context: Any
    ) -> audit_pb2.VerifyAuditTrailResponse:
        tenant = self._trail(request.platform)
        verdict = await self._store.verify(tenant, request.from_sequence, request.to_sequence)
        return _verdict_to_proto(verdict)


async def add_audit_service(context: ServiceContext, *, chain_key: bytes | None = None) -> AuditLog:
    """Register AuditService on the Nexus server and return the ``AuditLog`` the edges
    record with. The trail gets its own small PostgreSQL pool (so other work never holds
    up audit writes), opened now and closed, after the log's last batch, at shutdown.
    ``chain_key`` is the secret named by ``nexus.auth.audit.chain_key_secret``, read from
    the secret provider by the caller; None for plain SHA-256 hashes. The tables come
    from the Nexus migrations (``open_postgres``); until they are applied, records fail
    closed."""
    settings = context.settings.nexus.auth.audit
    pool = open_audit_pool(context.settings.engines.postgres.url, max_size=settings.pool_max)
    await pool.open(wait=False)
    context.cleanups.append(pool.close)
    hasher = ChainHasher(chain_key)
    audit_log = AuditLog.from_settings(
        ChainWriter(pool, hasher, pool_timeout=settings.write_timeout), settings
    )
    context.cleanups.append(audit_log.close)
    store = AuditStore(
        pool,
        hasher,
        pool_timeout=settings.write_timeout,
        max_page_size=settings.max_page_size,
        export_page_size=settings.export_page_size,
    )
    _grpc.add_AuditServiceServicer_to_server(
        AuditServicer(
            store,
            platform_tenant=context.settings.nexus.auth.policy.platform_tenant,
            platform_admin_role=settings.platform_admin_role,
        ),
        context.server,
    )
    context.service_names.append(SERVICE_NAME)
    return audit_log
