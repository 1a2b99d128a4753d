"""The five engines the local stack runs, one class each.

An engine knows its ports, how to prepare its directory (once: initdb, a Kafka
storage format; every start: its config file, so edited settings apply), the command
that runs it, and how to tell it is ready: a real round-trip from
``datapunk_shared.probes``, plus whatever the platform needs inside it first (the
``datapunk`` database with PostGIS).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import stat
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import psycopg
from datapunk_shared.config import Settings
from datapunk_shared.probes import Probe, build_probes, redact_url
from psycopg import sql

from datapunk_stack.layout import Layout, StackError
from datapunk_stack.process import Child, RunAs, run_once

__all__ = ["Engine", "Kafka", "Mosquitto", "Postgres", "QuestDB", "Redis", "all_engines"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    label: str
    address: str


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _find_binary(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra_dirs))
    if found is None:
        raise StackError(f"{name} is not installed: run scripts/install-engines.sh")
    return found


class Engine(ABC):
    """One engine of the stack. ``managed = false`` engines are only waited for."""

    name: str

    def __init__(self, settings: Settings, layout: Layout) -> None:
        self.settings = settings
        self.layout = layout
        self.dir = layout.engine_dir(self.name)

    @property
    @abstractmethod
    def managed(self) -> bool: ...

    @abstractmethod
    def endpoints(self) -> list[Endpoint]:
        """What to print when the stack is ready (passwords removed)."""

    @abstractmethod
    def ports(self) -> list[tuple[str, int]]:
        """Every (host, port) the engine listens on; checked free before any start."""

    def probe(self) -> Probe:
        """The round-trip that says the engine works (also used by ``status``): the
        same probe the services' health checks build for this engine's settings."""
        return build_probes(self.settings.engines, [self.name])[0]

    def readiness_probe(self) -> Probe:
        """What ``up`` waits for; by default the status probe."""
        return self.probe()

    def prepare(self) -> None:
        """Creates the engine's directory and config; initialises its storage once."""
        self.dir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def child(self) -> Child:
        """The long-running process."""

    def _child(self, argv: list[str], **kwargs: object) -> Child:
        return Child(
            name=self.name,
            argv=argv,
            log=self.layout.log(self.name),
            cwd=self.dir,
            **kwargs,  # type: ignore[arg-type]
        )


# --- PostgreSQL + PostGIS ----------------------------------------------------------

_PG_BIN = "/usr/lib/postgresql/15/bin"


class Postgres(Engine):
    """PostgreSQL 15 with PostGIS, on a private port and a socket directory inside
    the data directory. As root it runs as the ``postgres`` user, since PostgreSQL
    refuses to run as root."""

    name = "postgres"

    def __init__(self, settings: Settings, layout: Layout) -> None:
        super().__init__(settings, layout)
        self.url = settings.engines.postgres.url
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432
        self.user = unquote(parts.username or "postgres")
        self.password = unquote(parts.password) if parts.password else None
        self.database = unquote(parts.path.lstrip("/")) or "datapunk"
        self.pgdata = self.dir / "data"
        self.socket_dir = self.dir / "run"
        self.run_as = RunAs("postgres") if os.geteuid() == 0 else None

    @property
    def managed(self) -> bool:
        return self.settings.engines.postgres.managed

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("postgres", redact_url(self.url))]

    def ports(self) -> list[tuple[str, int]]:
        return [(self.host, self.port)]

    def readiness_probe(self) -> Probe:
        if not self.managed:
            return self.probe()
        return _PostgresSetup(self)

    def prepare(self) -> None:
        super().prepare()
        self.socket_dir.mkdir(exist_ok=True)
        if self.run_as is not None:
            self._check_reachable_by_postgres_user()
            self.run_as.chown(self.dir, self.socket_dir)
        if (self.pgdata / "PG_VERSION").exists():
            return  # initialised on an earlier start: keep the data
        if self.pgdata.exists():
            # PG_VERSION is the last thing initdb writes, so this is a failed initdb
            # with nothing worth keeping; initdb refuses a non-empty directory.
            shutil.rmtree(self.pgdata)
        argv = [
            _find_binary("initdb", _PG_BIN),
            "-D",
            str(self.pgdata),
            "-U",
            self.user,
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--auth-local=trust",
            "--no-instructions",
        ]
        pwfile = self.dir / "initdb.pw"
        if self.password is not None:
            pwfile.write_text(self.password)
            pwfile.chmod(0o600)
            if self.run_as is not None:
                self.run_as.chown(pwfile)
            argv += [f"--pwfile={pwfile}", "--auth-host=scram-sha-256"]
        else:
            # No password in the URL: a local development stack on loopback only.
            argv += ["--auth-host=trust"]
        try:
            code = run_once(argv, log=self.layout.log(self.name), cwd=self.dir, run_as=self.run_as)
        finally:
            pwfile.unlink(missing_ok=True)
        if code != 0:
            raise StackError(
                f"postgres: initdb failed (exit {code}); see {self.layout.log(self.name)}"
            )

    def _check_reachable_by_postgres_user(self) -> None:
        # The postgres user must be able to walk down to its directory; a private
        # parent (such as a 0700 temporary directory) would make initdb fail obscurely.
        for parent in reversed(self.dir.parents):
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                raise StackError(
                    f"postgres: runs as user 'postgres', which cannot enter {parent} "
                    f"(mode {stat.filemode(mode)}); run 'chmod o+x {parent}' or choose "
                    "another stack.data_dir"
                )

    def child(self) -> Child:
        return self._child(
            [
                _find_binary("postgres", _PG_BIN),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"unix_socket_directories={self.socket_dir}",
            ],
            # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client
            # to leave; SIGINT is the "fast" one that still checkpoints cleanly.
            stop_signal=signal.SIGINT,
            run_as=self.run_as,
        )

    def maintenance_url(self) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(SplitResult(parts.scheme, parts.netloc, "/postgres", parts.query, ""))


@dataclass(slots=True)
class _PostgresSetup:
    """Readiness for the managed PostgreSQL: creates the platform database and the
    PostGIS extension in it if missing (idempotent), then runs the real probe."""

    engine: Postgres
    name: str = "postgres"
    endpoint: str = ""

    def __post_init__(self) -> None:
        self.endpoint = redact_url(self.engine.url)

    async def check(self) -> None:
        db = self.engine.database
        async with await psycopg.AsyncConnection.connect(
            self.engine.maintenance_url(), autocommit=True
        ) as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db])
            if await cur.fetchone() is None:
                await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        async with await psycopg.AsyncConnection.connect(self.engine.url, autocommit=True) as conn:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        await self.engine.probe().check()


# --- QuestDB -------------------------------------------------------------------------


class QuestDB(Engine):
    """QuestDB from its Maven jar on Java 25. Its ports come from server.conf, which
    is rewritten on every start; the TCP/UDP line protocol listeners are off because
    the platform writes over ILP/HTTP, and they would otherwise take port 9009."""

    name = "questdb"

    def __init__(self, settings: Settings, layout: Layout) -> None:
        super().__init__(settings, layout)
        q = settings.engines.questdb
        self.http = _host_port(q.http_url, 9000)
        self.pg = _host_port(q.pg_url, 8812)
        self.min_http = (self.http[0], settings.stack.questdb_min_http_port)
        pg_parts = urlsplit(q.pg_url)
        self.pg_user = unquote(pg_parts.username or "admin")
        self.pg_password = unquote(pg_parts.password or "quest")

    @property
    def managed(self) -> bool:
        return self.settings.engines.questdb.managed

    def endpoints(self) -> list[Endpoint]:
        q = self.settings.engines.questdb
        return [
            Endpoint("questdb http/ilp", q.http_url),
            Endpoint("questdb pg wire", redact_url(q.pg_url)),
        ]

    def ports(self) -> list[tuple[str, int]]:
        return [self.http, self.pg, self.min_http]

    def jar(self) -> Path:
        jars = sorted(self.layout.engines_lib.glob("questdb-*.jar"))
        if not jars:
            raise StackError(
                f"questdb: no questdb-*.jar in {self.layout.engines_lib}; "
                "run scripts/install-engines.sh"
            )
        return jars[-1]

    def prepare(self) -> None:
        super().prepare()
        _check_java(self.layout)
        self.jar()
        conf = self.dir / "conf"
        conf.mkdir(exist_ok=True)
        lines = [
            "# Written by datapunk up on every start; edit datapunk.toml instead.",
            f"http.net.bind.to={self.http[0]}:{self.http[1]}",
            f"http.min.net.bind.to={self.min_http[0]}:{self.min_http[1]}",
            f"pg.net.bind.to={self.pg[0]}:{self.pg[1]}",
            f"pg.user={self.pg_user}",
            f"pg.password={self.pg_password}",
            "line.tcp.enabled=false",
            "line.udp.enabled=false",
            "telemetry.enabled=false",
        ]
        (conf / "server.conf").write_text("\n".join(lines) + "\n")
        (conf / "server.conf").chmod(0o600)

    def child(self) -> Child:
        return self._child(
            [
                str(self.layout.java),
                "-Xms128m",
                "-Xmx1g",
                "--enable-native-access=io.questdb",
                "-p",
                str(self.jar()),
                "-m",
                "io.questdb/io.questdb.ServerMain",
                "-d",
                str(self.dir),
            ]
        )


def _check_java(layout: Layout) -> None:
    if not layout.java.exists():
        raise StackError(
            f"Java 25 not found at {layout.java}; install it or set stack.java_home "
            "(scripts/install-engines.sh checks this)"
        )


# --- Kafka ---------------------------------------------------------------------------

_LOG4J2 = """\
# Written by datapunk up: Kafka logs to stdout, which the supervisor writes to logs/kafka.log.
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


class Kafka(Engine):
    """A single-node Apache Kafka 4 in KRaft mode (broker and controller in one
    process), with a small heap. Its storage is formatted once."""

    name = "kafka"

    def __init__(self, settings: Settings, layout: Layout) -> None:
        super().__init__(settings, layout)
        first = settings.engines.kafka.bootstrap_servers.split(",")[0].strip()
        self.broker = _host_port(first, 9092)
        self.controller = (self.broker[0], settings.stack.kafka_controller_port)
        self.log_dirs = self.dir / "data"

    @property
    def managed(self) -> bool:
        return self.settings.engines.kafka.managed

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("kafka", self.settings.engines.kafka.bootstrap_servers)]

    def ports(self) -> list[tuple[str, int]]:
        return [self.broker, self.controller]

    def classpath(self) -> str:
        jars = [p for p in sorted(self.layout.engines_lib.glob("*.jar")) if "questdb" not in p.name]
        if not any(p.name.startswith("kafka_2.13-") for p in jars):
            raise StackError(
                f"kafka: no kafka_2.13-*.jar in {self.layout.engines_lib}; "
                "run scripts/install-engines.sh"
            )
        return os.pathsep.join(str(p) for p in jars)

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            str(self.layout.java),
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            self.classpath(),
            main,
            *args,
        ]

    def prepare(self) -> None:
        super().prepare()
        _check_java(self.layout)
        host, port = self.broker
        chost, cport = self.controller
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{chost}:{cport}",
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{chost}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dirs),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            # One node: every internal topic can only have one replica.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        text = "# Written by datapunk up on every start.\n"
        text += "".join(f"{k}={v}\n" for k, v in props.items())
        (self.dir / "server.properties").write_text(text)
        (self.dir / "log4j2.properties").write_text(_LOG4J2)
        if (self.log_dirs / "meta.properties").exists():
            return  # formatted on an earlier start: keep the log
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        argv = self._java(
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            cluster_id,
            "-c",
            str(self.dir / "server.properties"),
        )
        code = run_once(argv, log=self.layout.log(self.name), cwd=self.dir)
        if code != 0:
            raise StackError(
                f"kafka: formatting the storage failed (exit {code}); "
                f"see {self.layout.log(self.name)}"
            )

    def child(self) -> Child:
        return self._child(self._java("kafka.Kafka", str(self.dir / "server.properties")))


# --- Mosquitto -----------------------------------------------------------------------


class Mosquitto(Engine):
    """The Mosquitto MQTT broker with persistence in the data directory."""

    name = "mqtt"

    def __init__(self, settings: Settings, layout: Layout) -> None:
        super().__init__(settings, layout)
        self.url = settings.engines.mqtt.url
        self.listener = _host_port(self.url, 1883)

    @property
    def managed(self) -> bool:
        return self.settings.engines.mqtt.managed

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("mqtt", redact_url(self.url))]

    def ports(self) -> list[tuple[str, int]]:
        return [self.listener]

    def prepare(self) -> None:
        super().prepare()
        host, port = self.listener
        lines = [
            "# Written by datapunk up on every start.",
            f"listener {port} {host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.dir}/",
            "log_dest stdout",
        ]
        if os.geteuid() == 0:
            # As root, Mosquitto would switch to the 'mosquitto' user, which cannot
            # write to a data directory root owns.
            lines.append("user root")
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def child(self) -> Child:
        binary = _find_binary("mosquitto", "/usr/sbin")
        return self._child([binary, "-c", str(self.dir / "mosquitto.conf")])


# --- Redis ---------------------------------------------------------------------------


class Redis(Engine):
    """Redis with the append-only file on, so acknowledged writes survive a restart."""

    name = "redis"

    def __init__(self, settings: Settings, layout: Layout) -> None:
        super().__init__(settings, layout)
        self.url = settings.engines.redis.url
        self.listener = _host_port(self.url, 6379)
        parts = urlsplit(self.url)
        self.password = unquote(parts.password) if parts.password else None

    @property
    def managed(self) -> bool:
        return self.settings.engines.redis.managed

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("redis", redact_url(self.url))]

    def ports(self) -> list[tuple[str, int]]:
        return [self.listener]

    def prepare(self) -> None:
        super().prepare()
        host, port = self.listener
        lines = [
            "# Written by datapunk up on every start.",
            f"bind {host}",
            f"port {port}",
            f"dir {self.dir}",
            "appendonly yes",
            "daemonize no",
        ]
        if self.password is not None:
            # In a 0600 file rather than on the command line, where ps would show it.
            lines.append(f"requirepass {self.password}")
        conf = self.dir / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)

    def child(self) -> Child:
        binary = _find_binary("redis-server", "/usr/sbin")
        return self._child([binary, str(self.dir / "redis.conf")])


def all_engines(settings: Settings, layout: Layout) -> Sequence[Engine]:
    """Every engine, in start order (stopped in reverse)."""
    return [cls(settings, layout) for cls in (Postgres, QuestDB, Kafka, Mosquitto, Redis)]
