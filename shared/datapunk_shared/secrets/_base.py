"""The secret-provider interface and the rules every backend shares: what a secret's
name may look like and the errors a missing or unreadable secret raises."""

from __future__ import annotations

import re
from typing import Protocol, runtime_checkable

from datapunk_shared.errors import InvalidArgument, NotFound

__all__ = [
    "SECRET_NAME_MAX_LENGTH",
    "SECRET_NAME_PATTERN",
    "SecretProvider",
    "check_secret_name",
    "secret_not_found",
]

SECRET_NAME_PATTERN = r"^[a-z][a-z0-9_-]*(/[a-z][a-z0-9_-]*)*$"
"""Secret names are lower-case words, optionally grouped by ``/``
(``nexus/signing-token-pin``): no dots, no empty or ``..`` parts, so one name maps
safely onto an environment variable, a file path under one directory and a URL path."""

SECRET_NAME_MAX_LENGTH = 200

_NAME = re.compile(SECRET_NAME_PATTERN)


@runtime_checkable
class SecretProvider(Protocol):
    """Somewhere secrets are kept, read by name.

    ``get`` returns the secret's bytes, or raises ``NotFound`` (reason
    ``SECRET_NOT_FOUND``, metadata ``secret``) when it is not there, ``Unavailable``
    when the place that keeps it cannot be reached now, and ``FailedPrecondition`` or
    ``PermissionDenied`` when it is kept unsafely or may not be read. Errors name the
    secret, never its value.
    """

    async def get(self, name: str) -> bytes: ...


def check_secret_name(name: str) -> str:
    """``name`` if it is a valid secret name, else InvalidArgument."""
    if len(name) > SECRET_NAME_MAX_LENGTH or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"{name[:80]!r} is not a secret name: lower-case letters, digits, '_' and '-', "
            "in parts separated by '/' that start with a letter, at most 200 characters",
            reason="INVALID_SECRET_NAME",
        )
    return name


def secret_not_found(name: str, provider: str, where: str) -> NotFound:
    """The error for a secret ``provider`` does not have; ``where`` says where it looked
    (a variable name, a path), so the operator knows what to set."""
    return NotFound(
        f"secret {name!r} is not set: the {provider} secret provider looked for {where}",
        reason="SECRET_NOT_FOUND",
        metadata={"secret": name, "provider": provider},
    )
