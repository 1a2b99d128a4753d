"""Configuration: defaults that work, file and environment overrides, and refusal of
unknown keys and invalid values with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
from datapunk_shared.config import load_settings
from datapunk_shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DATAPUNK_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert (settings.lake.port, settings.stream.port, settings.nexus.port) == (50051, 50052, 50053)
    assert settings.engines.postgres.managed


def test_shipped_file_matches_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_CONFIG", str(ROOT / "datapunk.toml"))
    from_file = load_settings()
    monkeypatch.delenv("DATAPUNK_CONFIG")
    assert from_file == load_settings()


def test_environment_overrides_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "datapunk.toml").write_text("[lake]\nport = 6000\nmetrics_port = 6001\n")
    monkeypatch.setenv("DATAPUNK_LAKE__PORT", "7000")
    settings = load_settings()
    assert settings.lake.port == 7000
    assert settings.lake.metrics_port == 6001


def test_unknown_key_in_file_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "datapunk.toml").write_text("[lake]\nprot = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "lake.prot: unknown configuration key" in caught.value.message
    assert caught.value.keys == ["lake.prot"]


def test_unknown_environment_key_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_LAKE__PROT", "1")
    with pytest.raises(ConfigError, match=r"prot"):
        load_settings()


def test_invalid_value_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_NEXUS__PORT", "70000")
    with pytest.raises(ConfigError, match=r"nexus\.port: .*65535"):
        load_settings()


def test_missing_explicit_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPUNK_CONFIG", "/nonexistent/datapunk.toml")
    with pytest.raises(ConfigError, match="not a file"):
        load_settings()


def test_nexus_issuer_follows_the_rest_edge_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert load_settings().auth.issuer == "http://127.0.0.1:8080"
    (tmp_path / "datapunk.toml").write_text('[nexus.rest]\nhost = "0.0.0.0"\nport = 18080\n')
    assert load_settings().auth.issuer == "http://127.0.0.1:18080"
    monkeypatch.setenv("DATAPUNK_NEXUS__REST__PORT", "28080")
    assert load_settings().auth.issuer == "http://127.0.0.1:28080"
    monkeypatch.setenv("DATAPUNK_AUTH__ISSUER", "https://auth.example.org")
    assert load_settings().auth.issuer == "https://auth.example.org"
