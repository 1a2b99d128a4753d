"""Cache keys: whose answer (the scope), to which method, for which request.

The scope is the principal (with its tenant and API key) when there is one, else the
API key, else the client IP. Anonymous answers are kept per client IP rather than shared
by every anonymous caller: an answer may depend on who asks in ways the cache cannot see
(IP allow-lists, per-network policies), and a per-IP scope means the cache can never
carry one client's answer to another. The cost is a lower hit ratio for anonymous
traffic only."""

from __future__ import annotations

import hashlib

from datapunk_nexus.policy import CallInfo

__all__ = ["cache_key", "scope_of"]


def scope_of(call: CallInfo) -> bytes:
    """Who the answer is for; two calls share cached answers only with equal scopes."""
    parts: tuple[bytes, ...]
    if call.principal or call.api_key_id:
        parts = (b"t", (call.tenant or "").encode(), b"p", (call.principal or "").encode())
        parts += (b"k", (call.api_key_id or "").encode())
    else:
        parts = (b"t", (call.tenant or "").encode(), b"ip", call.client_ip.encode())
    # Length-prefixed, so that no choice of names makes two scopes equal.
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def cache_key(call: CallInfo) -> str:
    """A fixed-size key for the scope, the method and the serialized request."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (scope_of(call), call.method.encode(), call.request):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
