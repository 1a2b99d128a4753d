"""What ``AccessGuard`` remembers to spare busy callers repeated work — the requirement of a
small serialized request and the on-behalf-of value of an identity — never changes an
answer: each request gets the requirement of its own bytes, refusals are raised every
time, and each identity object gets its own encoding."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, cast

import pytest
from datapunk.lake.v1 import vectors_pb2
from datapunk_nexus.contracts import load_contracts
from datapunk_nexus.identity.enforce import AccessGuard
from datapunk_nexus.identity.policy import Requirements
from datapunk_nexus.identity.service_tokens import ServiceTokens
from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.interceptor import AUTHORIZATION_KEY, ON_BEHALF_KEY, encode_on_behalf
from datapunk_shared.errors import InvalidArgument

GET_COLLECTION = "/datapunk.lake.v1.VectorService/GetCollection"


@dataclass
class _Token:
    token: str
    kid: str
    issued_at: float
    expires_at: float


class _Minter:
    """Mints numbered service tokens valid for an hour from now (signing is another
    test's)."""

    def __init__(self) -> None:
        self.minted = 0

    def active_kid(self) -> str:
        return "k1"

    def mint_service(self, service: str, audience: str) -> _Token:
        self.minted += 1
        now = time.time()
        return _Token(f"t{self.minted}", "k1", now, now + 3600.0)


def _guard(minter: _Minter | None = None) -> AccessGuard:
    tokens = ServiceTokens(cast(Any, minter or _Minter()), lambda owner: f"datapunk:{owner}")
    unused: Any = None  # authentication, decisions and audit are not exercised here
    return AccessGuard(unused, unused, Requirements(), unused, tokens, load_contracts().pool)


def _get(name: str) -> bytes:
    return vectors_pb2.GetCollectionRequest(name=name).SerializeToString()


def test_each_request_gets_the_requirement_of_its_own_bytes() -> None:
    guard = _guard()
    for _ in range(3):  # asked again, from the memo
        assert guard.requirement_of(GET_COLLECTION, _get("collections/docs")).resource == (
            "collection/docs"
        )
        assert guard.requirement_of(GET_COLLECTION, _get("collections/logs")).resource == (
            "collection/logs"
        )
    decoded = vectors_pb2.GetCollectionRequest(name="collections/docs")
    assert guard.requirement_of(GET_COLLECTION, decoded) == guard.requirement_of(
        GET_COLLECTION, _get("collections/docs")
    )


def test_a_large_request_is_mapped_every_time_and_still_right() -> None:
    guard = _guard()
    request = vectors_pb2.GetCollectionRequest(name="collections/" + "d" * 300)
    assert len(request.SerializeToString()) > 256  # past what the memo keeps
    assert guard.requirement_of(GET_COLLECTION, request.SerializeToString()) == (
        Requirements().of(GET_COLLECTION, request)
    )


def test_a_refusal_is_raised_every_time() -> None:
    guard = _guard()
    for _ in range(2):
        with pytest.raises(InvalidArgument) as caught:
            guard.requirement_of(GET_COLLECTION, b"\xff\xff")
        assert caught.value.reason == "MALFORMED_MESSAGE"


def test_each_identity_object_gets_its_own_on_behalf_value() -> None:
    minter = _Minter()
    guard = _guard(minter)
    reader = Identity(subject="key:k_1", tenant="acme", kind="api_key", roles=frozenset({"r"}))
    admin = replace(reader, roles=frozenset({"admin"}))
    for _ in range(2):
        for identity in (reader, admin):
            found = dict(guard.backend_metadata("lake", identity))
            assert found[ON_BEHALF_KEY] == encode_on_behalf(identity)
            assert found[AUTHORIZATION_KEY] == "Bearer t1"  # one service token, reused
    assert ON_BEHALF_KEY not in dict(guard.backend_metadata("lake", None))
    assert minter.minted == 1
