"""What metadata crosses the entry: the caller's own headers go to the backend and the
backend's come back, minus the ones that belong to one HTTP/2 hop or to gRPC itself;
every call carries a request id, the caller's or a new one."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY

# The caller's credentials stay at the entry; Nexus sends its own (AccessGuard).
from datapunk_nexus.identity.enforce import STRIPPED

__all__ = [
    "Metadata",
    "client_ip",
    "outgoing",
    "request_id_of",
    "returned",
]

Metadata = tuple[tuple[str, str | bytes], ...]

_MAX_REQUEST_ID = 128
# Headers of one connection (RFC 9113 §8.2.2) and those gRPC sets for itself on each hop
# (user-agent, content-type, grpc-timeout: the deadline travels as the call's timeout).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "content-type",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)


def _crosses(key: str) -> bool:
    return not (key in _HOP_BY_HOP or key.startswith((":", "grpc-")))


def request_id_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The caller's request id, if it sent a usable one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return None


def new_request_id() -> str:
    return os.urandom(8).hex()


def outgoing(
    metadata: Iterable[tuple[str, str | bytes]] | None,
    request_id: str,
    credentials: Iterable[tuple[str, str]] = (),
) -> Metadata:
    """The metadata to send to the backend: the caller's, minus hop-by-hop and reserved
    headers and minus its credentials, with exactly one ``x-request-id`` and Nexus's own
    ``credentials``."""
    kept: list[tuple[str, str | bytes]] = [(REQUEST_ID_KEY, request_id), *credentials]
    kept.extend(
        (key, value)
        for key, value in metadata or ()
        if key != REQUEST_ID_KEY and key not in STRIPPED and _crosses(key)
    )
    return tuple(kept)


def returned(
    metadata: Iterable[tuple[str, str | bytes]] | None,
    request_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> Metadata:
    """The backend's metadata for the caller, minus hop-by-hop and reserved headers but
    with the status details; ``extra`` headers (the gate's) and the request id, when
    given and not already there, are added."""
    kept: list[tuple[str, str | bytes]] = [
        (key, value) for key, value in metadata or () if key == STATUS_DETAILS_KEY or _crosses(key)
    ]
    if extra:
        kept.extend((key.lower(), value) for key, value in extra.items())
    if request_id is not None and all(key != REQUEST_ID_KEY for key, _ in kept):
        kept.append((REQUEST_ID_KEY, request_id))
    return tuple(kept)


def client_ip(peer: str) -> str:
    """The address part of a gRPC peer string (``ipv4:10.0.0.1:5000``,
    ``ipv6:[::1]:5000``, ``unix:/path``)."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if scheme == "ipv4":
        return rest.rpartition(":")[0]
    return rest or peer
