"""Configuration for every Datapunk process.

Values come, in rising priority, from the defaults below, a TOML file
(``datapunk.toml`` in the working directory, or the path in ``DATAPUNK_CONFIG``),
and environment variables such as ``DATAPUNK_LAKE__PORT=6051``. Unknown keys and
invalid values are refused with a message naming the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from datapunk_shared.errors import ConfigError

__all__ = [
    "EngineSettings",
    "KafkaSettings",
    "LakeSettings",
    "LogSettings",
    "MqttSettings",
    "NexusSettings",
    "PostgresSettings",
    "QuestDBSettings",
    "RedisSettings",
    "ServiceSettings",
    "Settings",
    "SpatialStoreSettings",
    "StackSettings",
    "StreamSettings",
    "TimeSeriesStoreSettings",
    "TracingSettings",
    "VectorStoreSettings",
    "config_path",
    "load_settings",
]

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, le=3600)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSettings(_Strict):
    """Where one service listens and how it behaves at its edges."""

    host: str = "127.0.0.1"
    port: Port
    metrics_port: Port
    shutdown_grace: Seconds = 10.0
    probe_interval: Seconds = 5.0
    probe_timeout: Seconds = 2.0
    max_message_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 16 * 1024 * 1024


class VectorStoreSettings(_Strict):
    """The Lake's vector store: embedded Qdrant (qdrant-edge, shards under ``path``) or a
    Qdrant server at ``url``."""

    engine: Literal["embedded", "server"] = "embedded"
    path: Path = Path(".datapunk/lake/vectors")
    url: str = "http://127.0.0.1:6333"
    api_key: str = ""
    timeout: Seconds = 30.0
    """Server engine: how long one request to the Qdrant server may take."""
    auto_optimize: bool = True
    """Embedded engine: build the HNSW index in the background (in a child process) once a
    collection has ``optimize_min_unindexed`` unindexed points and its writes paused for
    ``optimize_idle_seconds``."""
    optimize_min_unindexed: Annotated[int, Field(ge=1, le=1_000_000_000)] = 20_000
    optimize_idle_seconds: Seconds = 2.0


class TimeSeriesStoreSettings(_Strict):
    """The Lake's time-series store on QuestDB (``engines.questdb``)."""

    max_rows_per_write: Annotated[int, Field(ge=1, le=10_000_000)] = 1_000_000
    max_page_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    schema_cache_seconds: Annotated[float, Field(ge=0, le=3600)] = 5.0
    """How long a series' schema is reused before QuestDB's catalog is read again (0: never
    cached). Series created or dropped through this Lake refresh it at once."""
    ilp_senders: Annotated[int, Field(ge=1, le=64)] = 4
    """ILP/HTTP senders, so at most this many batches are being flushed at once."""
    stream_max_in_flight: Annotated[int, Field(ge=1, le=16)] = 2
    """Batches of one StreamWriteRows call that may wait for QuestDB at the same time."""
    write_retry_timeout: Annotated[float, Field(ge=0, le=600)] = 5.0
    """How long the ILP/HTTP client retries a flush on transient errors before the write
    fails with UNAVAILABLE (0: no retries)."""
    request_timeout: Seconds = 30.0
    """The longest a query or a flush may take."""
    pool_max: Annotated[int, Field(ge=1, le=100)] = 8
    """PG-wire connections to QuestDB for queries and DDL."""


class SpatialStoreSettings(_Strict):
    """The Lake's spatial store on PostGIS (``engines.postgres``)."""

    max_page_size: Annotated[int, Field(ge=1, le=100_000)] = 1_000
    pool_timeout: Seconds = 5.0
    """How long a call waits for a PostgreSQL connection before it fails with UNAVAILABLE."""


class LakeSettings(ServiceSettings):
    port: Port = 50051
    metrics_port: Port = 9151
    max_payload_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 1024 * 1024
    vectors: VectorStoreSettings = VectorStoreSettings()
    timeseries: TimeSeriesStoreSettings = TimeSeriesStoreSettings()
    spatial: SpatialStoreSettings = SpatialStoreSettings()


class StreamSettings(ServiceSettings):
    port: Port = 50052
    metrics_port: Port = 9152


class NexusSettings(ServiceSettings):
    port: Port = 50053
    metrics_port: Port = 9153


class PostgresSettings(_Strict):
    """PostgreSQL with PostGIS: geometry for the Lake, platform metadata for everyone."""

    url: str = "postgresql://postgres@127.0.0.1:55432/datapunk"
    managed: bool = True
    pool_min: Annotated[int, Field(ge=0, le=100)] = 1
    pool_max: Annotated[int, Field(ge=1, le=500)] = 10


class QuestDBSettings(_Strict):
    """QuestDB: ILP over HTTP for writes, the PostgreSQL wire protocol for queries."""

    http_url: str = "http://127.0.0.1:9000"
    pg_url: str = "postgresql://admin:quest@127.0.0.1:8812/qdb"
    managed: bool = True


class KafkaSettings(_Strict):
    """Apache Kafka (KRaft), the Stream's log."""

    bootstrap_servers: str = "127.0.0.1:59092"
    managed: bool = True


class MqttSettings(_Strict):
    """The MQTT broker the Stream ingests from."""

    url: str = "mqtt://127.0.0.1:51883"
    managed: bool = True


class RedisSettings(_Strict):
    """Redis, for shared rate limits and caches."""

    url: str = "redis://127.0.0.1:56379/0"
    managed: bool = True


class EngineSettings(_Strict):
    """Every engine. ``managed = true`` means ``datapunk up`` runs it locally; set it to
    false and give the URL of an existing server to use that server instead."""

    postgres: PostgresSettings = PostgresSettings()
    questdb: QuestDBSettings = QuestDBSettings()
    kafka: KafkaSettings = KafkaSettings()
    mqtt: MqttSettings = MqttSettings()
    redis: RedisSettings = RedisSettings()


class StackSettings(_Strict):
    """The local stack that ``datapunk up`` supervises."""

    data_dir: Path = Path(".datapunk")
    start_timeout: Seconds = 120.0
    stop_timeout: Seconds = 30.0
    """How long one child may take to stop after SIGTERM before it is killed."""
    kafka_controller_port: Port = 59093
    """The KRaft controller listener of the managed Kafka (same host as the broker)."""
    questdb_min_http_port: Port = 9003
    """QuestDB's minimal HTTP server (health and metrics), kept off other stacks' 9003."""
    java_home: Path = Path("/usr/lib/jvm/temurin-25-jdk-amd64")
    """The Java 25 runtime for QuestDB and Kafka."""
    engines_lib: Path | None = None
    """The QuestDB and Kafka jars; unset means build/engines/lib of the source tree,
    where scripts/install-engines.sh puts them."""


class LogSettings(_Strict):
    """Structured logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = True
    # "all": one line per RPC; "failures": only failed or slow RPCs (the per-line cost
    # is measurable at thousands of calls per second); "off".
    access_log: Literal["all", "failures", "off"] = "failures"
    slow_call_ms: Annotated[float, Field(gt=0)] = 1000.0


class TracingSettings(_Strict):
    """OpenTelemetry tracing; off unless an exporter is chosen."""

    exporter: Literal["none", "otlp", "console"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    sample_ratio: Annotated[float, Field(ge=0, le=1)] = 1.0


class Settings(BaseSettings):
    """The whole configuration of a Datapunk installation."""

    model_config = SettingsConfigDict(
        env_prefix="DATAPUNK_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    lake: LakeSettings = LakeSettings()
    stream: StreamSettings = StreamSettings()
    nexus: NexusSettings = NexusSettings()
    engines: EngineSettings = EngineSettings()
    stack: StackSettings = StackSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_toml_file))
        return tuple(sources)


_toml_file: Path | None = None


def config_path() -> Path | None:
    """The configuration file in use: ``$DATAPUNK_CONFIG`` or ``./datapunk.toml``."""
    explicit = os.environ.get("DATAPUNK_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"DATAPUNK_CONFIG names {explicit!r}, which is not a file")
        return path
    default = Path("datapunk.toml")
    return default if default.is_file() else None


def load_settings() -> Settings:
    """Read the configuration, or raise ConfigError naming every bad key."""
    global _toml_file
    _toml_file = config_path()
    # DATAPUNK_CONFIG selects the file; it is not itself a setting, so hide it from
    # the environment source, which refuses unknown DATAPUNK_* names.
    selector = os.environ.pop("DATAPUNK_CONFIG", None)
    try:
        return Settings()
    except ValidationError as exc:
        keys = [".".join(str(part) for part in err["loc"]) for err in exc.errors()]
        problems = [
            f"{key}: unknown configuration key"
            if err["type"] == "extra_forbidden"
            else f"{key}: {err['msg']} (got {err.get('input')!r})"
            for key, err in zip(keys, exc.errors(), strict=True)
        ]
        raise ConfigError("invalid configuration: " + "; ".join(problems), keys=keys) from None
    finally:
        if selector is not None:
            os.environ["DATAPUNK_CONFIG"] = selector
