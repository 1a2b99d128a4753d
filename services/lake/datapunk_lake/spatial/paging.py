"""Opaque, stable page tokens.

A token holds the sort key of the last item of a page (keyset pagination, so writes
between pages never shift them) and a fingerprint of the query it belongs to, so that a
token used with another query is refused instead of silently giving wrong pages."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from datapunk_shared.errors import InvalidArgument
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token

__all__ = ["decode_token", "encode_token", "fingerprint"]


def fingerprint(*parts: object) -> str:
    """A short digest of the query parameters a token is bound to."""
    text = json.dumps(parts, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_token(query: str, position: list[Any]) -> str:
    """A token for the page after ``position`` of the query with fingerprint ``query``."""
    return encode_page_token(json.dumps({"q": query, "p": position}, separators=(",", ":")))


def _invalid(description: str) -> InvalidArgument:
    return invalid_page_token(f"invalid page_token: {description}", description)


def decode_token(token: str, query: str, shape: tuple[type, ...]) -> list[Any] | None:
    """The position in ``token`` (None for the empty token of the first page), checked to
    belong to the query ``query`` and to have one item of each type of ``shape``."""
    if not token:
        return None
    try:
        value = json.loads(decode_page_token(token))
    except ValueError:
        raise _invalid("not a token this service issued") from None
    if not isinstance(value, dict) or not isinstance(value.get("p"), list):
        raise _invalid("not a token this service issued")
    if value.get("q") != query:
        raise _invalid("the token belongs to another query; repeat the query's parameters")
    position: list[Any] = value["p"]
    if len(position) != len(shape) or not all(
        isinstance(item, kind) and not isinstance(item, bool)
        for item, kind in zip(position, shape, strict=True)
    ):
        raise _invalid("not a token this service issued")
    return position
