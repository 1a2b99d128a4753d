"""Secrets from files (development, and mounted secret volumes): secret ``name`` is the
file ``<directory>/<name>`` (``nexus/signing-token-pin`` is in a subdirectory). A file
that its group or other users could read or write is refused, so a secret never sits
world-readable by mistake."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from datapunk_shared.errors import FailedPrecondition
from datapunk_shared.secrets._base import check_secret_name, secret_not_found

__all__ = ["MAX_SECRET_BYTES", "FileSecretProvider"]

MAX_SECRET_BYTES = 1024 * 1024
"""A secret file larger than this is refused (secrets are PINs, keys and tokens)."""


class FileSecretProvider:
    """Reads ``<directory>/<name>``. One trailing newline is dropped, so a secret written
    with ``echo`` works; the file must be a regular file with mode ``0600`` or tighter
    (``0400``), or the read is refused with FailedPrecondition
    (``SECRET_FILE_INSECURE``)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def path(self, name: str) -> Path:
        """The file that holds secret ``name``."""
        return self._directory / check_secret_name(name)

    async def get(self, name: str) -> bytes:
        path = self.path(name)
        return await asyncio.to_thread(_read_secret_file, name, path)


def _read_secret_file(name: str, path: Path) -> bytes:
    try:
        # O_NONBLOCK: a FIFO planted in place of the file must not hang the read.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise secret_not_found(name, "file", f"the file {path}") from None
    except OSError as exc:
        raise FailedPrecondition(
            f"secret {name!r} cannot be read from {path}: {exc.strerror}",
            reason="SECRET_FILE_UNREADABLE",
            metadata={"secret": name, "path": str(path)},
        ) from None
    try:
        # fstat the open file, not the path, so the checked file is the one read.
        _check_secret_file(name, path, os.fstat(fd))
        value = os.read(fd, MAX_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    value = value.removesuffix(b"\n").removesuffix(b"\r")
    if not value:
        raise secret_not_found(name, "file", f"the file {path}, which is empty")
    return value


def _check_secret_file(name: str, path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise FailedPrecondition(
            f"secret {name!r}: {path} is not a regular file",
            reason="SECRET_FILE_UNREADABLE",
            metadata={"secret": name, "path": str(path)},
        )
    if info.st_mode & 0o077:
        raise FailedPrecondition(
            f"secret {name!r}: {path} has mode {stat.S_IMODE(info.st_mode):04o}, so other "
            "users can reach it; make it private with chmod 600",
            reason="SECRET_FILE_INSECURE",
            metadata={"secret": name, "path": str(path)},
        )
    if info.st_size > MAX_SECRET_BYTES:
        raise FailedPrecondition(
            f"secret {name!r}: {path} is larger than {MAX_SECRET_BYTES} bytes",
            reason="SECRET_FILE_UNREADABLE",
            metadata={"secret": name, "path": str(path)},
        )
