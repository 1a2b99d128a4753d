"""A signing key deleted in Nexus stops working at a service port at once, not when the
service's key cache and remembered identities run out (``datapunk_shared.key_events``).

Real processes on free ports: a Nexus on a private database signing with a key of this
test (so its tokens can be crafted here, as Nexus would mint its service tokens), and a
Lake trusting that Nexus the way a deployed one does (its JWKS over HTTP). The Lake keeps
keys for 10 minutes and refetches for an unknown ``kid`` at most every 10 minutes, so
only the announcement can explain a refusal within seconds. Redis is the stack's (with a
channel of the test's own), or one started here to be stopped and started again."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from datapunk.lake.v1 import vectors_pb2, vectors_pb2_grpc
from datapunk.nexus.v1 import auth_pb2, auth_pb2_grpc
from datapunk_nexus.identity.signing import SigningKeyRing, SoftwareKeys, SoftwareSigner
from datapunk_shared.auth.interceptor import ON_BEHALF_KEY, encode_on_behalf
from datapunk_shared.config import Settings, load_settings
from datapunk_shared.errors import NotFound
from datapunk_shared.key_events import KeyEventPublisher, KeyEventSubscriber
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.secrets import FileSecretProvider
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from tests.auth_support import issuer, tenant_caller
from tests.signing_support import nexus_database, open_pool
from tests.support import (
    RunningService,
    engines_env,
    free_port,
    private_database,
    private_redis_server,
    run_service,
    wait_until,
)
from tests.token_kit import b64, b64json

# The refusal must come far below the Lake's key cache lifetime (600 s).
PROMPTLY = 2.0
LONG_CACHE = {
    "DATAPUNK_AUTH__JWKS__MIN_TTL": "600",
    "DATAPUNK_AUTH__JWKS__DEFAULT_TTL": "600",
    "DATAPUNK_AUTH__JWKS__REFETCH_INTERVAL": "600",
}


# --- the publisher and the subscriber on the stack's Redis ---------------------------------


async def test_a_published_change_reaches_every_subscriber(settings: Settings) -> None:
    channel = f"datapunk:test:keys:{uuid.uuid4().hex}"
    heard: list[list[tuple[str | None, frozenset[str]]]] = [[], []]
    subscribers = []
    for log in heard:

        async def on_change(issuer_: str | None, removed: frozenset[str], log: Any = log) -> None:
            log.append((issuer_, removed))

        redis = Redis.from_url(settings.engines.redis.url, socket_connect_timeout=2)
        subscribers.append(KeyEventSubscriber(redis, channel, on_change, min_interval=0.05))
    publisher = KeyEventPublisher(
        Redis.from_url(settings.engines.redis.url), channel, issuer="https://nexus.test"
    )
    try:
        for subscriber in subscribers:
            subscriber.start()
            assert await subscriber.wait_subscribed(10)
        assert await publisher.publish("deleted", ["k1"])

        def delivered() -> bool:
            return all(("https://nexus.test", frozenset({"k1"})) in log for log in heard)

        for _ in range(100):
            if delivered():
                break
            await asyncio.sleep(0.05)
        assert delivered()
        # Each first heard its own subscription (an unknown change: refresh what is held).
        assert all(log[0] == (None, frozenset()) for log in heard)
    finally:
        for subscriber in subscribers:
            await subscriber.stop()
        await publisher.aclose()


async def test_a_publication_without_redis_fails_quickly_and_quietly() -> None:
    unreachable = Redis.from_url(
        f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5, socket_timeout=0.5
    )
    publisher = KeyEventPublisher(unreachable, "c", issuer="https://nexus.test", timeout=0.5)
    started = time.monotonic()
    assert not await publisher.publish("deleted", ["k1"])
    assert time.monotonic() - started < 2
    await publisher.aclose()


async def test_the_key_ring_announces_each_committed_change(
    settings: Settings, tmp_path: Path
) -> None:
    """Rotation (nothing removed), early retirement, deletion and pruning, each heard
    with the key ids whose tokens must stop working; a change that fails announces
    nothing."""
    channel = f"datapunk:test:keys:{uuid.uuid4().hex}"
    listener = Redis.from_url(settings.engines.redis.url)
    (tmp_path / "nexus").mkdir(mode=0o700)
    secrets_ = FileSecretProvider(tmp_path)
    async with nexus_database(settings.engines.postgres.url) as url, listener.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        confirmed = await pubsub.get_message(timeout=5)
        assert confirmed is not None
        assert confirmed["type"] == "subscribe"

        async def heard() -> tuple[str, list[str]]:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert message is not None, "nothing announced"
            document = json.loads(message["data"])
            assert document["issuer"] == "https://nexus.test"
            return document["change"], document["removed"]

        pool = await open_pool(url)
        events = KeyEventPublisher(
            Redis.from_url(settings.engines.redis.url), channel, issuer="https://nexus.test"
        )
        ring = SigningKeyRing(
            pool, SoftwareKeys(secrets_, "nexus/signing-key"), overlap=3600.0, events=events
        )
        try:
            first = await ring.start()
            assert await heard() == ("rotated", [])
            second = await ring.rotate()
            assert await heard() == ("rotated", [])
            await ring.retire(first.kid)
            assert await heard() == ("retired", [first.kid])
            await ring.delete(first.kid)
            assert await heard() == ("deleted", [first.kid])
            await ring.rotate()
            assert await heard() == ("rotated", [])
            async with pool.connection() as conn:  # the overlap of the second key ends
                await conn.execute(
                    "UPDATE nexus.signing_keys SET publish_until = now() WHERE kid = %s",
                    (second.kid,),
                )
            assert await ring.prune() == [second.kid]
            assert await heard() == ("deleted", [second.kid])
            assert await ring.prune() == []
            with pytest.raises(NotFound):
                await ring.delete(first.kid)
            assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5) is None
        finally:
            await ring.aclose()
            await pool.close()
    await listener.aclose()


# --- a real Nexus and a real Lake ----------------------------------------------------------


@dataclass
class Platform:
    nexus: RunningService
    lake: RunningService
    rest: str
    entry: str
    signer: SoftwareSigner
    channel: str
    redis_url: str
    other: RunningService | None = None
    """A second Nexus on the same database, when one was started."""
    other_rest: str = ""
    """Its REST edge."""

    def client_token(self) -> str:
        """A client's access token for Nexus's edges, signed with the key Nexus started
        with (as its token endpoint would issue it), for a client with no role."""
        now = int(time.time())
        claims = {
            "iss": self.rest,
            "sub": "client:keytest",
            "aud": "datapunk",
            "jti": secrets.token_urlsafe(12),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "client_id": "keytest",
            "datapunk_tenant": "default",
        }
        return self._signed(claims)

    def other_edge_answers(self, token: str) -> str:
        """The reason the second Nexus's REST edge refuses an administrator's call with
        ``token``: PERMISSION_DENIED after it authenticated the caller (the edge decides
        that itself; the call is never forwarded, so this Nexus signs nothing), or why it
        did not."""
        answer = httpx.get(
            self.other_rest + "/v1/nexus/api-keys",
            headers={"authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code in (401, 403), answer.text
        details = answer.json()["details"]
        info = next(d for d in details if d["@type"].endswith("google.rpc.ErrorInfo"))
        reason: str = info["reason"]
        return reason

    def _signed(self, claims: Mapping[str, Any]) -> str:
        """An access token (``typ: at+jwt``) of ``claims``, signed with the key Nexus
        started with."""
        header = {"alg": "ES256", "typ": "at+jwt", "kid": self.signer.kid}
        signing_input = f"{b64json(header)}.{b64json(claims)}"
        return f"{signing_input}.{b64(self.signer.sign(signing_input.encode()))}"

    def service_token(self) -> str:
        """A Nexus service token for the Lake, signed with the key Nexus started with."""
        now = int(time.time())
        claims = {
            "iss": self.rest,
            "sub": "service:nexus",
            "aud": "datapunk:lake",
            "jti": secrets.token_urlsafe(12),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        return self._signed(claims)

    def lake_answers(self, token: str) -> str:
        """``OK`` when the Lake serves a call with ``token``, else the refusal's reason."""
        metadata = (
            ("authorization", f"Bearer {token}"),
            (ON_BEHALF_KEY, encode_on_behalf(tenant_caller("default"))),
        )
        with grpc.insecure_channel(self.lake.address) as channel:
            stub = vectors_pb2_grpc.VectorServiceStub(channel)
            try:
                stub.ListCollections(
                    vectors_pb2.ListCollectionsRequest(), metadata=metadata, timeout=10
                )
            except grpc.RpcError as error:
                refused: Any = error  # also a grpc.Call: code, details, trailing metadata
            else:
                return "OK"
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()
        assert token not in repr((refused.details(), refused.trailing_metadata()))
        reason: str = error_from_rpc_error(refused).reason
        return reason

    def rotate(self) -> str:
        with grpc.insecure_channel(self.entry) as channel:
            rotated = auth_pb2_grpc.AuthServiceStub(channel).RotateSigningKey(
                auth_pb2.RotateSigningKeyRequest(), metadata=_admin(), timeout=15
            )
        kid: str = rotated.key.kid
        return kid

    def delete(self, kid: str) -> None:
        with grpc.insecure_channel(self.entry) as channel:
            auth_pb2_grpc.AuthServiceStub(channel).DeleteSigningKey(
                auth_pb2.DeleteSigningKeyRequest(name=f"signingKeys/{kid}"),
                metadata=_admin(),
                timeout=15,
            )

    def listeners(self) -> int:
        """How many processes listen on the channel now."""
        client = SyncRedis.from_url(self.redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            counts = client.pubsub_numsub(self.channel)
        except Exception:
            return 0
        finally:
            client.close()
        return int(counts[0][1]) if counts else 0


def _admin() -> tuple[tuple[str, str], ...]:
    return (("x-api-key", issuer().admin_key),)


@contextmanager
def _platform(tmp: Path, redis_url: str, *, second_nexus: bool = False) -> Iterator[Platform]:
    settings = load_settings()
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    rest_port, entry_port = free_port(), free_port()
    rest = f"http://127.0.0.1:{rest_port}"
    channel = f"datapunk:test:keys:{uuid.uuid4().hex}"
    trust: Mapping[str, str] = {
        **engines_env(settings),
        "DATAPUNK_ENGINES__REDIS__URL": redis_url,
        "DATAPUNK_AUTH__ISSUER": rest,
        "DATAPUNK_AUTH__JWKS_URL": f"{rest}/.well-known/jwks.json",
        "DATAPUNK_AUTH__KEY_EVENTS_CHANNEL": channel,
    }
    with ExitStack() as running:
        database = running.enter_context(
            private_database(settings.engines.postgres.url, "dp_keyevents")
        )
        nexus_env = {
            **trust,
            "DATAPUNK_ENGINES__POSTGRES__URL": database,
            "DATAPUNK_SECRET_NEXUS__SIGNING_KEY": pem,
            "DATAPUNK_NEXUS__REST__PORT": str(rest_port),
            "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(entry_port),
            # Nothing of Nexus but the key announcements needs Redis here.
            "DATAPUNK_NEXUS__CACHE__BACKEND": "memory",
            "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
            "DATAPUNK_NEXUS__AUTH__POLICY__PLATFORM_TENANT": "default",
        }
        nexus = running.enter_context(run_service("nexus", tmp, nexus_env))
        _wait_ready(rest)
        other, other_rest = None, ""
        if second_nexus:
            # Another instance of the same deployment: same database, keys and channel.
            # It trusts its view of the key ring for 10 minutes, so only the announcement
            # can explain a refusal within seconds.
            other_port = free_port()
            other_rest = f"http://127.0.0.1:{other_port}"
            other = running.enter_context(
                run_service(
                    "nexus",
                    tmp,
                    {
                        **nexus_env,
                        "DATAPUNK_NEXUS__REST__PORT": str(other_port),
                        "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(free_port()),
                        "DATAPUNK_NEXUS__AUTH__OAUTH__SIGNING_KEYS_MAX_AGE": "600",
                    },
                )
            )
            _wait_ready(other_rest)
        lake = running.enter_context(run_service("lake", tmp, {**trust, **LONG_CACHE}))
        platform = Platform(
            nexus,
            lake,
            rest,
            f"127.0.0.1:{entry_port}",
            SoftwareSigner(private),
            channel,
            redis_url,
            other,
            other_rest,
        )
        # Every Nexus's service port and the Lake listen.
        wait_until(lambda: platform.listeners() >= (3 if second_nexus else 2), timeout=20)
        yield platform


def _wait_ready(rest: str) -> None:
    """Until the administrator's key works (migrations applied, keys loaded)."""

    def ready() -> bool:
        try:
            answer = httpx.get(
                rest + "/v1/nexus/api-keys", headers={"x-api-key": issuer().admin_key}, timeout=5
            )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    wait_until(ready, timeout=60, interval=0.3)


def _refused_within(platform: Platform, token: str, seconds: float) -> float:
    """Seconds until the Lake refuses ``token`` (UNKNOWN_KEY); fails past ``seconds``."""
    started = time.monotonic()
    while True:
        answer = platform.lake_answers(token)
        elapsed = time.monotonic() - started
        if answer != "OK":
            assert answer == "UNKNOWN_KEY"
            return elapsed
        assert elapsed < seconds, f"the Lake still accepts the token after {elapsed:.1f} s"
        time.sleep(0.05)


def test_a_deleted_key_is_refused_by_the_lake_at_once(settings: Settings, tmp_path: Path) -> None:
    with _platform(tmp_path, settings.engines.redis.url) as platform:
        token = platform.service_token()
        assert platform.lake_answers(token) == "OK"  # verified, and now remembered
        new_kid = platform.rotate()
        assert new_kid != platform.signer.kid
        # The overlap: the retired key still verifies what it signed.
        assert platform.lake_answers(token) == "OK"
        platform.delete(platform.signer.kid)
        elapsed = _refused_within(platform, token, PROMPTLY)
        # The same token, byte for byte, stays refused, and so does a new one of that key.
        assert platform.lake_answers(token) == "UNKNOWN_KEY"
        assert platform.lake_answers(platform.service_token()) == "UNKNOWN_KEY"
        assert "signing key change heard" in platform.lake.log()
        print(f"refused {elapsed:.3f} s after DeleteSigningKey returned")


def test_a_key_deleted_through_one_nexus_is_refused_by_anothers_edge_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """Nexus instances share the key ring in PostgreSQL; each edge verifies Nexus's own
    tokens against its view of it. A key deleted through one instance is refused by the
    other's edge as soon as the announcement arrives, not when that view is reread."""
    with _platform(tmp_path, settings.engines.redis.url, second_nexus=True) as platform:
        token = platform.client_token()
        denied = "PERMISSION_DENIED"
        assert platform.other_edge_answers(token) == denied  # its key set read, and kept
        platform.rotate()
        assert platform.other_edge_answers(token) == denied  # the overlap
        platform.delete(platform.signer.kid)
        started = time.monotonic()
        while (answer := platform.other_edge_answers(token)) == denied:
            elapsed = time.monotonic() - started
            assert elapsed < PROMPTLY, f"the other edge still accepts it after {elapsed:.1f} s"
            time.sleep(0.05)
        assert answer == "UNKNOWN_KEY"
        assert platform.other_edge_answers(platform.client_token()) == "UNKNOWN_KEY"


def _redis_answers(url: str) -> bool:
    client = SyncRedis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def test_the_lake_serves_through_a_redis_outage_and_catches_up_after_it(
    tmp_path: Path,
) -> None:
    """Without Redis the Lake goes on serving (its key cache bounds a deletion, as before
    announcements existed); once Redis is back it listens again and refreshes, so a key
    deleted during the outage is refused then."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with ExitStack() as running:
        redis = running.enter_context(private_redis_server(port))
        wait_until(lambda: _redis_answers(url), timeout=10)
        platform = running.enter_context(_platform(tmp_path, url))
        token = platform.service_token()
        assert platform.lake_answers(token) == "OK"
        platform.rotate()

        redis.terminate()
        redis.wait(10)
        wait_until(lambda: "signing key changes not heard" in platform.lake.log(), timeout=10)
        assert platform.lake_answers(token) == "OK"
        assert platform.lake_answers(platform.service_token()) == "OK"  # verified now
        started = time.monotonic()
        platform.delete(platform.signer.kid)  # committed; its announcement is lost
        assert time.monotonic() - started < 5
        wait_until(lambda: "signing key change not announced" in platform.nexus.log(), 10)
        assert platform.lake_answers(token) == "OK"  # the cache bounds it, as before
        assert platform.lake.process.poll() is None
        assert platform.nexus.process.poll() is None

        running.enter_context(private_redis_server(port))
        wait_until(lambda: platform.listeners() >= 2, timeout=40)
        # Listening again counts as a change: the key set is fetched and the memory
        # emptied, so the key deleted meanwhile is refused now.
        _refused_within(platform, token, PROMPTLY + 3)
