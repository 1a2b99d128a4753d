"""API keys: ``dpk_<id>_<secret><checksum>`` credentials for programs, kept in PostgreSQL
as an HMAC-SHA-256 of the secret under a server pepper (``hashing`` says why not argon2id,
with the numbers of ``bench/api_keys.py``).

* ``key_format``: generating and parsing keys (the checksum refuses typos and made-up keys
  before any database work);
* ``store``: the ``nexus.api_keys`` table;
* ``manager``: create, get, list, revoke, rotate in the caller's tenant;
* ``authenticator``: ``ApiKeyAuthenticator.authenticate(presented) -> Identity``, with a
  short cache of verified keys (revocation: at once in this process, within
  ``cache_seconds`` elsewhere);
* ``servicer``: ``datapunk.nexus.v1.ApiKeyService``.

Wiring, in the Nexus's setup::

    pool = await open_postgres(context, "nexus")
    secrets = build_secret_provider(settings.secrets)  # datapunk_shared.secrets
    api_keys = await load_api_keys(settings.nexus.auth.api_keys, pool, secrets)
    add_api_key_service(context, api_keys)
    # the edges: identity = await api_keys.authenticator.authenticate(x_api_key)

(``build_api_keys`` takes the pepper's bytes directly.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from datapunk_shared.config import ApiKeySettings
from datapunk_shared.secrets import SecretProvider
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.api_keys.authenticator import API_KEY_ISSUER, ApiKeyAuthenticator
from datapunk_nexus.identity.api_keys.domain import ApiKey, ApiKeyPage, IssuedApiKey, KeyState
from datapunk_nexus.identity.api_keys.hashing import SecretHasher
from datapunk_nexus.identity.api_keys.key_format import key_id_of, parse_api_key, public_prefix
from datapunk_nexus.identity.api_keys.manager import ApiKeyManager, utc_now
from datapunk_nexus.identity.api_keys.servicer import ApiKeyServicer, add_api_key_service
from datapunk_nexus.identity.api_keys.store import PostgresApiKeyStore

__all__ = [
    "API_KEY_ISSUER",
    "ApiKey",
    "ApiKeyAuthenticator",
    "ApiKeyManager",
    "ApiKeyPage",
    "ApiKeyServicer",
    "ApiKeys",
    "IssuedApiKey",
    "KeyState",
    "PostgresApiKeyStore",
    "SecretHasher",
    "add_api_key_service",
    "build_api_keys",
    "key_id_of",
    "load_api_keys",
    "parse_api_key",
    "public_prefix",
]


@dataclass(frozen=True)
class ApiKeys:
    """The API-key parts of one Nexus, sharing one store and one verified-key cache."""

    store: PostgresApiKeyStore
    manager: ApiKeyManager
    authenticator: ApiKeyAuthenticator


def build_api_keys(
    settings: ApiKeySettings,
    pool: AsyncConnectionPool,
    pepper: bytes,
    *,
    clock: Callable[[], datetime] = utc_now,
) -> ApiKeys:
    """The store, manager and authenticator for ``settings`` over ``pool``; ``pepper`` is
    the secret named by ``settings.pepper_secret`` (at least 32 bytes; ConfigError
    otherwise)."""
    hasher = SecretHasher(pepper)
    store = PostgresApiKeyStore(
        pool, pool_timeout=settings.pool_timeout, max_page_size=settings.max_page_size
    )
    authenticator = ApiKeyAuthenticator(
        store,
        hasher,
        cache_seconds=settings.cache_seconds,
        cache_size=settings.cache_size,
        last_used_interval=settings.last_used_interval,
        clock=clock,
    )
    max_lifetime = (
        timedelta(days=settings.max_lifetime_days) if settings.max_lifetime_days else None
    )
    manager = ApiKeyManager(
        store,
        hasher,
        max_lifetime=max_lifetime,
        on_secret_change=authenticator.forget,
        clock=clock,
    )
    return ApiKeys(store, manager, authenticator)


async def load_api_keys(
    settings: ApiKeySettings,
    pool: AsyncConnectionPool,
    secrets: SecretProvider,
    *,
    clock: Callable[[], datetime] = utc_now,
) -> ApiKeys:
    """``build_api_keys`` with the pepper read from ``secrets`` (the secret named
    ``settings.pepper_secret``). NotFound (``SECRET_NOT_FOUND``) when it is not set,
    ConfigError when it is shorter than 32 bytes: the service refuses to start rather
    than run with a guessable pepper."""
    pepper = await secrets.get(settings.pepper_secret)
    return build_api_keys(settings, pool, pepper, clock=clock)
