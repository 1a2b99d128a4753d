"""The key ring before it exists: Nexus starts serving (NOT_SERVING) before PostgreSQL is
reachable and its migrations applied, and the ring can only be built after them. Until
then every use of the ring fails with UNAVAILABLE (``SIGNING_KEYS_NOT_READY``), which is
retryable; afterwards it is the ring itself."""

from __future__ import annotations

from collections.abc import Collection

from datapunk_shared.errors import Unavailable

from datapunk_nexus.identity.signing._ring import SigningKeyInfo, SigningKeyRing
from datapunk_nexus.identity.signing._signer import Signer

__all__ = ["DeferredKeyRing"]


class DeferredKeyRing:
    """Stands in for a ``SigningKeyRing`` until ``set`` gives it the real one."""

    def __init__(self) -> None:
        self._ring: SigningKeyRing | None = None

    @property
    def ready(self) -> bool:
        return self._ring is not None

    def set(self, ring: SigningKeyRing) -> None:
        self._ring = ring

    def _get(self) -> SigningKeyRing:
        if self._ring is None:
            raise Unavailable(
                "the signing keys are not loaded yet (PostgreSQL or the key token is not "
                "ready); retry shortly",
                reason="SIGNING_KEYS_NOT_READY",
                retry_after=1.0,
            )
        return self._ring

    def active_signer(self) -> Signer:
        return self._get().active_signer()

    async def jwks(self) -> dict[str, list[dict[str, str]]]:
        return await self._get().jwks()

    async def keys(self) -> list[SigningKeyInfo]:
        return await self._get().keys()

    async def rotate(self) -> SigningKeyInfo:
        return await self._get().rotate()

    async def delete(self, kid: str) -> None:
        await self._get().delete(kid)

    async def keys_changed(self, issuer: str | None, removed: Collection[str]) -> None:
        """Passed on to the ring once there is one (until then there is nothing to reread)."""
        if self._ring is not None:
            await self._ring.keys_changed(issuer, removed)

    async def aclose(self) -> None:
        if self._ring is not None:
            await self._ring.aclose()
