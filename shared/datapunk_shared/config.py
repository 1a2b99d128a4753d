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
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from datapunk_shared.errors import ConfigError

__all__ = [
    "ApiKeySettings",
    "AuditSettings",
    "AuthSettings",
    "CacheRule",
    "CacheSettings",
    "ConcurrencyRule",
    "EngineSettings",
    "EnvoyServicesSettings",
    "GrpcEntrySettings",
    "JwksCacheSettings",
    "KafkaSettings",
    "LakeSettings",
    "LogSettings",
    "MqttSettings",
    "NexusAuthSettings",
    "NexusSettings",
    "OAuthSettings",
    "OidcProviderSettings",
    "OidcSettings",
    "PolicySettings",
    "PostgresSettings",
    "QuestDBSettings",
    "RateLimitRule",
    "RateLimitSettings",
    "RedisSettings",
    "RestEdgeSettings",
    "SecretName",
    "SecretsSettings",
    "ServiceSettings",
    "Settings",
    "SigningSettings",
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


class GrpcEntrySettings(_Strict):
    """Nexus's single gRPC entry: one address that forwards any method of any Datapunk
    service to the service that owns it (by package: ``datapunk.lake.*`` to the Lake)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 50050
    default_deadline: Seconds | None = 30.0
    """The deadline of a forwarded unary call whose client set none (streams get none)."""
    deadlines: dict[str, Seconds] = {}
    """Deadlines by full method (``/datapunk.lake.v1.VectorService/SearchPoints``) or by
    service (``datapunk.lake.v1.VectorService``), for calls whose client set none."""
    max_message_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 16 * 1024 * 1024


MethodGlob = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_./*?\[\]-]+$")
]
"""A glob over full gRPC method names (``/datapunk.lake.v1.VectorService/Get*``)."""


class RateLimitRule(_Strict):
    """One rate limit (GCRA): ``rate`` calls per ``period`` seconds with bursts of up to
    ``burst`` calls, for the methods matching ``methods``, counted per ``key``:
    ``caller`` (the principal, else the API key, else the client IP), ``principal``,
    ``api_key``, ``client_ip``, ``tenant`` or ``global`` (everyone together). A rule whose
    key the call lacks (``tenant`` for a call without one) does not apply to it. With
    ``per_method`` every method has its own bucket; otherwise the matched methods share one."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    methods: Annotated[list[MethodGlob], Field(min_length=1)] = ["*"]
    key: Literal["caller", "principal", "api_key", "client_ip", "tenant", "global"] = "caller"
    per_method: bool = False
    rate: Annotated[int, Field(ge=1, le=10_000_000)]
    period: Seconds = 1.0
    burst: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Calls allowed at once after a quiet spell; unset means ``rate``."""


class ConcurrencyRule(_Strict):
    """At most ``max_in_flight`` calls of the matching methods at once (per method with
    ``per_method``); up to ``max_waiting`` more wait at most ``max_wait`` seconds for a
    slot, every other call is shed at once with UNAVAILABLE."""

    methods: Annotated[list[MethodGlob], Field(min_length=1)]
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)]
    max_waiting: Annotated[int, Field(ge=0, le=10_000)] = 0
    max_wait: Seconds = 0.05
    per_method: bool = True


class RateLimitSettings(_Strict):
    """Nexus's rate limits and load shedding. Limits are counted in Redis
    (``engines.redis``) so that every Nexus instance shares them, or in this process with
    ``backend = "memory"`` (one instance only)."""

    backend: Literal["redis", "memory"] = "redis"
    on_redis_error: Literal["open", "closed", "local"] = "open"
    """When Redis cannot answer: admit the call (``open``, the default: Redis trouble never
    takes the platform down, and the concurrency bounds, which are in-process, still
    protect the backends), refuse it with UNAVAILABLE (``closed``), or count it in this
    process until Redis is back (``local``)."""
    redis_timeout: Seconds = 0.25
    """The longest one decision may wait for Redis."""
    redis_retry_interval: Seconds = 1.0
    """After a Redis failure, decisions skip Redis (see ``on_redis_error``) this long."""
    key_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "datapunk:rl:"
    rules: list[RateLimitRule] = []
    concurrency: list[ConcurrencyRule] = []


class CacheRule(_Strict):
    """Responses of the reads matching ``methods`` are cached for ``ttl`` seconds."""

    methods: Annotated[list[MethodGlob], Field(min_length=1)]
    ttl: Seconds


class CacheSettings(_Strict):
    """Nexus's response cache: a local LRU backed by Redis (``engines.redis``), shared by
    every instance, or the local LRU alone with ``backend = "memory"`` (one instance
    only). Nothing is cached unless a rule marks a read cacheable."""

    backend: Literal["redis", "memory"] = "redis"
    rules: list[CacheRule] = []
    read_methods: list[MethodGlob] = [
        "*/Get*",
        "*/List*",
        "*/Search*",
        "*/BatchSearch*",
        "*/Read*",
        "*/Count*",
        "*/Scroll*",
        "*/Query*",
        "*/Aggregate*",
        "*/Compute*",
        "*/Export*",
        "*/Verify*",
        "*/WhoAmI",
        "*/CheckPermission",
        "*/IntrospectToken",
    ]
    """Methods that never change anything; every other successful call invalidates the
    cached answers about the resource it names (and the Lake and Stream publish that).
    Every method the policy maps to the read action is one
    (tests/unit/test_cache_read_methods.py)."""
    max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    max_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024 * 1024)] = 64 * 1024 * 1024
    max_entry_bytes: Annotated[int, Field(ge=1, le=64 * 1024 * 1024)] = 1024 * 1024
    """Larger responses are not cached."""
    channel: Annotated[str, Field(min_length=1, max_length=128)] = "datapunk:cache:invalidate"
    key_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "datapunk:cache:"
    redis_timeout: Seconds = 0.25


class RestEdgeSettings(_Strict):
    """Nexus's REST/JSON edge: every RPC at the path of its ``google.api.http`` rule,
    transcoded to gRPC and forwarded to the service that owns it."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    cors_origins: list[str] = ["http://localhost:8080", "http://127.0.0.1:8080"]
    """Origins browsers may call the API from (exact matches; ``*`` only without
    credentials)."""
    cors_allow_credentials: bool = True
    trusted_proxies: list[IPvAnyNetwork] = []
    """Peers whose ``X-Forwarded-For`` is believed (CIDR); from anyone else it is ignored."""
    ip_allow: list[IPvAnyNetwork] = []
    """When not empty, only these client networks (CIDR) are served."""
    ip_deny: list[IPvAnyNetwork] = []
    """Client networks (CIDR) refused with 403; deny wins over allow."""
    max_body_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 16 * 1024 * 1024
    """The largest request body (for streams: the largest line); more is 413."""
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    """The largest request header block (and single header line); more is 431."""
    route_timeout: Seconds = 30.0
    """The deadline of a forwarded unary call (a client's ``grpc-timeout`` may shorten it);
    over it the answer is 504."""
    route_timeouts: dict[str, Seconds] = {}
    """Deadlines by full method (``/datapunk.lake.v1.VectorService/SearchPoints``) or by
    service (``datapunk.lake.v1.VectorService``); streams have none unless listed here."""
    hsts_max_age: Annotated[int, Field(ge=0, le=2 * 365 * 86400)] = 31536000
    access_log: bool = True
    """One log line per request (method, path, status, duration, request id)."""

    @model_validator(mode="after")
    def _credentials_need_exact_origins(self) -> RestEdgeSettings:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError("cors_origins may not contain '*' with cors_allow_credentials")
        return self


# --- identity and access (docs/identity.md) ------------------------------------------


SecretName = Annotated[
    str,
    Field(max_length=200, pattern=r"^[a-z][a-z0-9_-]*(/[a-z][a-z0-9_-]*)*$"),
]
"""The name of a secret in the secret provider (``nexus/signing-token-pin``)."""

_PathPart = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
]


class SecretsSettings(_Strict):
    """Where secrets come from (``datapunk_shared.secrets``): environment variables
    ``DATAPUNK_SECRET_<NAME>`` (``env``), private files under ``directory`` (``file``),
    or, in production, an HTTP secret store speaking the Vault/OpenBao KV v2 API
    (``http``). Secrets themselves never appear in this configuration."""

    provider: Literal["env", "file", "http"] = "env"
    directory: Path = Path(".datapunk/secrets")
    """``file``: the directory holding one file per secret, each of mode 0600 or 0400."""
    url: Annotated[str, Field(pattern=r"^https?://[^\s?#]+$", max_length=512)] = (
        "http://127.0.0.1:8200"
    )
    """``http``: the secret store's address (``https://vault.internal:8200``)."""
    mount: _PathPart = "secret"
    """``http``: the mount path of the KV version 2 secrets engine."""
    path_prefix: _PathPart | None = "datapunk"
    """``http``: secret ``nexus/x`` is read from ``<mount>/data/<path_prefix>/nexus/x``."""
    field: Annotated[str, Field(min_length=1, max_length=200)] = "value"
    """``http``: the key inside a stored secret whose (string) value is the secret."""
    namespace: Annotated[str, Field(max_length=200)] = ""
    """``http``: the namespace (``X-Vault-Namespace``), if the store uses namespaces."""
    token_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")] = "VAULT_TOKEN"
    """``http``: the environment variable holding the store's access token."""
    token_file: Path | None = None
    """``http``: a file holding the access token (a Vault/OpenBao agent's token sink),
    read again at every request so renewed tokens are picked up; wins over
    ``token_env``."""
    ca_file: Path | None = None
    """``http``: the CA bundle that signed the store's TLS certificate (unset: the
    system's trusted CAs)."""
    timeout: Seconds = 5.0
    """``http``: the longest one request to the store may take."""


class SigningSettings(_Strict):
    """Nexus's token signing keys (``datapunk_nexus.identity.signing``): ES256 keys
    generated on a PKCS#11 token that signs without ever letting them out, or, for
    development, held in the process. Keys rotate by ``kid``; a replaced key stays
    published for ``rotation_overlap`` seconds so tokens it signed keep verifying."""

    backend: Literal["pkcs11", "software"] = "pkcs11"
    pkcs11_module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    """The PKCS#11 library of the token (SoftHSM2's by default)."""
    token_label: Annotated[str, Field(min_length=1, max_length=32)] = "datapunk"
    """The label of the PKCS#11 token the keys are generated on."""
    pin_secret: SecretName = "nexus/signing-token-pin"
    """The secret holding the token's user PIN."""
    software_key_secret: SecretName = "nexus/signing-key"
    """``software``: the secret holding a P-256 private key in PEM; when it is not set, a
    new key is generated at each start (and the previous one retires)."""
    rotation_overlap: Annotated[float, Field(ge=60, le=90 * 86400)] = 86400.0
    """Seconds a replaced key stays in the JWKS; keep it longer than any token lives."""
    refresh_interval: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """How often an instance rereads which key is active (another instance may rotate)."""


class OAuthSettings(_Strict):
    """Nexus as an OAuth 2.0 authorization server for machine clients
    (``datapunk_nexus.identity.oauth``)."""

    enabled: bool = True
    """Serve AuthService and the REST edge's ``/oauth/*`` and ``/.well-known/*`` routes."""
    issuer: Annotated[str, Field(pattern=r"^https?://[^\s?#]+$", max_length=512)] | None = None
    """The ``iss`` of every token, and the base URL of the endpoints in the metadata: the
    URL clients reach the REST edge at (no query, no fragment, no trailing slash). Unset
    means ``auth.issuer``, the issuer every service trusts, so the two cannot differ."""
    audience: Annotated[str, Field(min_length=1, max_length=256)] = "datapunk"
    """The ``aud`` of an access token whose client asked for no other audience."""
    access_token_ttl: Annotated[float, Field(ge=10, le=86400)] = 300.0
    """How many seconds an access token is valid."""
    refresh_token_ttl: Annotated[float, Field(ge=60, le=365 * 86400)] = 86400.0
    """How many seconds a refresh token may wait to be used (each use makes a new one)."""
    refresh_family_lifetime: Annotated[float, Field(ge=60, le=365 * 86400)] = 30 * 86400.0
    """How many seconds a chain of refresh tokens may go on from its first grant; then the
    client must authenticate again."""
    revocation_poll_interval: Annotated[float, Field(gt=0, le=300)] = 5.0
    """How often each instance reloads the revoked access tokens from PostgreSQL, in case a
    notification was missed (they normally arrive at once through LISTEN/NOTIFY)."""
    revocation_max_staleness: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """When the revocation list could not be reloaded for this long, tokens are refused
    (UNAVAILABLE) rather than maybe believing a revoked one."""
    signing_keys_max_age: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How long this instance's edges trust the signing keys they last read from
    PostgreSQL when verifying Nexus's own tokens. Changes made through this instance, and
    those another instance announces on ``auth.key_events_channel``, take effect at once;
    this bounds the rest (an announcement lost while Redis was down)."""
    secret_time_cost: Annotated[int, Field(ge=1, le=20)] = 2
    """argon2id passes over memory for client secrets (OWASP's minimum: 2)."""
    secret_memory_kib: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 19456
    """argon2id memory per hash, in KiB (OWASP's minimum: 19 MiB)."""
    secret_parallelism: Annotated[int, Field(ge=1, le=16)] = 1
    """argon2id lanes."""

    @model_validator(mode="after")
    def _family_outlives_its_tokens(self) -> OAuthSettings:
        if self.issuer is not None and self.issuer.endswith("/"):
            raise ValueError("issuer must not end with '/'")
        if self.refresh_token_ttl > self.refresh_family_lifetime:
            raise ValueError("refresh_token_ttl must not exceed refresh_family_lifetime")
        return self


IssuerUrl = Annotated[str, Field(pattern=r"^https?://[^\s?#]+$", max_length=512)]
"""An issuer's URL: https (http only for a provider on this machine), no query or
fragment."""
SigningAlgorithm = Literal[
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
    "Ed25519",
]
"""The asymmetric JWS algorithms a verifier may accept; ``none`` and ``HS*`` never."""
ClaimPath = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_:/-]+(\.[A-Za-z0-9_:/-]+)*$", max_length=256)
]
"""A claim, or a dotted path into nested claims (``realm_access.roles``)."""
PrincipalName = Annotated[str, Field(pattern=r"^[^\s\x00-\x1f\x7f]{1,128}$")]
"""A tenant or role name: 1 to 128 characters, no spaces or control characters."""


class JwksCacheSettings(_Strict):
    """How the public keys of token issuers are cached (``datapunk_shared.auth.jwks``)."""

    min_ttl: Annotated[float, Field(gt=0, le=86400)] = 60.0
    """Keys are kept at least this many seconds, whatever the issuer's Cache-Control says."""
    max_ttl: Annotated[float, Field(gt=0, le=7 * 86400)] = 86400.0
    """...and at most this many, so a rotation is noticed within that time at the latest."""
    default_ttl: Annotated[float, Field(gt=0, le=7 * 86400)] = 600.0
    """The lifetime of a key set served without ``Cache-Control: max-age``."""
    max_stale: Annotated[float, Field(ge=0, le=7 * 86400)] = 3600.0
    """While an issuer cannot be reached, its expired keys keep working this much longer."""
    refetch_interval: Annotated[float, Field(ge=0, le=3600)] = 30.0
    """The least time between two key fetches for one issuer (a token with an unknown
    ``kid``, an expiry, a failure): what a flood of forged tokens can cost the issuer."""
    timeout: Seconds = 5.0
    """The longest one request for a discovery document or key set may take."""
    max_document_bytes: Annotated[int, Field(ge=1024, le=4 * 1024 * 1024)] = 256 * 1024

    @model_validator(mode="after")
    def _lifetimes_in_order(self) -> JwksCacheSettings:
        if not self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise ValueError("need min_ttl <= default_ttl <= max_ttl")
        return self


class OidcProviderSettings(_Strict):
    """One external OpenID Connect provider whose access tokens are trusted, and how its
    claims become a Datapunk identity (``user:<issuer>|<sub>``)."""

    issuer: IssuerUrl
    """The provider's ``iss``, exactly as its tokens and discovery document say it."""
    jwks_url: IssuerUrl | None = None
    """Where its key set is; unset means discovery (``/.well-known/openid-configuration``,
    then ``/.well-known/oauth-authorization-server``)."""
    audiences: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]], Field(min_length=1)
    ]
    """A token must name one of these in ``aud`` (the resource indicator or API identifier
    the provider puts there for Datapunk)."""
    algorithms: Annotated[list[SigningAlgorithm], Field(min_length=1)] = ["RS256", "ES256"]
    token_types: Annotated[list[str], Field(min_length=1)] = ["at+jwt", "application/at+jwt"]
    """Accepted ``typ`` headers (RFC 9068); ID tokens (``JWT``) are never access tokens."""
    tenant: PrincipalName | None = None
    """The tenant of every user of this provider; or set ``tenant_claim``."""
    tenant_claim: ClaimPath | None = None
    """The claim holding the user's tenant; or set ``tenant``."""
    roles_claim: ClaimPath | None = None
    """The claim holding the user's roles (a list or a space-separated string)."""
    role_map: dict[str, PrincipalName] = {}
    """Provider role to Datapunk role; when set, roles it does not name are dropped."""
    attribute_claims: dict[PrincipalName, ClaimPath] = {}
    """Identity attribute (for policy conditions, e.g. ``clearance``) to the claim it is
    read from."""
    leeway: Annotated[float, Field(ge=0, le=300)] | None = None
    """Clock skew allowed for this provider's tokens; unset means ``auth.leeway``."""
    max_token_bytes: Annotated[int, Field(ge=256, le=65536)] | None = None
    """The longest token accepted from this provider; unset means ``auth.max_token_bytes``."""

    @model_validator(mode="after")
    def _one_tenant_source(self) -> OidcProviderSettings:
        if (self.tenant is None) == (self.tenant_claim is None):
            raise ValueError("set exactly one of tenant and tenant_claim")
        return self


class OidcSettings(_Strict):
    """External OpenID Connect providers whose access tokens the edges accept."""

    providers: list[OidcProviderSettings] = []

    @model_validator(mode="after")
    def _issuers_unique(self) -> OidcSettings:
        issuers = [provider.issuer for provider in self.providers]
        if len(set(issuers)) != len(issuers):
            raise ValueError("each provider issuer may be configured once")
        return self


class ApiKeySettings(_Strict):
    """API keys: how they are hashed and how long they live."""

    bootstrap_secret: SecretName | None = "nexus/bootstrap-admin-key"
    """The secret holding a full API key (``dpk_…``) that Nexus makes sure exists, with the
    ``admin`` role of ``auth.default_tenant``: the first credential of a new installation
    (``datapunk up`` generates it once into its secrets). Nothing is created while the
    secret is not set; unset the name to never create one."""
    pepper_secret: SecretName = "nexus/api-key-pepper"
    """The name, in the secret provider, of the server secret (at least 32 bytes) that keys
    the HMAC-SHA-256 of every key's secret, so that a copy of the database alone cannot
    check a single guess. Changing it invalidates every key."""
    max_lifetime_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    """The longest a key may live; a key created without an expiry gets this one. Unset:
    a key lives until it expires or is revoked."""
    cache_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    """How long an instance reuses a verified key without reading it again. A key revoked
    through another instance keeps working here at most this long; the instance that
    revokes or rotates a key forgets it at once. 0: every call reads PostgreSQL."""
    cache_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """The most verified keys an instance remembers (least recently used go first)."""
    last_used_interval: Seconds = 60.0
    """A key's last-used time is written at most once per this many seconds."""
    max_page_size: Annotated[int, Field(ge=1, le=10_000)] = 1_000
    pool_timeout: Seconds = 2.0
    """How long a call waits for a PostgreSQL connection before it fails with UNAVAILABLE."""


class PolicySettings(_Strict):
    """Roles and permissions (pycasbin), default deny. Each Nexus instance keeps every
    tenant's policy it has used in memory and decides without reading PostgreSQL; it
    checks PostgreSQL for changes made by other instances every ``reload_interval``."""

    reload_interval: Seconds = 1.0
    """How often the policy version of each tenant held in memory is compared with
    PostgreSQL's, so that changes made through another instance apply here."""
    max_staleness: Seconds = 30.0
    """Decisions fail closed (UNAVAILABLE, reason POLICY_UNAVAILABLE) once the policy in
    memory could not be confirmed current for this long (PostgreSQL unreachable)."""
    max_tenants: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    """Tenants whose policy is held in memory; the least recently used are dropped (and
    read again when next needed)."""
    decision_cache_size: Annotated[int, Field(ge=0, le=10_000_000)] = 10_000
    """Decisions remembered per tenant until its policy changes (0: none)."""
    unlabelled_classification: Literal["public", "internal", "confidential", "restricted"] = (
        "restricted"
    )
    """The classification of a resource that has none, for permissions with classification
    conditions. ``restricted`` (the default) fails closed: such a permission then reaches
    only resources known to be classified low enough."""
    platform_tenant: Annotated[str, Field(max_length=128)] = "default"
    """The tenant whose ``admin`` role also administers the platform (resources of type
    ``platform``, such as the token signing keys and the platform's audit trail): by
    default the default tenant, whose first admin is the bootstrap key; empty means no
    tenant does. In production, a dedicated tenant."""
    pool_timeout: Seconds = 5.0
    """How long a policy read or change waits for a PostgreSQL connection before it fails
    with UNAVAILABLE."""


class AuditSettings(_Strict):
    """The tamper-evident audit trail in PostgreSQL (``datapunk_nexus.identity.audit``).

    Records are written in batches: while one batch commits, the records that arrive
    wait and go together in the next transaction (group commit), so a busy edge pays one
    commit for many calls. Every caller waits for its own record's commit."""

    write_timeout: Seconds = 2.0
    """The longest a record may take to be committed; past it the call is refused with
    UNAVAILABLE (reason AUDIT_UNAVAILABLE): auditing fails closed."""
    retry_interval: Annotated[float, Field(ge=0, le=60)] = 1.0
    """After a batch could not be written, records are refused at once for this long
    instead of each waiting ``write_timeout`` (0: always try)."""
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 500
    """The most records one transaction writes."""
    linger: Annotated[float, Field(ge=0, le=1)] = 0.003
    """How long a batch smaller than ``max_batch`` waits for more records before it is
    written, on top of the time the previous batch takes to commit (0: no extra wait),
    when calls arrive together and CPU is short (see ``linger_after_batch`` and
    ``linger_when_busy``)."""
    linger_after_batch: Annotated[int, Field(ge=1, le=10_000)] = 2
    """Linger only after a batch of at least this many records: calls that arrive
    together share fewer, larger commits, while a lone caller never waits for company
    (PostgreSQL's ``commit_delay`` and ``commit_siblings`` work the same way; 1: always
    linger)."""
    linger_when_busy: Annotated[float, Field(ge=0, le=64)] = 0.7
    """Linger only while the Nexus process uses at least this share of a core: a commit
    costs CPU whatever its size, so fewer of them serve more calls when CPU is short,
    while a process with CPU to spare would only make every audited call wait (0: linger
    however idle)."""
    max_pending: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    """Records waiting for a commit at most; more are refused at once with UNAVAILABLE."""
    pool_max: Annotated[int, Field(ge=2, le=100)] = 4
    """PostgreSQL connections of the audit trail's own pool (one writes, the others
    search, export and verify), so other work in the Nexus never starves the writes."""
    max_page_size: Annotated[int, Field(ge=1, le=10_000)] = 1_000
    """The most records one SearchAuditEvents page returns."""
    export_page_size: Annotated[int, Field(ge=1, le=10_000)] = 500
    """Records ExportAuditEvents reads from PostgreSQL at a time."""
    platform_admin_role: Annotated[str, Field(min_length=1, max_length=128)] = "admin"
    """The role that, held in the platform tenant (``policy.platform_tenant``), may read
    the platform trail (records of no tenant, such as failed authentications)."""
    chain_key_secret: SecretName | None = "nexus/audit-chain-key"
    """The secret (by name, from the secret provider) that keys the chain's HMAC-SHA-256,
    so that nobody without it can forge a consistent chain. Nexus refuses to start when
    it is named but missing (``datapunk up`` makes it once). Unset: plain SHA-256, which
    still shows any change but not a whole chain rewritten by someone with write access
    to the database. Changing the key breaks verification of the records written
    before."""


class NexusAuthSettings(_Strict):
    """Identity and access at Nexus: the authorization server, the trusted external
    providers, API keys, the policy and the audit trail."""

    signing: SigningSettings = SigningSettings()
    oauth: OAuthSettings = OAuthSettings()
    oidc: OidcSettings = OidcSettings()
    api_keys: ApiKeySettings = ApiKeySettings()
    policy: PolicySettings = PolicySettings()
    audit: AuditSettings = AuditSettings()


class AuthSettings(_Strict):
    """How every service authenticates its callers (``datapunk_shared.auth``): which
    issuer's tokens it trusts and which audience it answers to."""

    issuer: IssuerUrl = "http://127.0.0.1:8080"
    """Nexus's issuer URL (the ``iss`` of the tokens it signs: ``nexus.auth.oauth.issuer``)."""
    jwks_url: IssuerUrl | None = None
    """Where Nexus's key set is (``<issuer>/.well-known/jwks.json``); unset means discovery
    from the issuer's ``/.well-known/oauth-authorization-server``."""
    algorithms: Annotated[list[SigningAlgorithm], Field(min_length=1)] = ["ES256"]
    """The algorithms Nexus signs with."""
    audience_prefix: Annotated[str, Field(pattern=r"^[a-z][a-z0-9.-]*:$")] = "datapunk:"
    """A service answers to the audience ``<prefix><service>`` (``datapunk:lake``)."""
    leeway: Annotated[float, Field(ge=0, le=300)] = 30.0
    """Seconds of clock skew allowed around ``exp``, ``nbf`` and ``iat``."""
    max_token_bytes: Annotated[int, Field(ge=256, le=65536)] = 8192
    """Longer bearer tokens are refused before they are parsed."""
    jwks: JwksCacheSettings = JwksCacheSettings()
    key_events_channel: Annotated[str, Field(max_length=128, pattern=r"^[^\s]*$")] = (
        "datapunk:auth:keys-changed"
    )
    """The Redis channel (``[engines.redis]``) on which Nexus announces signing-key changes
    and every service listens, so a deleted or retired key's tokens are refused at once
    (``datapunk_shared.key_events``); empty turns it off (the key caches then bound it)."""
    default_tenant: Annotated[
        str, Field(max_length=32, pattern=r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
    ] = "default"
    """The tenant of calls that carry no identity (authentication not configured, as in a
    single-tenant development setup); a tenant id as ``datapunk_shared.auth.tenancy``
    defines it. The tenant ``default`` keeps the Lake's objects under their plain names."""

    def audience(self, service: str) -> str:
        """The audience a service answers to: ``datapunk:<service>``."""
        return f"{self.audience_prefix}{service}"


ClientIdentity = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\s,]+$")]
"""A client certificate's identity: a URI subject alternative name
(``spiffe://datapunk/envoy``) or a DNS one (``envoy.internal``), matched exactly."""


class EnvoyServicesSettings(_Strict):
    """Nexus's mutual-TLS listener for Envoy (``datapunk_nexus.envoy_listener``): Envoy's
    ext_authz ``Check`` and rate-limit ``ShouldRateLimit``, plus health, on their own
    port. Envoy proves who it is with a client certificate issued by ``client_ca`` whose
    identity is in ``allowed_clients``; nothing else is served there. Off unless enabled."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Port = 50054
    tls_cert: Path | None = None
    """Nexus's server certificate chain (PEM file), leaf first; Envoy checks it against
    its CA and the name it expects (``envoy/generate.py --authz-server-name``)."""
    tls_key_secret: SecretName = "nexus/envoy-services-tls-key"
    """The secret, from the secret provider, holding ``tls_cert``'s private key in PEM
    (never a file named here, never inline)."""
    client_ca: Path | None = None
    """The CA certificates (PEM file) that issue the clients' certificates; a client
    without a certificate chaining to one of them fails the TLS handshake."""
    allowed_clients: Annotated[list[ClientIdentity], Field(min_length=1)] = [
        "spiffe://datapunk/envoy"
    ]
    """Identities a client certificate must carry one of (a URI or DNS subject
    alternative name, exact match); a certificate from ``client_ca`` naming none of
    them is refused with PERMISSION_DENIED."""

    @model_validator(mode="after")
    def _files_when_enabled(self) -> EnvoyServicesSettings:
        if self.enabled and (self.tls_cert is None or self.client_ca is None):
            raise ValueError("envoy_services needs tls_cert and client_ca when enabled")
        return self


class NexusSettings(ServiceSettings):
    port: Port = 50053
    metrics_port: Port = 9153
    descriptor_set: Path | None = None
    """The contracts' descriptor set, for both entries, the cache and the permissions;
    unset means gen/descriptors/datapunk.binpb of the source tree (the file Envoy's
    transcoder reads)."""
    backends: dict[Literal["lake", "stream", "nexus"], str] = {}
    """``host:port`` where both entries send an owner's calls, overriding the configured
    ``[lake]``/``[stream]``/``[nexus]`` host and port (for example a sidecar in front of it)."""
    grpc_entry: GrpcEntrySettings = GrpcEntrySettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    cache: CacheSettings = CacheSettings()
    rest: RestEdgeSettings = RestEdgeSettings()
    auth: NexusAuthSettings = NexusAuthSettings()
    envoy_services: EnvoyServicesSettings = EnvoyServicesSettings()


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
    auth: AuthSettings = AuthSettings()
    secrets: SecretsSettings = SecretsSettings()

    @model_validator(mode="before")
    @classmethod
    def _issuer_is_the_rest_edge(cls, data: Any) -> Any:
        """Unless ``auth.issuer`` is set, Nexus's issuer is where its REST edge listens
        (``http://<nexus.rest.host>:<nexus.rest.port>``, a wildcard host dialled
        locally): every service fetches Nexus's keys from there, so moving the REST edge
        must not leave the services asking another installation's port."""
        if not isinstance(data, dict):
            return data
        auth = data.get("auth")
        if isinstance(auth, dict) and auth.get("issuer"):
            return data
        if isinstance(auth, AuthSettings) and "issuer" in auth.model_fields_set:
            return data
        nexus = data.get("nexus")
        rest = nexus.get("rest") if isinstance(nexus, dict) else None
        rest = rest.model_dump() if isinstance(rest, RestEdgeSettings) else rest
        if not isinstance(rest, dict):
            return data
        host = str(rest.get("host") or "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        port = rest.get("port", RestEdgeSettings().port)
        issuer = f"http://{host}:{port}"
        if isinstance(auth, AuthSettings):
            return {**data, "auth": auth.model_copy(update={"issuer": issuer})}
        return {**data, "auth": {**(auth if isinstance(auth, dict) else {}), "issuer": issuer}}

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
