"""Tenancy: which tenant a call acts for, and how a store keeps tenants' objects apart.

A call's tenant comes only from its verified identity (``identity_var``, set by the
authentication edge): the tenant of ``identity.effective``, which is the caller a service
acts for when Nexus forwards a call. Without an identity (authentication not configured,
as in a single-tenant development setup) the call acts for the configured default tenant
(``auth.default_tenant``, ``default`` unless set).

A tenant id is 1 to 32 characters: words of lower-case letters and digits joined by
single hyphens, starting with a letter (``acme``, ``acme-eu``, ``t42``). Stores build
engine object names from it, so anything else is refused, never used.

Physical names
--------------
A store with one flat namespace of objects (Qdrant collections, QuestDB tables and
views) stores tenant ``t``'s object with logical name ``n`` under::

    n          for the tenant ``default``: the names the Lake used before it had
               tenants, so a single-tenant installation keeps its data where it is
    _t__n      for every other tenant

Every logical name starts with a lower-case letter and no tenant id contains ``_``, so a
physical name decodes one way only: one that starts with a letter is the default
tenant's; otherwise the tenant runs from after the leading ``_`` to the next ``_``, which
starts the ``__`` separator. No two (tenant, logical name) pairs share a physical name,
whatever ``_`` or ``__`` the logical names contain. Answers and errors carry logical
names only (``TenantNamespace.logical_errors``), so a tenant never sees the scheme, let
alone another tenant's objects.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from datapunk_shared.auth.identity import identity_var
from datapunk_shared.errors import (
    ConfigError,
    DatapunkError,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)

__all__ = [
    "DEFAULT_TENANT",
    "MAX_TENANT_LENGTH",
    "TENANT_PATTERN",
    "TenantNamespace",
    "current_namespace",
    "current_tenant",
    "default_tenant",
    "is_tenant_id",
    "set_default_tenant",
    "split_physical_name",
]

DEFAULT_TENANT = "default"
"""The tenant of a single-tenant installation; its objects keep their plain names."""

MAX_TENANT_LENGTH = 32
TENANT_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
"""The form of a tenant id (and at most ``MAX_TENANT_LENGTH`` characters)."""

_TENANT = re.compile(TENANT_PATTERN)
_SEPARATOR = "__"

_default_tenant = DEFAULT_TENANT


@functools.lru_cache(maxsize=4096)
def is_tenant_id(value: str) -> bool:
    """Whether ``value`` is a well-formed tenant id."""
    return len(value) <= MAX_TENANT_LENGTH and _TENANT.fullmatch(value) is not None


def set_default_tenant(tenant: str) -> None:
    """Make ``tenant`` the tenant of calls without an identity (the service sets it from
    ``auth.default_tenant`` at start)."""
    global _default_tenant
    if not is_tenant_id(tenant):
        raise ConfigError(
            f"auth.default_tenant {tenant!r} is not a tenant id: 1 to {MAX_TENANT_LENGTH} "
            "lower-case letters and digits in words joined by single hyphens, starting "
            "with a letter",
            keys=["auth.default_tenant"],
        )
    _default_tenant = tenant


def default_tenant() -> str:
    """The tenant of calls without an identity."""
    return _default_tenant


def current_tenant() -> str:
    """The tenant the current call acts for: its effective identity's tenant, or the
    default tenant when the call has no identity (authentication not configured).

    Raises Unauthenticated for an anonymous identity and PermissionDenied
    (``INVALID_TENANT``) when the identity's tenant is not a well-formed tenant id."""
    identity = identity_var.get()
    if identity is None:
        return _default_tenant
    effective = identity.effective
    if effective.kind == "anonymous":
        raise Unauthenticated(
            "this call needs credentials that name a tenant", reason="MISSING_CREDENTIALS"
        )
    tenant = effective.tenant
    if not is_tenant_id(tenant):
        raise PermissionDenied(
            "the caller's tenant is missing or not a tenant id (1 to "
            f"{MAX_TENANT_LENGTH} lower-case letters and digits in words joined by single "
            "hyphens, starting with a letter); no data is kept for it",
            reason="INVALID_TENANT",
        )
    return tenant


def current_namespace() -> TenantNamespace:
    """The namespace of the tenant the current call acts for (see ``current_tenant``)."""
    return _namespace(current_tenant())


@functools.lru_cache(maxsize=1024)
def _namespace(tenant: str) -> TenantNamespace:
    return TenantNamespace(tenant)


def split_physical_name(physical: str) -> tuple[str, str] | None:
    """The (tenant, logical name) a physical name stands for, or None when no tenant's
    logical name maps to it (an object the Lake did not make)."""
    if _starts_lower(physical):
        return DEFAULT_TENANT, physical
    if not physical.startswith("_"):
        return None
    end = physical.find("_", 1)
    if end < 0 or not physical.startswith(_SEPARATOR, end):
        return None
    tenant, logical = physical[1:end], physical[end + len(_SEPARATOR) :]
    if tenant == DEFAULT_TENANT or not is_tenant_id(tenant) or not _starts_lower(logical):
        return None
    return tenant, logical


def _starts_lower(name: str) -> bool:
    return "a" <= name[:1] <= "z"


@dataclass(frozen=True, slots=True)
class TenantNamespace:
    """One tenant's view of a flat namespace of engine objects (see the module's
    docstring for the scheme)."""

    tenant: str

    def __post_init__(self) -> None:
        if not is_tenant_id(self.tenant):
            raise ValueError(f"not a tenant id: {self.tenant!r}")

    @property
    def prefix(self) -> str:
        """What precedes every logical name of the tenant in its physical name."""
        return "" if self.tenant == DEFAULT_TENANT else f"_{self.tenant}{_SEPARATOR}"

    def physical(
        self, name: str, *, pattern: re.Pattern[str], max_length: int, field: str = "name"
    ) -> str:
        """The engine's name of this tenant's object ``name``.

        ``pattern`` is the store's form of a logical name (it must start with a
        lower-case letter); ``max_length`` the engine's limit on a physical name.
        InvalidArgument (``INVALID_NAME``, ``NAME_TOO_LONG``) names ``field``."""
        if not _starts_lower(name) or pattern.fullmatch(name) is None:
            raise InvalidArgument(
                f"{field}: {name!r} is not a valid name",
                violations=[FieldViolation(field, f"must match {pattern.pattern}", "INVALID_NAME")],
                reason="INVALID_NAME",
            )
        physical = self.prefix + name
        if len(physical) > max_length:
            room = max_length - len(self.prefix)
            raise InvalidArgument(
                f"{field}: {name!r} is too long; names of this tenant have at most {room} "
                "characters here",
                violations=[FieldViolation(field, f"at most {room} characters", "NAME_TOO_LONG")],
                reason="NAME_TOO_LONG",
                metadata={"max_length": str(room)},
            )
        return physical

    def logical(self, physical: str) -> str | None:
        """The logical name of ``physical`` when it is this tenant's object, else None."""
        parts = split_physical_name(physical)
        if parts is None or parts[0] != self.tenant:
            return None
        return parts[1]

    def bounds(self) -> tuple[str, str]:
        """Exclusive bounds of this tenant's physical names in code-point order: every
        physical name ``p`` of the tenant has ``low < p < high``, no other tenant's
        does (logical names use characters below ``~``)."""
        if self.tenant == DEFAULT_TENANT:
            return "`", "{"  # the characters either side of a-z
        return self.prefix, self.prefix + "~"

    def without_prefix(self, text: str) -> str:
        """``text`` with this tenant's physical names turned into logical ones."""
        return text.replace(self.prefix, "") if self.prefix else text

    @contextmanager
    def logical_errors(self) -> Iterator[None]:
        """Rewrite a Datapunk error raised inside into logical names: engine messages
        name physical objects, and the caller must see its own names only."""
        try:
            yield
        except DatapunkError as exc:
            if self.prefix:
                _rewrite(exc, self.without_prefix)
            raise


def _rewrite(exc: DatapunkError, fix: Callable[[str], str]) -> None:
    exc.message = fix(exc.message)
    exc.args = (exc.message,)
    exc.metadata = {key: fix(value) for key, value in exc.metadata.items()}
    if isinstance(exc, InvalidArgument):
        exc.violations = [
            FieldViolation(fix(v.field), fix(v.description), v.reason) for v in exc.violations
        ]
