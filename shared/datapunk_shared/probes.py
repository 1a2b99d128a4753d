"""Real round-trips to each engine, for health checks and ``datapunk status``.

A probe proves an engine works, not just that its port is open: it runs a query,
sends a message and reads it back, or pings. ``run_probe`` wraps one probe in a
timeout and turns every failure into a ``ProbeResult`` with a short reason, so a
caller can probe all engines at once without one dead engine hiding the others.

Every client is opened and closed inside ``check`` so no connection outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import aiomqtt
import psycopg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from datapunk_shared.config import EngineSettings

__all__ = [
    "ENGINE_NAMES",
    "KAFKA_PROBE_TOPIC",
    "KafkaProbe",
    "MqttProbe",
    "PostgresProbe",
    "Probe",
    "ProbeResult",
    "QuestDBProbe",
    "RedisProbe",
    "build_probes",
    "redact_url",
    "run_probe",
]

ENGINE_NAMES = ("postgres", "questdb", "kafka", "mqtt", "redis")
"""Every engine a probe exists for, in the order the stack starts them."""

KAFKA_PROBE_TOPIC = "_datapunk_probe"
"""The topic the Kafka probe writes to and reads back from."""

_MAX_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe: reachable with a round-trip time, or a reason why not."""

    name: str
    endpoint: str
    reachable: bool
    round_trip: float | None
    error: str
    checked_at: datetime


class Probe(Protocol):
    """One engine's health check. ``check`` performs a real round-trip and raises on
    failure; it is always called under a timeout by ``run_probe``."""

    name: str
    endpoint: str

    async def check(self) -> None: ...


# The timeout is a parameter on purpose (ASYNC109): callers pass their configured
# probe_timeout, and the result must say "timed out" rather than raise.
async def run_probe(probe: Probe, timeout: float) -> ProbeResult:
    """Run ``probe`` once within ``timeout`` seconds. Never raises (except for the
    caller's own cancellation): a failure becomes ``reachable=False`` with a reason."""
    started = time.perf_counter()
    error = ""
    try:
        async with asyncio.timeout(timeout):
            await probe.check()
    except TimeoutError:
        error = f"no answer within {timeout:g}s"
    except Exception as exc:
        error = _describe(exc)
    elapsed = time.perf_counter() - started
    return ProbeResult(
        name=probe.name,
        endpoint=probe.endpoint,
        reachable=not error,
        round_trip=None if error else elapsed,
        error=error,
        checked_at=datetime.now(UTC),
    )


def _describe(exc: BaseException) -> str:
    """A one-line reason: the exception's message (its first lines joined), with any
    password removed, and its type when the message alone says nothing."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    text = re.sub(r"(password=)\S+", r"\1***", text)
    if not text:
        text = type(exc).__name__
    elif len(text) < 40:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def redact_url(url: str) -> str:
    """``url`` without its password (in the userinfo or a ``password=`` query
    parameter); anything that is not a URL, such as ``host:port``, is returned as is."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = urlencode([(k, v) for k, v in pairs if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(slots=True)
class PostgresProbe:
    """Connects and asks PostGIS for its version when the extension is installed
    (the stack's database has it), else runs ``SELECT 1``."""

    url: str
    name: str = "postgres"
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = redact_url(self.url)

    async def check(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cur = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'")
            has_postgis = await cur.fetchone() is not None
            query = "SELECT postgis_full_version()" if has_postgis else "SELECT 1"
            cur = await conn.execute(query)
            if await cur.fetchone() is None:
                raise RuntimeError(f"{query} returned no row")


@dataclass(slots=True)
class QuestDBProbe:
    """``SELECT 1`` over QuestDB's PostgreSQL wire protocol.

    QuestDB has no transactions for queries and handles psycopg's automatic
    server-side prepared statements poorly, so the probe uses autocommit and turns
    server-side preparation off (``prepare_threshold=None``)."""

    pg_url: str
    name: str = "questdb"
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = redact_url(self.pg_url)

    async def check(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.pg_url, autocommit=True, prepare_threshold=None
        ) as conn:
            cur = await conn.execute("SELECT 1")
            row = await cur.fetchone()
            if row is None or row[0] != 1:
                raise RuntimeError(f"SELECT 1 returned {row!r}")


@dataclass(slots=True)
class KafkaProbe:
    """Produces one message to ``_datapunk_probe`` and reads that exact message back
    (by partition and offset, without a consumer group, so nothing is committed)."""

    bootstrap_servers: str
    name: str = "kafka"
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = self.bootstrap_servers

    async def check(self) -> None:
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        payload = uuid.uuid4().bytes
        producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
        try:
            await producer.start()
            sent = await producer.send_and_wait(KAFKA_PROBE_TOPIC, payload)
        finally:
            await producer.stop()
        partition = TopicPartition(KAFKA_PROBE_TOPIC, sent.partition)
        # fetch_max_wait_ms is low because the record is already there: a long fetch
        # wait would only delay the answer when the broker is slow to fill a batch.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
        )
        try:
            await consumer.start()
            consumer.assign([partition])
            consumer.seek(partition, sent.offset)
            record = await consumer.getone(partition)
        finally:
            await consumer.stop()
        if record.value != payload:
            raise RuntimeError(f"read back a different record at offset {sent.offset}")


@dataclass(slots=True)
class MqttProbe:
    """Subscribes to a topic nobody else uses, publishes to it and waits for the
    message to come back through the broker."""

    url: str
    name: str = "mqtt"
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = redact_url(self.url)

    async def check(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {self.endpoint}")
        tls = ssl.create_default_context() if parts.scheme == "mqtts" else None
        topic = f"_datapunk/probe/{uuid.uuid4().hex}"
        payload = uuid.uuid4().bytes
        async with aiomqtt.Client(
            hostname=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls_context=tls,
            identifier=f"datapunk-probe-{uuid.uuid4().hex[:12]}",
        ) as client:
            await client.subscribe(topic, qos=1)
            await client.publish(topic, payload, qos=1)
            async for message in client.messages:
                if message.topic.matches(topic) and message.payload == payload:
                    return


@dataclass(slots=True)
class RedisProbe:
    """``PING``."""

    url: str
    name: str = "redis"
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = redact_url(self.url)

    async def check(self) -> None:
        client = aioredis.Redis.from_url(self.url)
        try:
            if not await client.ping():
                raise RuntimeError("PING was not answered with PONG")
        finally:
            # Closing can itself fail when the connection never opened; the ping's
            # error is the one worth reporting.
            with contextlib.suppress(Exception):
                await client.aclose()


_BUILDERS: dict[str, Callable[[EngineSettings], Probe]] = {
    "postgres": lambda e: PostgresProbe(e.postgres.url),
    "questdb": lambda e: QuestDBProbe(e.questdb.pg_url),
    "kafka": lambda e: KafkaProbe(e.kafka.bootstrap_servers),
    "mqtt": lambda e: MqttProbe(e.mqtt.url),
    "redis": lambda e: RedisProbe(e.redis.url),
}


def build_probes(engines: EngineSettings, names: Sequence[str]) -> list[Probe]:
    """One probe per name in ``names`` (any of ``ENGINE_NAMES``), in that order."""
    unknown = [name for name in names if name not in _BUILDERS]
    if unknown:
        raise ValueError(f"no probe for {', '.join(unknown)}; known: {', '.join(ENGINE_NAMES)}")
    return [_BUILDERS[name](engines) for name in names]
