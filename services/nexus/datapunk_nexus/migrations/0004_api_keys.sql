-- API keys (datapunk_nexus.identity.api_keys). A key is `dpk_<id>_<secret><checksum>`;
-- only an HMAC-SHA-256 of its secret, keyed with a server secret (the pepper), is kept.
CREATE TABLE nexus.api_keys (
    -- The public id of the key (12 lower-case letters and digits), unique everywhere:
    -- a presented key names its row by it, whatever the tenant.
    id                          text        PRIMARY KEY CHECK (id ~ '^[a-z0-9]{12}$'),
    tenant                      text        NOT NULL CHECK (tenant <> ''),
    name                        text        NOT NULL,
    secret_hash                 bytea       NOT NULL CHECK (length(secret_hash) = 32),
    -- The hash of the secret a rotation replaced, accepted until its grace period ends.
    previous_secret_hash        bytea       CHECK (length(previous_secret_hash) = 32),
    previous_secret_expire_time timestamptz,
    roles                       text[]      NOT NULL DEFAULT '{}',
    scopes                      text[]      NOT NULL DEFAULT '{}',
    created_by                  text        NOT NULL,
    create_time                 timestamptz NOT NULL,
    expire_time                 timestamptz,
    revoke_time                 timestamptz,
    rotate_time                 timestamptz,
    -- Written at most once a minute per key, never on every call.
    last_used_time              timestamptz,
    CHECK ((previous_secret_hash IS NULL) = (previous_secret_expire_time IS NULL))
);

-- ListApiKeys: a tenant's keys, newest first, keyset-paginated on (create_time, id).
CREATE INDEX api_keys_by_tenant ON nexus.api_keys (tenant, create_time DESC, id DESC);
