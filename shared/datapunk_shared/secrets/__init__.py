"""Secret providers: where Datapunk reads its secrets (the PKCS#11 token's PIN, keys,
peppers) so that none ever sits in a plain configuration file.

Every backend implements ``SecretProvider.get(name) -> bytes`` and raises ``NotFound``
(reason ``SECRET_NOT_FOUND``) naming a missing secret, never showing a value.
``[secrets] provider`` picks one (``build_secret_provider``):

- ``env`` (development): secret ``nexus/signing-token-pin`` is the environment variable
  ``DATAPUNK_SECRET_NEXUS__SIGNING_TOKEN_PIN``.
- ``file`` (development, mounted secret volumes): the file
  ``<directory>/nexus/signing-token-pin``, which must be readable by its owner only
  (mode 0600 or 0400). ``datapunk up`` keeps its secrets this way under the data
  directory.
- ``http`` (production): a HashiCorp Vault or OpenBao server, KV version 2 secrets
  engine. Store each secret as a string under the key ``value`` at
  ``<mount>/<path_prefix>/<name>``, for example
  ``bao kv put -mount=secret datapunk/nexus/signing-token-pin value=...``; give Nexus a
  token whose policy may ``read`` ``<mount>/data/<path_prefix>/*`` (ideally through an
  agent writing it to ``token_file``), use ``https://`` with ``ca_file`` for the store's
  CA, and set ``namespace`` if the store uses namespaces. Unreachable, sealed or failing
  stores are UNAVAILABLE and retried briefly; a refused token is PERMISSION_DENIED.
"""

from __future__ import annotations

from datapunk_shared.config import SecretsSettings
from datapunk_shared.secrets._base import (
    SECRET_NAME_MAX_LENGTH,
    SECRET_NAME_PATTERN,
    SecretProvider,
    check_secret_name,
)
from datapunk_shared.secrets._env import ENV_PREFIX, EnvSecretProvider
from datapunk_shared.secrets._file import FileSecretProvider
from datapunk_shared.secrets._http import HttpSecretProvider

__all__ = [
    "ENV_PREFIX",
    "SECRET_NAME_MAX_LENGTH",
    "SECRET_NAME_PATTERN",
    "EnvSecretProvider",
    "FileSecretProvider",
    "HttpSecretProvider",
    "SecretProvider",
    "build_secret_provider",
    "check_secret_name",
    "close_secret_provider",
]


def build_secret_provider(settings: SecretsSettings) -> SecretProvider:
    """The provider ``settings`` configure. An ``http`` provider holds connections:
    close it with ``close_secret_provider`` when done."""
    if settings.provider == "file":
        return FileSecretProvider(settings.directory)
    if settings.provider == "http":
        return HttpSecretProvider(
            settings.url,
            mount=settings.mount,
            path_prefix=settings.path_prefix,
            field=settings.field,
            namespace=settings.namespace,
            token_env=settings.token_env,
            token_file=settings.token_file,
            ca_file=settings.ca_file,
            timeout=settings.timeout,
        )
    return EnvSecretProvider()


async def close_secret_provider(provider: SecretProvider) -> None:
    """Release what ``provider`` holds (the HTTP provider's connections), if anything."""
    if isinstance(provider, HttpSecretProvider):
        await provider.aclose()
