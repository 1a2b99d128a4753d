"""Where the key ring's private keys live: on a PKCS#11 token (shared by every instance
that reaches the token) or in this process (development)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

from datapunk_shared.errors import NotFound
from datapunk_shared.secrets import SecretProvider

from datapunk_nexus.identity.signing._pkcs11 import Pkcs11Token
from datapunk_nexus.identity.signing._signer import Signer, SoftwareSigner

__all__ = ["BackendName", "KeyBackend", "NewKey", "Pkcs11Keys", "SoftwareKeys", "StoredKey"]

BackendName = Literal["pkcs11", "software"]


@dataclass(frozen=True, slots=True)
class StoredKey:
    """Where a key recorded in PostgreSQL keeps its private half."""

    kid: str
    backend: BackendName
    token_label: str | None
    token_key_id: str | None


@dataclass(frozen=True, slots=True)
class NewKey:
    """A key a backend has just made, with where its private half is."""

    signer: Signer
    token_label: str | None = None
    token_key_id: str | None = None


class KeyBackend(Protocol):
    """Makes signing keys, finds them again and destroys them."""

    name: BackendName

    async def configured(self) -> NewKey | None:
        """The key the configuration names, if any (the software backend's PEM
        secret), which the ring makes active at start."""
        ...

    async def generate(self) -> NewKey: ...

    async def signer(self, key: StoredKey) -> Signer | None:
        """The signer of ``key``, or None when this process cannot sign with it (a key
        of another backend or token, or a software key made by another process)."""
        ...

    async def destroy(self, key: StoredKey) -> None: ...

    async def aclose(self) -> None: ...


class Pkcs11Keys:
    """Keys generated on, kept on and used by one PKCS#11 token."""

    name: BackendName = "pkcs11"

    def __init__(self, token: Pkcs11Token) -> None:
        self._token = token

    async def configured(self) -> NewKey | None:
        return None

    async def generate(self) -> NewKey:
        signer = await asyncio.to_thread(self._token.generate)
        return NewKey(signer, self._token.label, signer.key_id.hex())

    async def signer(self, key: StoredKey) -> Signer | None:
        if not self._holds(key) or key.token_key_id is None:
            return None
        try:
            return await asyncio.to_thread(self._token.signer, bytes.fromhex(key.token_key_id))
        except NotFound:
            return None

    async def destroy(self, key: StoredKey) -> None:
        if self._holds(key) and key.token_key_id is not None:
            await asyncio.to_thread(self._token.destroy, bytes.fromhex(key.token_key_id))

    async def aclose(self) -> None:
        await asyncio.to_thread(self._token.close)

    def _holds(self, key: StoredKey) -> bool:
        return key.backend == "pkcs11" and key.token_label == self._token.label


class SoftwareKeys:
    """Keys in this process's memory (development): the PEM key of the secret
    ``key_secret`` when it is set, else keys generated here. Another process cannot sign
    with them, so only instances sharing the PEM secret share a key."""

    name: BackendName = "software"

    def __init__(self, secrets: SecretProvider, key_secret: str) -> None:
        self._secrets = secrets
        self._key_secret = key_secret
        self._held: dict[str, SoftwareSigner] = {}

    async def configured(self) -> NewKey | None:
        try:
            signer = await SoftwareSigner.from_secret(self._secrets, self._key_secret)
        except NotFound:
            return None
        self._held[signer.kid] = signer
        return NewKey(signer)

    async def generate(self) -> NewKey:
        signer = SoftwareSigner.generate()
        self._held[signer.kid] = signer
        return NewKey(signer)

    async def signer(self, key: StoredKey) -> Signer | None:
        return self._held.get(key.kid) if key.backend == "software" else None

    async def destroy(self, key: StoredKey) -> None:
        self._held.pop(key.kid, None)

    async def aclose(self) -> None:
        self._held.clear()
