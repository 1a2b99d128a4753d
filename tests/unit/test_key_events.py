"""Signing-key changes reaching a verifier (``datapunk_shared.key_events``), without
engines: the channel message and its limits, the JWKS cache dropping removed keys and
fetching again at once (past ``min_ttl`` and the refetch interval, and past a fetch that
started before the change), the service authenticator forgetting what it remembered,
and the subscriber merging and spacing the changes it applies. The same over the real
Redis and real processes: tests/integration/test_key_events.py."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import httpx
import pytest
from datapunk_shared.auth.claims import datapunk_claims
from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.interceptor import CallerAuthenticator
from datapunk_shared.auth.jwks import JwksCachePolicy, JwksKeySource
from datapunk_shared.auth.tokens import IssuerPolicy, TokenVerifier
from datapunk_shared.auth.verifiers import IssuerKeys
from datapunk_shared.config import Settings
from datapunk_shared.errors import Unauthenticated
from datapunk_shared.key_events import KeyChange, KeyEventSubscriber
from datapunk_shared.rpc.server import ServiceContext
from redis.asyncio import Redis

from tests.token_kit import claims, ec_key, header, jwks, sign
from tests.unit.test_jwks import ISSUER, JWKS_URL, Clock, Provider, reason_of

# Long key lifetimes and refetch interval: only an announced change can explain a fetch.
POLICY = JwksCachePolicy(
    min_ttl=600, default_ttl=600, max_ttl=3600, max_stale=600, refetch_interval=600
)


def keys_of(provider: Provider, clock: Clock) -> JwksKeySource:
    http = httpx.AsyncClient(transport=httpx.MockTransport(provider))
    return JwksKeySource({ISSUER: JWKS_URL}, policy=POLICY, http=http, clock=clock)


# -- the message -------------------------------------------------------------------------


def test_a_change_survives_the_channel() -> None:
    change = KeyChange("https://nexus.test", "deleted", ("k1", "k-2"))
    assert KeyChange.decode(change.encode()) == change
    assert KeyChange.decode(change.encode().encode()) == change


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("not json", "Expecting value"),
        ("[]", "not an object"),
        ('{"change": "deleted", "removed": []}', "must be strings"),
        ('{"issuer": "", "change": "deleted", "removed": []}', "must be strings"),
        ('{"issuer": "i", "change": 1, "removed": []}', "must be strings"),
        ('{"issuer": "i", "change": "deleted", "removed": "k1"}', "list of key ids"),
        ('{"issuer": "i", "change": "deleted", "removed": ["../../dev/null"]}', "key ids"),
        ('{"issuer": "i", "change": "deleted", "removed": [1]}', "list of key ids"),
        (json.dumps({"issuer": "i", "change": "x", "removed": ["k"] * 257}), "key ids"),
        (json.dumps({"issuer": "i" * 20000, "change": "x", "removed": []}), "too large"),
    ],
)
def test_a_malformed_message_is_refused(data: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        KeyChange.decode(data)


# -- the JWKS cache ----------------------------------------------------------------------


async def test_a_removed_key_is_dropped_and_the_set_fetched_again_at_once() -> None:
    provider, clock = Provider(ISSUER, ec_key("k1"), ec_key("k2")), Clock()
    keys = keys_of(provider, clock)
    await keys.key(ISSUER, "k1")
    provider.keys = [provider.keys[1], ec_key("k3")]  # k1 deleted, k3 new
    await keys.keys_changed(ISSUER, {"k1"})
    assert provider.count("/keys") == 2  # no time passed: min_ttl and the interval ignored
    assert await reason_of(lambda: keys.key(ISSUER, "k1")) == "UNKNOWN_KEY"
    assert (await keys.key(ISSUER, "k3")).kid == "k3"
    assert provider.count("/keys") == 2


async def test_with_the_issuer_unreachable_the_removed_key_is_still_refused() -> None:
    provider, clock = Provider(ISSUER, ec_key("k1"), ec_key("k2")), Clock()
    keys = keys_of(provider, clock)
    await keys.key(ISSUER, "k1")
    provider.up = False
    await keys.keys_changed(ISSUER, {"k1"})
    assert await reason_of(lambda: keys.key(ISSUER, "k1")) == "UNKNOWN_KEY"
    assert (await keys.key(ISSUER, "k2")).kid == "k2"  # the others keep working


async def test_a_set_fetched_after_the_change_is_the_issuers_word() -> None:
    """A message naming a key the issuer still publishes (another installation's change
    on a shared channel, or a stray message) drops it only until the fetch it triggers
    has answered: the issuer's own set decides."""
    provider, clock = Provider(ISSUER, ec_key("k1"), ec_key("k2")), Clock()
    keys = keys_of(provider, clock)
    await keys.key(ISSUER, "k1")
    await keys.keys_changed(ISSUER, {"k1"})
    assert provider.count("/keys") == 2
    assert (await keys.key(ISSUER, "k1")).kid == "k1"


class SlowProvider(Provider):
    """Answers, after ``delay``, with the key set it held when the request arrived: the
    slow answer of a set that changed meanwhile."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        body = json.dumps(jwks(*self.keys)).encode()
        await asyncio.sleep(self.delay)
        return httpx.Response(200, content=body, headers={"cache-control": "max-age=600"})


async def test_a_fetch_that_started_before_the_change_does_not_bring_the_key_back() -> None:
    provider, clock = SlowProvider(ISSUER, ec_key("k1")), Clock()
    keys = keys_of(provider, clock)
    await keys.key(ISSUER, "k1")
    clock.now += POLICY.refetch_interval
    provider.delay = 0.1
    before = asyncio.create_task(reason_of(lambda: keys.key(ISSUER, "k-new")))
    await asyncio.sleep(0.02)  # that fetch is in flight and will answer the old set
    provider.keys = [ec_key("k-new")]
    await keys.keys_changed(ISSUER, {"k1"})
    assert await before == "UNKNOWN_KEY"  # answered from the old set
    assert provider.count("/keys") == 3
    assert await reason_of(lambda: keys.key(ISSUER, "k1")) == "UNKNOWN_KEY"
    assert (await keys.key(ISSUER, "k-new")).kid == "k-new"


async def test_an_unknown_change_refetches_only_the_sets_already_held() -> None:
    provider, clock = Provider(ISSUER, ec_key("k1")), Clock()
    keys = keys_of(provider, clock)
    await keys.keys_changed(None, ())
    assert provider.requests == []  # nothing held, nothing to refresh (nor to block)
    await keys.key(ISSUER, "k1")
    await keys.keys_changed(None, ())
    await keys.keys_changed("https://someone-else.test", {"k1"})
    assert provider.count("/keys") == 2
    assert (await keys.key(ISSUER, "k1")).kid == "k1"


# -- the service's authenticator ---------------------------------------------------------


def nexus_verifier(keys: JwksKeySource) -> TokenVerifier:
    policy = IssuerPolicy(
        issuer=ISSUER,
        audiences=frozenset({"datapunk:lake"}),
        algorithms=frozenset({"ES256"}),
        mapper=datapunk_claims,
    )
    return TokenVerifier([policy], IssuerKeys({ISSUER: keys}))


async def test_a_remembered_token_of_a_deleted_key_is_refused_after_the_change() -> None:
    old, new = ec_key("k1"), ec_key("k2")
    provider, clock = Provider(ISSUER, old, new), Clock()
    authenticator = CallerAuthenticator(nexus_verifier(keys_of(provider, clock)))
    body = claims(iss=ISSUER, sub="service:nexus", aud="datapunk:lake")
    headers = [("authorization", "Bearer " + sign(old, body, header(kid="k1")))]
    assert (await authenticator.authenticate(headers)).subject == "service:nexus"
    provider.keys = [new]
    # Remembered, the token passes although its key is gone from the issuer...
    assert (await authenticator.authenticate(headers)).subject == "service:nexus"
    await authenticator.keys_changed(ISSUER, {"k1"})
    # ...until the change is announced: then at once, remembered or not.
    with pytest.raises(Unauthenticated) as refused:
        await authenticator.authenticate(headers)
    assert refused.value.reason == "UNKNOWN_KEY"
    other = [("authorization", "Bearer " + sign(new, body, header(kid="k2")))]
    assert (await authenticator.authenticate(other)).subject == "service:nexus"


class SlowTable:
    """Verifies one token, waiting for ``release`` first (a verification in flight)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def verify(self, token: str) -> Identity:
        self.calls += 1
        await self.release.wait()
        return Identity(
            subject="service:nexus",
            tenant="",
            kind="service",
            issuer=ISSUER,
            expires_at=time.time() + 300,
        )


async def test_a_verification_that_spans_a_change_is_not_remembered() -> None:
    table = SlowTable()
    authenticator = CallerAuthenticator(table)
    headers = [("authorization", "Bearer t")]
    running = asyncio.create_task(authenticator.authenticate(headers))
    await asyncio.sleep(0)
    await authenticator.keys_changed(None, ())
    table.release.set()
    await running
    await authenticator.authenticate(headers)
    assert table.calls == 2  # verified again: the first answer came from the old keys
    await authenticator.authenticate(headers)
    assert table.calls == 2  # this one was remembered


# -- the subscriber ----------------------------------------------------------------------


def message(change: KeyChange | str) -> bytes:
    """A message's data as the listener hands it over."""
    data = change if isinstance(change, str) else change.encode()
    return data.encode()


async def test_changes_are_merged_and_spaced_but_never_dropped() -> None:
    applied: list[tuple[float, str | None, frozenset[str]]] = []

    async def on_change(issuer: str | None, removed: frozenset[str]) -> None:
        applied.append((time.monotonic(), issuer, removed))

    # Nothing listens at this address: the subscriber logs, retries and keeps applying
    # what it is handed, the way it does while Redis is down.
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    subscriber = KeyEventSubscriber(redis, "c", on_change, min_interval=0.3, retry_initial=0.05)
    subscriber.start()
    try:
        subscriber.heard(message(KeyChange(ISSUER, "deleted", ("k1",))))
        await asyncio.sleep(0.05)
        subscriber.heard(message(KeyChange(ISSUER, "deleted", ("k2",))))
        subscriber.heard(message(KeyChange(ISSUER, "retired", ("k3",))))
        subscriber.heard(message("garbage"))
        await asyncio.sleep(0.6)
        assert not subscriber.subscribed
    finally:
        await subscriber.stop()
    assert [(issuer, removed) for _, issuer, removed in applied] == [
        (ISSUER, frozenset({"k1"})),
        (ISSUER, frozenset({"k2", "k3"})),
        (None, frozenset()),  # the malformed message: every issuer, refreshed
    ]
    assert applied[1][0] - applied[0][0] >= 0.29


async def test_a_failing_change_does_not_stop_the_subscriber() -> None:
    seen: list[str | None] = []

    async def on_change(issuer: str | None, removed: frozenset[str]) -> None:
        seen.append(issuer)
        if len(seen) == 1:
            raise RuntimeError("the key source broke")

    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    subscriber = KeyEventSubscriber(redis, "c", on_change, min_interval=0.01)
    subscriber.start()
    try:
        subscriber.heard(message(KeyChange("a", "deleted", ())))
        await asyncio.sleep(0.1)
        subscriber.heard(message(KeyChange("b", "deleted", ())))
        await asyncio.sleep(0.1)
    finally:
        await subscriber.stop()
    assert seen == ["a", "b"]


async def test_every_key_change_handler_hears_a_change_when_one_fails() -> None:
    """A service's handlers (its port's authenticator, Nexus's edges and key ring) each
    hear every change: one failing does not keep the ones after it from hearing it."""
    settings = Settings()
    context = ServiceContext(
        settings=settings, service_settings=settings.lake, server=grpc.aio.server()
    )
    heard: list[tuple[str, str | None, frozenset[str]]] = []

    async def failing(issuer: str | None, removed: frozenset[str]) -> None:
        heard.append(("failing", issuer, removed))
        raise RuntimeError("this handler breaks")

    async def listening(issuer: str | None, removed: frozenset[str]) -> None:
        heard.append(("listening", issuer, removed))

    context.key_change_handlers += [failing, listening]
    await context.keys_changed(ISSUER, frozenset({"k1"}))
    await context.keys_changed(None, frozenset())
    assert heard == [
        ("failing", ISSUER, frozenset({"k1"})),
        ("listening", ISSUER, frozenset({"k1"})),
        ("failing", None, frozenset()),
        ("listening", None, frozenset()),
    ]
