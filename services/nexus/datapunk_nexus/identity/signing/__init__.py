"""Nexus's token signing keys (docs/identity.md): the ``Signer`` interface (ES256, raw
r || s signatures), its backends (``Pkcs11Signer``: keys generated on and used by a
PKCS#11 token; ``SoftwareSigner``: an in-process key for development) and the
``SigningKeyRing`` that rotates them by ``kid`` with an overlap and publishes the JWKS,
its state shared by every instance through PostgreSQL (``nexus.signing_keys``).

Nexus builds the ring with ``build_key_ring(settings, pool)``, signs with
``ring.active_signer()`` and serves ``await ring.jwks()``."""

from __future__ import annotations

from datapunk_nexus.identity.signing._backends import (
    BackendName,
    KeyBackend,
    NewKey,
    Pkcs11Keys,
    SoftwareKeys,
    StoredKey,
)
from datapunk_nexus.identity.signing._build import build_key_ring
from datapunk_nexus.identity.signing._deferred import DeferredKeyRing
from datapunk_nexus.identity.signing._jwk import ALG, thumbprint
from datapunk_nexus.identity.signing._pkcs11 import Pkcs11Signer, Pkcs11Token
from datapunk_nexus.identity.signing._ring import KeyState, SigningKeyInfo, SigningKeyRing
from datapunk_nexus.identity.signing._signer import Signer, SoftwareSigner

__all__ = [
    "ALG",
    "BackendName",
    "DeferredKeyRing",
    "KeyBackend",
    "KeyState",
    "NewKey",
    "Pkcs11Keys",
    "Pkcs11Signer",
    "Pkcs11Token",
    "Signer",
    "SigningKeyInfo",
    "SigningKeyRing",
    "SoftwareKeys",
    "SoftwareSigner",
    "StoredKey",
    "build_key_ring",
    "thumbprint",
]
