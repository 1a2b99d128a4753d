"""The secrets ``datapunk up`` makes once for a new installation."""

from __future__ import annotations

import stat
from pathlib import Path

from datapunk_nexus.identity.api_keys import parse_api_key
from datapunk_shared.config import Settings
from datapunk_stack.stack_secrets import ensure_stack_secrets


def test_missing_secrets_are_made_once_and_private(tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    written = ensure_stack_secrets(Settings(), directory)
    assert "nexus/api-key-pepper" in written
    assert "nexus/bootstrap-admin-key" in written
    for name in written:
        path = directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex((directory / "nexus/api-key-pepper").read_text())) == 32
    key = (directory / "nexus/bootstrap-admin-key").read_text()
    assert parse_api_key(key).key_id  # a well-formed key, checksum included
    # A second start keeps them: the key and the pepper must not change under Nexus.
    assert ensure_stack_secrets(Settings(), directory) == []
    assert (directory / "nexus/bootstrap-admin-key").read_text() == key
