"""The ApiKeyService servicer: converts between ``datapunk.nexus.v1`` messages and the
``ApiKeyManager``, with the caller taken from ``identity_var`` (set by the
authentication edge; the caller a service acts for when it acts for one)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from datapunk.nexus.v1 import api_keys_pb2, api_keys_pb2_grpc
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.errors import FieldViolation, InvalidArgument, Unauthenticated
from google.protobuf.timestamp_pb2 import Timestamp

from datapunk_nexus.identity.api_keys.domain import ApiKey, IssuedApiKey, KeyState
from datapunk_nexus.identity.api_keys.manager import ApiKeyManager

if TYPE_CHECKING:
    from datapunk_shared.rpc.server import ServiceContext

    from datapunk_nexus.identity.api_keys import ApiKeys

__all__ = ["ApiKeyServicer", "add_api_key_service"]

# The generated gRPC module is untyped; use it through Any.
_grpc: Any = api_keys_pb2_grpc

_STATES_TO_PROTO = {
    KeyState.ACTIVE: api_keys_pb2.API_KEY_STATE_ACTIVE,
    KeyState.REVOKED: api_keys_pb2.API_KEY_STATE_REVOKED,
    KeyState.EXPIRED: api_keys_pb2.API_KEY_STATE_EXPIRED,
}
_STATES_FROM_PROTO: dict[int, KeyState | None] = {
    api_keys_pb2.API_KEY_STATE_UNSPECIFIED: None,
    **{number: state for state, number in _STATES_TO_PROTO.items()},
}


def _caller() -> Identity:
    identity = identity_var.get()
    if identity is None or identity.kind == "anonymous":
        raise Unauthenticated(
            "managing API keys needs an authenticated caller", reason="MISSING_CREDENTIALS"
        )
    return identity.effective


def _set_time(target: Timestamp, moment: datetime | None) -> None:
    if moment is not None:
        target.FromDatetime(moment)


def _to_proto(key: ApiKey, now: datetime) -> api_keys_pb2.ApiKey:
    message = api_keys_pb2.ApiKey(
        id=key.id,
        name=key.name,
        tenant=key.tenant,
        prefix=key.prefix,
        roles=key.roles,
        scopes=key.scopes,
        created_by=key.created_by,
        state=_STATES_TO_PROTO[key.state(now)],
    )
    _set_time(message.create_time, key.create_time)
    _set_time(message.expire_time, key.expire_time)
    _set_time(message.revoke_time, key.revoke_time)
    _set_time(message.rotate_time, key.rotate_time)
    _set_time(message.last_used_time, key.last_used_time)
    return message


def _expire_time(request: api_keys_pb2.CreateApiKeyRequest) -> datetime | None:
    if not request.HasField("expire_time"):
        return None
    try:
        return request.expire_time.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            "expire_time is not a valid time",
            violations=[FieldViolation("expire_time", "must be a valid time", "INVALID_TIMESTAMP")],
            reason="INVALID_TIMESTAMP",
        ) from None


class ApiKeyServicer(_grpc.ApiKeyServiceServicer):  # type: ignore[misc]
    """``datapunk.nexus.v1.ApiKeyService`` over an :class:`ApiKeyManager`."""

    def __init__(self, manager: ApiKeyManager) -> None:
        self._manager = manager

    def _issued(self, issued: IssuedApiKey) -> tuple[api_keys_pb2.ApiKey, str]:
        return _to_proto(issued.api_key, self._manager.now()), issued.key

    async def CreateApiKey(
        self, request: api_keys_pb2.CreateApiKeyRequest, context: Any
    ) -> api_keys_pb2.CreateApiKeyResponse:
        issued = await self._manager.create(
            _caller(),
            name=request.name,
            roles=request.roles,
            scopes=request.scopes,
            expire_time=_expire_time(request),
        )
        api_key, key = self._issued(issued)
        return api_keys_pb2.CreateApiKeyResponse(api_key=api_key, key=key)

    async def GetApiKey(
        self, request: api_keys_pb2.GetApiKeyRequest, context: Any
    ) -> api_keys_pb2.GetApiKeyResponse:
        key = await self._manager.get(_caller(), request.id)
        return api_keys_pb2.GetApiKeyResponse(api_key=_to_proto(key, self._manager.now()))

    async def ListApiKeys(
        self, request: api_keys_pb2.ListApiKeysRequest, context: Any
    ) -> api_keys_pb2.ListApiKeysResponse:
        caller = _caller()
        state = _STATES_FROM_PROTO.get(request.state)
        if state is None and request.state != api_keys_pb2.API_KEY_STATE_UNSPECIFIED:
            raise InvalidArgument(
                f"unknown state {request.state}",
                violations=[FieldViolation("state", "must be a defined state", "UNKNOWN_STATE")],
                reason="UNKNOWN_STATE",
            )
        page = await self._manager.list(
            caller, state=state, page_size=request.page_size, page_token=request.page_token
        )
        now = self._manager.now()
        return api_keys_pb2.ListApiKeysResponse(
            api_keys=[_to_proto(key, now) for key in page.items],
            next_page_token=page.next_page_token,
        )

    async def RevokeApiKey(
        self, request: api_keys_pb2.RevokeApiKeyRequest, context: Any
    ) -> api_keys_pb2.RevokeApiKeyResponse:
        key = await self._manager.revoke(_caller(), request.id)
        return api_keys_pb2.RevokeApiKeyResponse(api_key=_to_proto(key, self._manager.now()))

    async def RotateApiKey(
        self, request: api_keys_pb2.RotateApiKeyRequest, context: Any
    ) -> api_keys_pb2.RotateApiKeyResponse:
        issued = await self._manager.rotate(
            _caller(), request.id, grace_period=request.grace_period.ToTimedelta()
        )
        api_key, key = self._issued(issued)
        response = api_keys_pb2.RotateApiKeyResponse(api_key=api_key, key=key)
        _set_time(response.previous_key_expire_time, issued.previous_key_expire_time)
        return response


def add_api_key_service(context: ServiceContext, api_keys: ApiKeys) -> None:
    """Register ApiKeyService on the service's server; the authenticator's pending
    last-used writes are awaited at shutdown."""
    _grpc.add_ApiKeyServiceServicer_to_server(ApiKeyServicer(api_keys.manager), context.server)
    context.service_names.append(
        api_keys_pb2.DESCRIPTOR.services_by_name["ApiKeyService"].full_name
    )
    context.cleanups.append(api_keys.authenticator.close)
