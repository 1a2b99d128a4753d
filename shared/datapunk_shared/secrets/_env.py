"""Secrets from environment variables (development): ``nexus/signing-token-pin`` is read
from ``DATAPUNK_SECRET_NEXUS__SIGNING_TOKEN_PIN`` (``/`` becomes ``__``, ``-`` becomes
``_``, letters are upper-cased)."""

from __future__ import annotations

import os

from datapunk_shared.secrets._base import check_secret_name, secret_not_found

__all__ = ["ENV_PREFIX", "EnvSecretProvider"]

ENV_PREFIX = "DATAPUNK_SECRET_"


class EnvSecretProvider:
    """Reads ``<prefix><NAME>`` from the environment at each ``get``; an unset or empty
    variable is a missing secret."""

    def __init__(self, prefix: str = ENV_PREFIX) -> None:
        self._prefix = prefix

    def variable(self, name: str) -> str:
        """The environment variable that holds secret ``name``."""
        check_secret_name(name)
        return self._prefix + name.replace("/", "__").replace("-", "_").upper()

    async def get(self, name: str) -> bytes:
        variable = self.variable(name)
        value = os.environb.get(os.fsencode(variable), b"")
        if not value:
            raise secret_not_found(name, "environment", f"the variable {variable}")
        return value
