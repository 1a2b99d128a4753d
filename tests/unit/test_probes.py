"""Probes without engines: what they report when nothing answers, or nothing listens.

The round-trips against real engines are in tests/stack/test_stack.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC

import pytest
from datapunk_shared.config import (
    EngineSettings,
    KafkaSettings,
    MqttSettings,
    PostgresSettings,
    QuestDBSettings,
    RedisSettings,
)
from datapunk_shared.probes import (
    ENGINE_NAMES,
    PostgresProbe,
    RedisProbe,
    build_probes,
    redact_url,
    run_probe,
)


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections but never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _engines_on_closed_ports() -> EngineSettings:
    return EngineSettings(
        postgres=PostgresSettings(url=f"postgresql://u:secret@127.0.0.1:{_closed_port()}/x"),
        questdb=QuestDBSettings(pg_url=f"postgresql://admin:quest@127.0.0.1:{_closed_port()}/qdb"),
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{_closed_port()}"),
        mqtt=MqttSettings(url=f"mqtt://user:pw@127.0.0.1:{_closed_port()}"),
        redis=RedisSettings(url=f"redis://:pw@127.0.0.1:{_closed_port()}/0"),
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://admin:quest@127.0.0.1:8812/qdb", "postgresql://admin@127.0.0.1:8812/qdb"),
        ("redis://:secret@host:6379/0", "redis://host:6379/0"),
        ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
        ("postgresql://u@h/db?password=x&sslmode=off", "postgresql://u@h/db?sslmode=off"),
        ("127.0.0.1:9092", "127.0.0.1:9092"),
        ("postgresql://u:p%40ss@h:1/db", "postgresql://u@h:1/db"),
    ],
)
def test_redact_url_removes_only_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_build_probes_keeps_the_order_and_refuses_unknown_names() -> None:
    engines = EngineSettings()
    probes = build_probes(engines, ["redis", "postgres"])
    assert [p.name for p in probes] == ["redis", "postgres"]
    assert probes[1].endpoint == "postgresql://postgres@127.0.0.1:55432/datapunk"
    with pytest.raises(ValueError, match="qdrant"):
        build_probes(engines, ["postgres", "qdrant"])


async def test_every_probe_reports_a_closed_port_as_unreachable() -> None:
    probes = build_probes(_engines_on_closed_ports(), ENGINE_NAMES)
    for probe in probes:
        result = await run_probe(probe, timeout=10)
        assert result.name == probe.name
        assert not result.reachable, result
        assert result.round_trip is None
        assert result.error
        assert len(result.error) <= 200
        assert result.checked_at.tzinfo is UTC
        # Neither the endpoint nor the reason may leak a password.
        for secret in ("secret", "quest", ":pw@"):
            assert secret not in result.endpoint
            assert secret not in result.error


async def test_a_silent_server_times_out(silent_port: int) -> None:
    for probe in (
        PostgresProbe(f"postgresql://u@127.0.0.1:{silent_port}/x"),
        RedisProbe(f"redis://127.0.0.1:{silent_port}/0"),
    ):
        result = await run_probe(probe, timeout=0.5)
        assert not result.reachable
        assert result.error == "no answer within 0.5s"
