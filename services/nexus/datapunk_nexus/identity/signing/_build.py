"""Building Nexus's key ring from the configuration."""

from __future__ import annotations

import asyncio

from datapunk_shared.config import Settings
from datapunk_shared.key_events import key_event_publisher
from datapunk_shared.secrets import SecretProvider, build_secret_provider, close_secret_provider
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.signing._backends import KeyBackend, Pkcs11Keys, SoftwareKeys
from datapunk_nexus.identity.signing._pkcs11 import Pkcs11Token
from datapunk_nexus.identity.signing._ring import SigningKeyRing

__all__ = ["build_key_ring"]


async def build_key_ring(
    settings: Settings,
    pool: AsyncConnectionPool,
    secrets: SecretProvider | None = None,
    *,
    refresh: bool = True,
) -> SigningKeyRing:
    """The started key ring of ``nexus.auth.signing``: logged in to the PKCS#11 token
    with the PIN from the secret provider (``secrets``, else the one ``[secrets]``
    configures), with an active key, refreshing in the background unless ``refresh`` is
    false, announcing its changes on ``auth.key_events_channel``. Needs Nexus's
    migrations applied. Close it with ``aclose``."""
    signing = settings.nexus.auth.signing
    provider = secrets if secrets is not None else build_secret_provider(settings.secrets)
    backend: KeyBackend
    try:
        if signing.backend == "pkcs11":
            pin = await provider.get(signing.pin_secret)
            token = await asyncio.to_thread(
                Pkcs11Token.open,
                signing.pkcs11_module,
                signing.token_label,
                pin,
                pin_secret=signing.pin_secret,
            )
            backend = Pkcs11Keys(token)
        else:
            backend = SoftwareKeys(provider, signing.software_key_secret)
        issuer = settings.nexus.auth.oauth.issuer or settings.auth.issuer
        ring = SigningKeyRing(
            pool,
            backend,
            overlap=signing.rotation_overlap,
            refresh_interval=signing.refresh_interval,
            events=key_event_publisher(settings, issuer),
        )
        try:
            await ring.start()
        except BaseException:
            await ring.aclose()
            raise
    finally:
        if secrets is None:
            await close_secret_provider(provider)
    if refresh:
        ring.start_refreshing()
    return ring
