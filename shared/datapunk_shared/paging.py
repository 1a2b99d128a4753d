"""Opaque page tokens: the URL-safe base64 (no padding) of a text each store chooses,
and the one error for a token the service did not issue."""

from __future__ import annotations

import base64

from datapunk_shared.errors import FieldViolation, InvalidArgument

__all__ = ["decode_page_token", "encode_page_token", "invalid_page_token"]


def encode_page_token(text: str) -> str:
    """The token that carries ``text``."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The text ``token`` carries; ValueError if it is not such a token."""
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def invalid_page_token(
    message: str, description: str, field: str = "page_token"
) -> InvalidArgument:
    """INVALID_ARGUMENT with the ``INVALID_PAGE_TOKEN`` reason on ``field``."""
    return InvalidArgument(
        message,
        violations=[FieldViolation(field, description, "INVALID_PAGE_TOKEN")],
        reason="INVALID_PAGE_TOKEN",
    )
