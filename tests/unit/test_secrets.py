"""The development secret providers: environment variables and private files. A missing
secret is a NotFound naming the secret, an unsafe file is refused, and no error ever
carries a secret's value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from datapunk_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from datapunk_shared.secrets import EnvSecretProvider, FileSecretProvider, SecretProvider

VALUE = b"s3cr3t-value"


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


async def test_env_provider_reads_the_prefixed_upper_case_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = EnvSecretProvider()
    assert isinstance(provider, SecretProvider)
    monkeypatch.setenv("DATAPUNK_SECRET_NEXUS__SIGNING_TOKEN_PIN", VALUE.decode())
    variable = provider.variable("nexus/signing-token-pin")
    assert variable == "DATAPUNK_SECRET_NEXUS__SIGNING_TOKEN_PIN"
    assert await provider.get("nexus/signing-token-pin") == VALUE
    monkeypatch.setenv("DATAPUNK_SECRET_PLAIN", VALUE.decode())
    assert await provider.get("plain") == VALUE


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
async def test_env_provider_missing_secret_names_the_secret_and_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("DATAPUNK_SECRET_API_PEPPER", raising=False)
    else:
        monkeypatch.setenv("DATAPUNK_SECRET_API_PEPPER", value)
    with pytest.raises(NotFound) as caught:
        await EnvSecretProvider().get("api_pepper")
    assert caught.value.reason == "SECRET_NOT_FOUND"
    assert caught.value.metadata == {"secret": "api_pepper", "provider": "environment"}
    assert "'api_pepper'" in caught.value.message
    assert "DATAPUNK_SECRET_API_PEPPER" in caught.value.message


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Upper",
        "1digit",
        "../etc/passwd",
        "a/../b",
        "a/.b",
        "/abs",
        "a//b",
        "a/",
        "a.b",
        "a" * 201,
        "sp ace",
        "a\nb",
    ],
)
async def test_invalid_names_are_refused_by_every_provider(tmp_path: Path, name: str) -> None:
    for provider in (EnvSecretProvider(), FileSecretProvider(tmp_path)):
        with pytest.raises(InvalidArgument) as caught:
            await provider.get(name)
        assert caught.value.reason == "INVALID_SECRET_NAME"


async def test_file_provider_reads_a_private_file_and_drops_one_newline(tmp_path: Path) -> None:
    _write(tmp_path / "pin", VALUE + b"\n")
    _write(tmp_path / "pem", b"line1\nline2\n\n", 0o400)
    (tmp_path / "nexus").mkdir()
    _write(tmp_path / "nexus" / "signing-token-pin", VALUE)
    provider = FileSecretProvider(tmp_path)
    assert await provider.get("pin") == VALUE
    assert await provider.get("nexus/signing-token-pin") == VALUE
    assert await provider.get("pem") == b"line1\nline2\n"
    assert provider.path("pin") == tmp_path / "pin"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
async def test_file_provider_refuses_files_others_can_reach(tmp_path: Path, mode: int) -> None:
    _write(tmp_path / "pin", VALUE, mode)
    with pytest.raises(FailedPrecondition) as caught:
        await FileSecretProvider(tmp_path).get("pin")
    assert caught.value.reason == "SECRET_FILE_INSECURE"
    assert f"{mode:04o}" in caught.value.message
    assert "chmod 600" in caught.value.message
    assert VALUE.decode() not in caught.value.message
    assert caught.value.metadata["secret"] == "pin"


async def test_file_provider_missing_and_empty_files_are_not_found(tmp_path: Path) -> None:
    _write(tmp_path / "empty", b"\n")
    provider = FileSecretProvider(tmp_path)
    for name in ("absent", "empty"):
        with pytest.raises(NotFound) as caught:
            await provider.get(name)
        assert caught.value.reason == "SECRET_NOT_FOUND"
        assert caught.value.metadata == {"secret": name, "provider": "file"}
        assert str(tmp_path / name) in caught.value.message


async def test_file_provider_refuses_directories_and_huge_files(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir(mode=0o700)
    _write(tmp_path / "huge", b"x" * (1024 * 1024 + 1))
    provider = FileSecretProvider(tmp_path)
    for name in ("adir", "huge"):
        with pytest.raises(FailedPrecondition) as caught:
            await provider.get(name)
        assert caught.value.reason == "SECRET_FILE_UNREADABLE"


async def test_file_provider_follows_a_symlink_to_a_private_file(tmp_path: Path) -> None:
    # Mounted secret volumes (Kubernetes) present each secret as a symlink.
    target = _write(tmp_path / "real", VALUE)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "pin").symlink_to(target)
    assert await FileSecretProvider(secrets).get("pin") == VALUE
    os.chmod(target, 0o644)
    with pytest.raises(FailedPrecondition):
        await FileSecretProvider(secrets).get("pin")
