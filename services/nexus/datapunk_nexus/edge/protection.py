"""The edge's protections that need no backend: path normalisation, client address and
IP allow/deny lists, CORS, and the security headers every answer carries."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from datapunk_shared.errors import FieldViolation, InvalidArgument, PermissionDenied

__all__ = [
    "API_CSP",
    "ClientAddresses",
    "CorsPolicy",
    "IpFilter",
    "check_path",
    "client_address",
    "security_headers",
]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
"""JSON answers are never rendered as documents; this CSP says so to browsers."""

# A literal or percent-encoded dot segment, an encoded '%' (double encoding), encoded '/'
# or '\' (a segment boundary hidden from the router), a raw '\', or an encoded NUL.
_FORBIDDEN = re.compile(r"%(2[eEfF5]|5[cC]|00)|\\")


def check_path(raw_path: str) -> None:
    """Refuse paths a proxy or a backend could read differently than the router does:
    traversal (``..``, ``%2e%2e``), double encoding (``%252e``), encoded slashes or
    backslashes, empty segments. Raises ``InvalidArgument`` (400)."""
    problem = ""
    if not raw_path.startswith("/"):
        problem = "the path must start with '/'"
    elif _FORBIDDEN.search(raw_path):
        problem = "encoded dots, slashes, backslashes or percent signs are not allowed"
    else:
        segments = raw_path[1:].split("/")
        if any(s in (".", "..") for s in segments):
            problem = "dot segments ('.', '..') are not allowed"
        elif any(s == "" for s in segments[:-1]) or (len(segments) > 1 and segments[-1] == ""):
            problem = "empty path segments are not allowed"
    if problem:
        raise InvalidArgument(
            f"path not accepted: {problem}",
            violations=[FieldViolation("path", problem, "PATH_NOT_NORMALIZED")],
            reason="PATH_NOT_NORMALIZED",
        )


def _networks(cidrs: Sequence[str]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IpNetwork]) -> str:
    """The caller's address: the peer, unless the peer is a trusted proxy, in which case
    the right-most address of ``X-Forwarded-For`` that is not itself a trusted proxy
    (addresses to its left were written by the client and cannot be believed)."""
    address = _address(peer)
    if address is None or not forwarded_for or not any(address in n for n in trusted):
        return str(address) if address is not None else peer
    for hop in reversed(forwarded_for.split(",")):
        hop_address = _address(hop)
        if hop_address is None:
            break  # garbage from here on leftwards: stop at the last proxy we trust
        address = hop_address
        if not any(hop_address in n for n in trusted):
            break
    return str(address)


@dataclass(frozen=True)
class IpFilter:
    """CIDR allow and deny lists; deny wins, an empty allow list allows everyone."""

    allow: tuple[IpNetwork, ...]
    deny: tuple[IpNetwork, ...]

    @classmethod
    def of(cls, allow: Sequence[str], deny: Sequence[str]) -> IpFilter:
        return cls(_networks(allow), _networks(deny))

    def check(self, client: str) -> None:
        address = _address(client)
        denied = address is None and bool(self.allow or self.deny)
        if address is not None:
            denied = any(address in n for n in self.deny) or (
                bool(self.allow) and not any(address in n for n in self.allow)
            )
        if denied:
            raise PermissionDenied(
                "your address may not use this service",
                reason="IP_NOT_ALLOWED",
                metadata={"client_ip": client},
            )


class ClientAddresses:
    """``client_address`` then ``IpFilter.check`` for each request, with both answers
    remembered per (peer, X-Forwarded-For): a client sends many requests from one
    address, and parsing and matching addresses is most of the work. The memo is bounded
    (callers choose the forwarded-for text) and emptied when full."""

    def __init__(
        self, ip_filter: IpFilter, trusted: Sequence[IpNetwork], *, size: int = 4096
    ) -> None:
        self._filter = ip_filter
        self._trusted = tuple(trusted)
        self._size = size
        self._seen: dict[tuple[str, str | None], tuple[str, bool]] = {}

    def resolve(self, peer: str, forwarded_for: str | None) -> tuple[str, bool]:
        """The client's address, and whether the filter lets it in (``check`` raises
        the refusal)."""
        key = (peer, forwarded_for)
        found = self._seen.get(key)
        if found is None:
            client = client_address(peer, forwarded_for, self._trusted)
            try:
                self._filter.check(client)
                found = (client, True)
            except PermissionDenied:
                found = (client, False)
            if len(self._seen) >= self._size:
                self._seen.clear()
            self._seen[key] = found
        return found

    def check(self, client: str) -> None:
        """Raise the filter's refusal of ``client``."""
        self._filter.check(client)


@dataclass(frozen=True)
class CorsPolicy:
    """CORS with an origin allow-list. With credentials the exact origin is echoed (never
    ``*``, which browsers refuse with credentials); ``Vary: Origin`` keeps caches honest."""

    origins: frozenset[str]
    allow_credentials: bool
    allow_methods: str = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
    allow_headers: frozenset[str] = frozenset(
        {"authorization", "content-type", "x-api-key", "x-request-id", "grpc-timeout"}
    )
    expose_headers: str = (
        "x-request-id, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset"
    )
    max_age: int = 600

    def allowed(self, origin: str) -> bool:
        return origin in self.origins or ("*" in self.origins and not self.allow_credentials)

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """Headers for an actual (non-preflight) request."""
        if origin is None or not self.allowed(origin):
            return {"Vary": "Origin"} if origin is not None else {}
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": self.expose_headers,
            "Vary": "Origin",
        }
        if self.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def preflight(self, origin: str, method: str, request_headers: str) -> dict[str, str]:
        """Headers of a 204 answer to a preflight; raises ``PermissionDenied`` when the
        origin, method or a requested header is not allowed."""
        if not self.allowed(origin):
            raise PermissionDenied(
                "this origin may not call the API",
                reason="CORS_ORIGIN_NOT_ALLOWED",
                metadata={"origin": origin},
            )
        if method.upper() not in {m.strip() for m in self.allow_methods.split(",")}:
            raise PermissionDenied(
                f"method {method} is not allowed cross-origin",
                reason="CORS_METHOD_NOT_ALLOWED",
            )
        asked = {h.strip().lower() for h in request_headers.split(",") if h.strip()}
        refused = sorted(asked - self.allow_headers)
        if refused:
            raise PermissionDenied(
                f"headers not allowed cross-origin: {', '.join(refused)}",
                reason="CORS_HEADER_NOT_ALLOWED",
            )
        headers = self.response_headers(origin)
        headers.pop("Access-Control-Expose-Headers", None)
        headers["Access-Control-Allow-Methods"] = self.allow_methods
        headers["Access-Control-Allow-Headers"] = ", ".join(sorted(self.allow_headers))
        headers["Access-Control-Max-Age"] = str(self.max_age)
        headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        return headers


def security_headers(hsts_max_age: int) -> Mapping[str, str]:
    """Headers every answer carries (HTML pages replace the CSP with their own)."""
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": API_CSP,
        "Cache-Control": "no-store",
        "Server": "datapunk",  # not aiohttp's name and version
    }
    if hsts_max_age > 0:
        headers["Strict-Transport-Security"] = f"max-age={hsts_max_age}; includeSubDomains"
    return headers
