"""The secrets a new local installation needs, made once by ``datapunk up`` into the
stack's private secrets directory (the ``file`` provider), so the platform starts secure
without anyone typing a secret: the API-key pepper, the audit chain's key and the
bootstrap administrator's API key (``<data_dir>/secrets/nexus/bootstrap-admin-key``, the
first credential; every other one is made through the API with it)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from datapunk_nexus.identity.api_keys.key_format import format_api_key, new_key_id, new_secret
from datapunk_shared.config import Settings
from datapunk_shared.secrets import FileSecretProvider

__all__ = ["ensure_stack_secrets"]


def _new_api_key() -> str:
    return format_api_key(new_key_id(), new_secret())


def _random_hex() -> str:
    return secrets.token_hex(32)


def ensure_stack_secrets(settings: Settings, directory: Path) -> list[str]:
    """Write each missing secret once (mode 0600); returns the names written now."""
    files = FileSecretProvider(directory)
    auth = settings.nexus.auth
    wanted: list[tuple[str | None, Callable[[], str]]] = [
        (auth.api_keys.pepper_secret, _random_hex),
        (auth.audit.chain_key_secret or None, _random_hex),
        (auth.api_keys.bootstrap_secret, _new_api_key),
    ]
    written = []
    for name, make in wanted:
        if name is None:
            continue
        path = files.path(name)
        if path.is_file():
            continue
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(make())
        written.append(name)
    return written
