"""Opaque page tokens: URL-safe base64 of a small JSON object that carries the position
and a fingerprint of the query it belongs to, so a token replayed with another query is
refused instead of returning the wrong page."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from datapunk_shared.errors import FieldViolation, InvalidArgument
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token

__all__ = ["decode_token", "encode_token", "fingerprint", "page_size"]

DEFAULT_PAGE_SIZE = 1000


def fingerprint(*parts: object) -> str:
    """A short digest of a query's identity (its repr, page size left out)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def encode_token(kind: str, query_fingerprint: str, **position: Any) -> str:
    body = {"k": kind, "f": query_fingerprint, **position}
    return encode_page_token(json.dumps(body, separators=(",", ":"), sort_keys=True))


def decode_token(token: str, kind: str, query_fingerprint: str) -> dict[str, Any] | None:
    """The position in ``token`` (None for an empty token); InvalidArgument if it is not
    a token of this kind of query with these parameters."""
    if not token:
        return None
    try:
        body = json.loads(decode_page_token(token))
        valid = (
            isinstance(body, dict) and body.get("k") == kind and body.get("f") == query_fingerprint
        )
    except ValueError:
        valid = False
    if not valid:
        raise invalid_page_token(
            "page_token does not belong to this request; start again without it",
            "not a page token of this request (same series and parameters)",
        )
    return {k: v for k, v in body.items() if k not in ("k", "f")}


def page_size(requested: int, maximum: int, default: int = DEFAULT_PAGE_SIZE) -> int:
    """The effective page size: ``default`` for 0, refused above ``maximum``."""
    if requested < 0 or requested > maximum:
        raise InvalidArgument(
            f"page_size {requested} is more than the maximum {maximum}",
            violations=[
                FieldViolation(
                    "page_size", f"must be between 0 and {maximum}", "PAGE_SIZE_TOO_LARGE"
                )
            ],
            reason="PAGE_SIZE_TOO_LARGE",
            metadata={"max_page_size": str(maximum)},
        )
    return min(requested or default, maximum)
