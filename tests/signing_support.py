"""Test helpers for the signing keys: a private PostgreSQL database with Nexus's schema
up to the signing keys, a SoftHSM2 token in a temporary directory, and an independent
look at that token from another process (PKCS#11 logins are per process)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pkcs11
import psycopg
from datapunk_shared.db import apply_migrations, load_migrations
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


@contextlib.asynccontextmanager
async def nexus_database(server_url: str) -> AsyncIterator[str]:
    """A new database on the server of ``server_url`` with Nexus's migrations 1-2
    (schema, signing keys) applied; dropped afterwards. Yields its URL."""
    name = f"dp_signing_{uuid.uuid4().hex[:10]}"
    admin = make_conninfo(server_url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    try:
        migrations = [m for m in load_migrations("datapunk_nexus.migrations") if m.version <= 2]
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await apply_migrations(conn, "nexus", migrations)
        yield url
    finally:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
            )
            await conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def allow_connections(database_url: str, allowed: bool) -> None:
    """Let clients connect to the database of ``database_url``, or refuse them and end
    the connections it has (PostgreSQL is then "down" for it)."""
    name = conninfo_to_dict(database_url)["dbname"]
    admin = make_conninfo(database_url, dbname="postgres")
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(str(name)), sql.SQL("true" if allowed else "false")
            )
        )
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


async def open_pool(url: str) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True, timeout=10)
    return pool


@contextlib.contextmanager
def softhsm_token(directory: Path, *, label: str, pin: str, so_pin: str) -> Iterator[Path]:
    """A SoftHSM2 token labelled ``label`` in ``directory``, made the one this process's
    SoftHSM2 library uses (SOFTHSM2_CONF, re-read on re-initialisation). Yields the
    configuration file."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [
            *("softhsm2-util", "--init-token", "--free", "--label", label),
            *("--pin", pin, "--so-pin", so_pin),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pkcs11.lib(SOFTHSM_MODULE).reinitialize()
    try:
        yield conf
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


_INSPECT = """
import json, sys, pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
args = json.load(sys.stdin)
token = pkcs11.lib(args["module"]).get_token(token_label=args["label"])
found = []
with token.open(user_pin=args["pin"]) as session:
    for obj in session.get_objects({Attribute.ID: bytes.fromhex(args["key_id"])}):
        item = {"class": obj[Attribute.CLASS].name, "label": obj[Attribute.LABEL]}
        if obj[Attribute.CLASS] == ObjectClass.PRIVATE_KEY:
            for name in ("EXTRACTABLE", "SENSITIVE", "LOCAL", "NEVER_EXTRACTABLE",
                         "ALWAYS_SENSITIVE", "PRIVATE", "TOKEN", "SIGN"):
                item[name] = bool(obj[getattr(Attribute, name)])
            try:
                obj[Attribute.VALUE]
                item["value_readable"] = True
            except AttributeSensitive:
                item["value_readable"] = False
        found.append(item)
print(json.dumps(found))
"""


def inspect_key(conf: Path, *, label: str, pin: str, key_id: str) -> list[dict[str, object]]:
    """The objects with CKA_ID ``key_id`` on the token, as another process logged in
    with ``pin`` sees them, with the private key's protection attributes and whether
    its private value (CKA_VALUE) can be read."""
    request = {"module": SOFTHSM_MODULE, "label": label, "pin": pin, "key_id": key_id}
    done = subprocess.run(
        [sys.executable, "-c", _INSPECT],
        input=json.dumps(request),
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found: list[dict[str, object]] = json.loads(done.stdout)
    return found
