"""Secret providers: where Datapunk reads its secrets (the PKCS#11 token PIN, keys,
passwords) so that none ever sits in a plain configuration file.

Every backend implements ``SecretProvider.get(name) -> bytes``; ``[secrets] provider``
picks one:

- ``env`` (development): secret ``signing_token_pin`` is the environment variable
  ``DATAPUNK_SECRET_SIGNING_TOKEN_PIN``.
- ``file`` (development, mounted secret volumes): the file ``<directory>/<name>``, which
  must be readable by its owner only (mode 0600 or 0400).
"""

from __future__ import annotations

from datapunk_shared.secrets._base import (
    SECRET_NAME_PATTERN,
    SecretProvider,
    check_secret_name,
)
from datapunk_shared.secrets._env import ENV_PREFIX, EnvSecretProvider
from datapunk_shared.secrets._file import FileSecretProvider

__all__ = [
    "ENV_PREFIX",
    "SECRET_NAME_PATTERN",
    "EnvSecretProvider",
    "FileSecretProvider",
    "SecretProvider",
    "check_secret_name",
]
