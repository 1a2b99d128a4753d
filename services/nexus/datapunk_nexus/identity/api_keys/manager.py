"""What ApiKeyService does, without grpc: create, read, list, revoke and rotate the keys of
the caller's tenant. The tenant and the creator always come from the caller's verified
``Identity``, never from request fields."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from datapunk_shared.auth.identity import Identity
from datapunk_shared.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
)

from datapunk_nexus.identity.api_keys.domain import ApiKey, ApiKeyPage, IssuedApiKey, KeyState
from datapunk_nexus.identity.api_keys.hashing import SecretHasher
from datapunk_nexus.identity.api_keys.key_format import (
    format_api_key,
    new_key_id,
    new_secret,
    parse_api_key,
)
from datapunk_nexus.identity.api_keys.store import PostgresApiKeyStore
from datapunk_nexus.identity.delegation import require_roles_held

__all__ = ["MAX_GRACE_PERIOD", "ApiKeyManager", "utc_now"]

MAX_GRACE_PERIOD = timedelta(days=7)
_ID_ATTEMPTS = 5  # ids are ~62 random bits: a second attempt is already unheard of


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _tenant_of(caller: Identity) -> str:
    if not caller.tenant:
        raise PermissionDenied(
            "API keys belong to a tenant, and this caller has none", reason="NO_TENANT"
        )
    return caller.tenant


def _within_creator_key(
    caller: Identity, expiry: datetime | None, requested: datetime | None
) -> datetime | None:
    """``expiry``, capped by the expiry of the API key the caller authenticated with."""
    if caller.kind != "api_key" or caller.expires_at is None:
        return expiry
    creator_end = datetime.fromtimestamp(caller.expires_at, UTC)
    if expiry is not None and expiry <= creator_end:
        return expiry
    if requested is None:
        return creator_end
    raise InvalidArgument(
        "expire_time is after the expiry of the API key making this one",
        violations=[
            FieldViolation(
                "expire_time",
                "must not be after the expiry of the calling API key",
                "EXPIRE_TIME_TOO_LATE",
            )
        ],
        reason="EXPIRE_TIME_TOO_LATE",
        metadata={"creator_expire_time": creator_end.isoformat()},
    )


def _distinct(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


class ApiKeyManager:
    """Creates and manages keys; tells ``on_secret_change`` the id of every key revoked or
    rotated, so that this process's authenticator forgets it at once."""

    def __init__(
        self,
        store: PostgresApiKeyStore,
        hasher: SecretHasher,
        *,
        max_lifetime: timedelta | None = None,
        on_secret_change: Callable[[str], None] = lambda key_id: None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._max_lifetime = max_lifetime
        self._on_secret_change = on_secret_change
        self._clock = clock

    def now(self) -> datetime:
        """The manager's current time (what key states are judged against)."""
        return self._clock()

    def _expiry(self, requested: datetime | None, now: datetime) -> datetime | None:
        latest = now + self._max_lifetime if self._max_lifetime is not None else None
        if requested is None:
            return latest
        if requested <= now:
            raise InvalidArgument(
                "expire_time must be in the future",
                violations=[
                    FieldViolation("expire_time", "must be in the future", "EXPIRE_TIME_PASSED")
                ],
                reason="EXPIRE_TIME_PASSED",
            )
        if latest is not None and requested > latest:
            days = self._max_lifetime.days if self._max_lifetime else 0
            raise InvalidArgument(
                f"expire_time is beyond the longest key lifetime of {days} days",
                violations=[
                    FieldViolation(
                        "expire_time",
                        f"must be at most {days} days from now",
                        "EXPIRE_TIME_TOO_LATE",
                    )
                ],
                reason="EXPIRE_TIME_TOO_LATE",
                metadata={"max_lifetime_days": str(days)},
            )
        return requested

    async def create(
        self,
        caller: Identity,
        *,
        name: str,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        expire_time: datetime | None = None,
    ) -> IssuedApiKey:
        """A new key of the caller's tenant. It may carry only roles the caller holds (any
        role, for the tenant's ``admin``), so that nobody can mint a key more powerful
        than themselves; a key made with an
        expiring API key expires with it at the latest, so that nobody can outlast their
        own key's expiry by minting another."""
        tenant = _tenant_of(caller)
        wanted_roles = _distinct(roles)
        require_roles_held(caller.roles, wanted_roles, "an API key")
        now = self._clock()
        expiry = _within_creator_key(caller, self._expiry(expire_time, now), expire_time)
        for attempt in range(_ID_ATTEMPTS):
            key_id, secret = new_key_id(), new_secret()
            key = ApiKey(
                id=key_id,
                tenant=tenant,
                name=name,
                roles=wanted_roles,
                scopes=_distinct(scopes),
                created_by=caller.subject,
                create_time=now,
                expire_time=expiry,
            )
            try:
                await self._store.insert(key, self._hasher.digest(key_id, secret))
            except AlreadyExists:
                if attempt + 1 == _ID_ATTEMPTS:
                    raise
                continue
            return IssuedApiKey(key, format_api_key(key_id, secret))
        raise AssertionError("unreachable")  # pragma: no cover

    async def ensure_bootstrap_key(
        self, presented: str, *, tenant: str, roles: Iterable[str]
    ) -> bool:
        """Make sure the key ``presented`` (a full ``dpk_`` key the operator generated,
        such as the one ``datapunk up`` keeps in its secrets) exists, with ``roles`` in
        ``tenant``: the first credential of a new installation, from which every other
        one is made through the API. Returns whether it was created now; a key with the
        same id that exists already (made by an earlier start or another instance) is
        left as it is, revoked or not."""
        parsed = parse_api_key(presented)
        if await self._store.lookup(parsed.key_id) is not None:
            return False
        key = ApiKey(
            id=parsed.key_id,
            tenant=tenant,
            name="bootstrap administrator",
            roles=_distinct(roles),
            scopes=(),
            created_by="datapunk:bootstrap",
            create_time=self._clock(),
        )
        try:
            await self._store.insert(key, self._hasher.digest(parsed.key_id, parsed.secret))
        except AlreadyExists:
            return False
        return True

    async def get(self, caller: Identity, key_id: str) -> ApiKey:
        return await self._store.get(_tenant_of(caller), key_id)

    async def list(
        self,
        caller: Identity,
        *,
        state: KeyState | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> ApiKeyPage:
        return await self._store.list(
            _tenant_of(caller),
            state=state,
            page_size=page_size,
            page_token=page_token,
            now=self._clock(),
        )

    async def revoke(self, caller: Identity, key_id: str) -> ApiKey:
        key = await self._store.revoke(_tenant_of(caller), key_id, self._clock())
        self._on_secret_change(key_id)
        return key

    async def rotate(
        self, caller: Identity, key_id: str, *, grace_period: timedelta = timedelta(0)
    ) -> IssuedApiKey:
        """A new secret for the key; the replaced one works for ``grace_period`` more
        (never past the key's own expiry). The new secret goes to the caller, so it must
        hold the key's roles (``ROLE_NOT_HELD`` otherwise), as for making the key."""
        if not timedelta(0) <= grace_period <= MAX_GRACE_PERIOD:
            raise InvalidArgument(
                "grace_period must be between 0 and 7 days",
                violations=[
                    FieldViolation(
                        "grace_period", "must be between 0 and 7 days", "INVALID_GRACE_PERIOD"
                    )
                ],
                reason="INVALID_GRACE_PERIOD",
            )
        tenant = _tenant_of(caller)
        require_roles_held(
            caller.roles, (await self._store.get(tenant, key_id)).roles, "an API key"
        )
        now = self._clock()
        secret = new_secret()
        previous_until = now + grace_period if grace_period > timedelta(0) else None
        key = await self._store.rotate(
            tenant,
            key_id,
            self._hasher.digest(key_id, secret),
            now=now,
            previous_until=previous_until,
        )
        if previous_until is not None and key.expire_time is not None:
            previous_until = min(previous_until, key.expire_time)
        self._on_secret_change(key_id)
        return IssuedApiKey(key, format_api_key(key_id, secret), previous_until)
