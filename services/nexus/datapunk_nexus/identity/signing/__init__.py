"""Nexus's token signing keys: the ``Signer`` interface (ES256, raw r || s signatures),
its backends (a PKCS#11 token in production, an in-process key for development) and the
key ring that rotates them by ``kid`` and publishes the JWKS."""

from __future__ import annotations

from datapunk_nexus.identity.signing._jwk import ALG, thumbprint
from datapunk_nexus.identity.signing._signer import Signer, SoftwareSigner

__all__ = ["ALG", "Signer", "SoftwareSigner", "thumbprint"]
