"""``datapunk admin-key``: the bootstrap administrator's API key (admin of the tenant
``default``), the first credential of a new installation, which ``datapunk up`` writes
once into ``<data_dir>/secrets/nexus/bootstrap-admin-key``.

The key is looked up where the stack keeps it: the configured data directory, or, when
that is the default ``.datapunk`` and holds no key, the directory ``scripts/test.sh``
runs the stack in when the ``postgres`` user cannot enter the checkout
(``layout.unprivileged_data_dir``). When ``[secrets]`` is configured the operator's
secret provider keeps it, and it is read from there."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from datapunk_shared.config import Settings, StackSettings
from datapunk_shared.errors import DatapunkError

from datapunk_stack.layout import Layout, StackError, unprivileged_data_dir

__all__ = ["AdminKey", "read_admin_key"]


@dataclass(frozen=True, slots=True)
class AdminKey:
    key: str
    note: str | None = None
    """Set when the key is not from where the configuration points (the fallback)."""


def read_admin_key(settings: Settings, layout: Layout) -> AdminKey:
    """The bootstrap administrator key, or StackError saying why there is none and
    what to do about it."""
    name = settings.nexus.auth.api_keys.bootstrap_secret
    if name is None:
        raise StackError(
            "no bootstrap administrator key is configured "
            "(nexus.auth.api_keys.bootstrap_secret is unset)"
        )
    if "secrets" in settings.model_fields_set:
        return _from_provider(settings, name)
    looked = []
    for data_dir in _data_dirs(settings, layout):
        path = data_dir / "secrets" / name
        looked.append(str(path))
        if path.exists():
            note = None
            if data_dir != layout.data_dir:
                note = f"the key of the stack scripts/test.sh keeps in {data_dir}"
            return AdminKey(_read_file(data_dir / "secrets", name), note)
    raise StackError(
        f"no bootstrap administrator key yet (looked for {' and '.join(looked)}); "
        "'datapunk up' writes it when it first starts the services"
    )


def _data_dirs(settings: Settings, layout: Layout) -> list[Path]:
    dirs = [layout.data_dir]
    if settings.stack.data_dir == StackSettings().data_dir:  # the default .datapunk
        fallback = unprivileged_data_dir()
        if fallback != layout.data_dir:
            dirs.append(fallback)
    return dirs


def _read_file(directory: Path, name: str) -> str:
    # The file provider checks what Nexus checks (a private regular file).
    from datapunk_shared.secrets import FileSecretProvider

    try:
        value = asyncio.run(FileSecretProvider(directory).get(name))
    except DatapunkError as exc:
        raise StackError(exc.message) from None
    return value.decode()


def _from_provider(settings: Settings, name: str) -> AdminKey:
    from datapunk_shared.secrets import build_secret_provider, close_secret_provider

    async def get() -> bytes:
        provider = build_secret_provider(settings.secrets)
        try:
            return await provider.get(name)
        finally:
            await close_secret_provider(provider)

    try:
        value = asyncio.run(get())
    except DatapunkError as exc:
        raise StackError(f"the bootstrap administrator key cannot be read: {exc.message}") from None
    return AdminKey(value.decode())
