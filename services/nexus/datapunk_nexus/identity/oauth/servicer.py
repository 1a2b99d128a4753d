"""The AuthService servicer: converts between ``datapunk.nexus.v1`` messages and the
``AuthorizationServer``. The caller comes from ``identity_var`` (set by the
authentication edge; the caller a service acts for when it acts for one), never from a
request field; only IssueToken, and RevokeToken and IntrospectToken with client
credentials, need none."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from datapunk.nexus.v1 import auth_pb2, auth_pb2_grpc
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.auth.tenancy import is_tenant_id
from datapunk_shared.errors import PermissionDenied, Unauthenticated
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token
from google.protobuf.timestamp_pb2 import Timestamp

from datapunk_nexus.identity.oauth.clients import ClientSpec, OAuthClient, client_name
from datapunk_nexus.identity.oauth.keyring import KeyInfo
from datapunk_nexus.identity.oauth.server import AuthorizationServer, TokenRequest
from datapunk_nexus.identity.oauth.trail import INTROSPECT_METHOD, REVOKE_METHOD

if TYPE_CHECKING:
    from datapunk_shared.rpc.server import ServiceContext

__all__ = ["AuthServicer", "add_auth_service"]

# The generated gRPC module is untyped; use it through Any.
_grpc: Any = auth_pb2_grpc

_DEFAULT_PAGE_SIZE = 100
_CLIENTS_PREFIX = "clients/"
_KEYS_PREFIX = "signingKeys/"


def _caller() -> Identity:
    """The identity the call acts for; UNAUTHENTICATED without one."""
    identity = identity_var.get()
    if identity is None or identity.effective.kind == "anonymous":
        raise Unauthenticated(
            "this call needs an authenticated caller", reason="MISSING_CREDENTIALS"
        )
    return identity.effective


def _caller_tenant() -> str:
    """The caller's tenant: clients and tokens are kept only for well-formed tenant ids."""
    tenant = _caller().tenant
    if not is_tenant_id(tenant):
        raise PermissionDenied(
            "the caller's tenant is missing or not a tenant id", reason="INVALID_TENANT"
        )
    return tenant


def _time(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _client_message(client: OAuthClient) -> auth_pb2.Client:
    return auth_pb2.Client(
        name=client_name(client.client_id),
        client_id=client.client_id,
        display_name=client.display_name,
        roles=client.roles,
        allowed_scopes=client.allowed_scopes,
        allowed_audiences=client.allowed_audiences,
        allow_refresh_tokens=client.allow_refresh_tokens,
        tenant=client.tenant,
        create_time=_time(client.create_time),
        secret_create_time=_time(client.secret_create_time),
    )


def _key_message(key: KeyInfo) -> auth_pb2.SigningKey:
    return auth_pb2.SigningKey(
        name=_KEYS_PREFIX + key.kid,
        kid=key.kid,
        alg=key.alg,
        active=key.state == "active",
        create_time=_time(key.created_at),
        public_jwk=json.dumps(dict(key.public_jwk), separators=(",", ":"), sort_keys=True),
    )


def _who(identity: Identity) -> auth_pb2.WhoAmIResponse:
    return auth_pb2.WhoAmIResponse(
        subject=identity.subject,
        tenant=identity.tenant,
        kind=identity.kind,
        roles=sorted(identity.roles),
        scopes=sorted(identity.scopes),
        issuer=identity.issuer,
    )


class AuthServicer(_grpc.AuthServiceServicer):  # type: ignore[misc]
    def __init__(self, server: AuthorizationServer) -> None:
        self._server = server

    # --- clients ------------------------------------------------------------------------

    async def CreateClient(
        self, request: auth_pb2.CreateClientRequest, context: Any
    ) -> auth_pb2.CreateClientResponse:
        given = request.client
        spec = ClientSpec(
            client_id=given.client_id,
            display_name=given.display_name,
            roles=tuple(given.roles),
            allowed_scopes=tuple(given.allowed_scopes),
            allowed_audiences=tuple(given.allowed_audiences),
            allow_refresh_tokens=given.allow_refresh_tokens,
        )
        client, secret = await self._server.create_client(
            _caller_tenant(), spec, held_roles=_caller().roles
        )
        return auth_pb2.CreateClientResponse(client=_client_message(client), client_secret=secret)

    async def GetClient(
        self, request: auth_pb2.GetClientRequest, context: Any
    ) -> auth_pb2.GetClientResponse:
        client_id = request.name.removeprefix(_CLIENTS_PREFIX)
        client = await self._server.clients.get(_caller_tenant(), client_id)
        return auth_pb2.GetClientResponse(client=_client_message(client))

    async def ListClients(
        self, request: auth_pb2.ListClientsRequest, context: Any
    ) -> auth_pb2.ListClientsResponse:
        clients, next_token = await self._server.clients.list_clients(
            _caller_tenant(), request.page_size, request.page_token
        )
        return auth_pb2.ListClientsResponse(
            clients=[_client_message(c) for c in clients], next_page_token=next_token
        )

    async def DeleteClient(
        self, request: auth_pb2.DeleteClientRequest, context: Any
    ) -> auth_pb2.DeleteClientResponse:
        client_id = request.name.removeprefix(_CLIENTS_PREFIX)
        await self._server.delete_client(_caller_tenant(), client_id)
        return auth_pb2.DeleteClientResponse()

    async def RotateClientSecret(
        self, request: auth_pb2.RotateClientSecretRequest, context: Any
    ) -> auth_pb2.RotateClientSecretResponse:
        client_id = request.name.removeprefix(_CLIENTS_PREFIX)
        client, secret = await self._server.rotate_client_secret(
            _caller_tenant(), client_id, held_roles=_caller().roles
        )
        return auth_pb2.RotateClientSecretResponse(
            client=_client_message(client), client_secret=secret
        )

    # --- tokens -------------------------------------------------------------------------

    async def IssueToken(
        self, request: auth_pb2.IssueTokenRequest, context: Any
    ) -> auth_pb2.IssueTokenResponse:
        grant = await self._server.issue(
            TokenRequest(
                grant_type=request.grant_type,
                client_id=request.client_id,
                client_secret=request.client_secret,
                scopes=tuple(request.scopes) or None,
                refresh_token=request.refresh_token,
                audience=request.audience,
            )
        )
        return auth_pb2.IssueTokenResponse(
            access_token=grant.access.token,
            token_type="Bearer",
            expires_in=grant.access.expires_in,
            refresh_token=grant.refresh_token,
            scopes=grant.access.scopes,
        )

    async def RevokeToken(
        self, request: auth_pb2.RevokeTokenRequest, context: Any
    ) -> auth_pb2.RevokeTokenResponse:
        if request.client_id or request.client_secret:
            client = await self._server.authenticate_client(
                request.client_id, request.client_secret, audit_as=REVOKE_METHOD
            )
            await self._server.revoke(request.token, request.token_type_hint, client=client)
        else:
            await self._server.revoke(
                request.token, request.token_type_hint, tenant=_caller_tenant()
            )
        return auth_pb2.RevokeTokenResponse()

    async def IntrospectToken(
        self, request: auth_pb2.IntrospectTokenRequest, context: Any
    ) -> auth_pb2.IntrospectTokenResponse:
        if request.client_id or request.client_secret:
            client = await self._server.authenticate_client(
                request.client_id, request.client_secret, audit_as=INTROSPECT_METHOD
            )
            tenant = client.tenant
        else:
            tenant = _caller_tenant()
        result = await self._server.introspect(request.token, tenant=tenant)
        if not result.active or result.identity is None:
            return auth_pb2.IntrospectTokenResponse(active=False)
        claims, identity = result.claims, result.identity
        aud = claims["aud"]
        return auth_pb2.IntrospectTokenResponse(
            active=True,
            scopes=sorted(identity.scopes),
            client_id=str(claims.get("client_id", "")),
            sub=identity.subject,
            exp=int(claims["exp"]),
            iat=int(claims["iat"]),
            nbf=int(claims["nbf"]),
            aud=[aud] if isinstance(aud, str) else list(aud),
            iss=str(claims["iss"]),
            jti=identity.credential_id,
            token_type="Bearer",
            tenant=identity.tenant,
            roles=sorted(identity.roles),
        )

    # --- signing keys -------------------------------------------------------------------

    async def RotateSigningKey(
        self, request: auth_pb2.RotateSigningKeyRequest, context: Any
    ) -> auth_pb2.RotateSigningKeyResponse:
        _caller()
        key = await self._server.rotate_signing_key()
        return auth_pb2.RotateSigningKeyResponse(key=_key_message(key))

    async def ListSigningKeys(
        self, request: auth_pb2.ListSigningKeysRequest, context: Any
    ) -> auth_pb2.ListSigningKeysResponse:
        _caller()
        start = 0
        if request.page_token:
            try:
                start = int(decode_page_token(request.page_token))
                if start < 0 or encode_page_token(str(start)) != request.page_token:
                    raise ValueError("negative offset")
            except ValueError:
                raise invalid_page_token(
                    "the page token was not issued by ListSigningKeys",
                    "not a ListSigningKeys token",
                ) from None
        size = request.page_size or _DEFAULT_PAGE_SIZE
        keys = list(await self._server.ring.keys())  # a handful: rotation is rare
        page = keys[start : start + size]
        more = start + size < len(keys)
        return auth_pb2.ListSigningKeysResponse(
            keys=[_key_message(k) for k in page],
            next_page_token=encode_page_token(str(start + size)) if more else "",
        )

    async def DeleteSigningKey(
        self, request: auth_pb2.DeleteSigningKeyRequest, context: Any
    ) -> auth_pb2.DeleteSigningKeyResponse:
        _caller()
        await self._server.delete_signing_key(request.name.removeprefix(_KEYS_PREFIX))
        return auth_pb2.DeleteSigningKeyResponse()

    # --- the caller ---------------------------------------------------------------------

    async def WhoAmI(
        self, request: auth_pb2.WhoAmIRequest, context: Any
    ) -> auth_pb2.WhoAmIResponse:
        identity = identity_var.get()
        if identity is None or identity.kind == "anonymous":
            raise Unauthenticated("no credentials were presented", reason="MISSING_CREDENTIALS")
        answer = _who(identity)
        if identity.on_behalf_of is not None:
            answer.on_behalf_of.CopyFrom(_who(identity.on_behalf_of))
        return answer


def add_auth_service(context: ServiceContext, server: AuthorizationServer) -> None:
    """Register AuthService on the service's gRPC server."""
    _grpc.add_AuthServiceServicer_to_server(AuthServicer(server), context.server)
    context.service_names.append(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)
