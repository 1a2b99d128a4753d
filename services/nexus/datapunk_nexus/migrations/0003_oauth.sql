-- Nexus as an OAuth 2.0 authorization server (datapunk_nexus.identity.oauth).
-- No secret and no token is stored in clear: client secrets as argon2id hashes, refresh
-- tokens as SHA-256 hashes; access tokens are known only by their jti.

-- Machine clients. The client id is unique across tenants because the token endpoint
-- knows a client by its id alone.
CREATE TABLE nexus.oauth_clients (
    client_id            text        PRIMARY KEY,
    tenant               text        NOT NULL,
    display_name         text        NOT NULL DEFAULT '',
    roles                text[]      NOT NULL DEFAULT '{}',
    allowed_scopes       text[]      NOT NULL DEFAULT '{}',
    allowed_audiences    text[]      NOT NULL DEFAULT '{}',
    allow_refresh_tokens boolean     NOT NULL DEFAULT false,
    secret_hash          text        NOT NULL,
    create_time          timestamptz NOT NULL DEFAULT now(),
    secret_create_time   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_clients_tenant ON nexus.oauth_clients (tenant, client_id);

-- A refresh-token family: every refresh token that descends from one grant. Revoking the
-- family (on reuse of a used token, or on request) ends all of them at once;
-- expire_time is the family's absolute lifetime.
CREATE TABLE nexus.oauth_refresh_families (
    family_id   uuid        PRIMARY KEY,
    client_id   text        NOT NULL REFERENCES nexus.oauth_clients ON DELETE CASCADE,
    tenant      text        NOT NULL,
    scopes      text[]      NOT NULL,
    audience    text        NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz NOT NULL,
    revoke_time timestamptz
);
CREATE INDEX oauth_refresh_families_expiry ON nexus.oauth_refresh_families (expire_time);

-- Each refresh token works once: consume_time is set when it is exchanged.
CREATE TABLE nexus.oauth_refresh_tokens (
    token_hash   bytea       PRIMARY KEY,
    family_id    uuid        NOT NULL REFERENCES nexus.oauth_refresh_families ON DELETE CASCADE,
    create_time  timestamptz NOT NULL DEFAULT now(),
    expire_time  timestamptz NOT NULL,
    consume_time timestamptz
);
CREATE INDEX oauth_refresh_tokens_family ON nexus.oauth_refresh_tokens (family_id);

-- Every access token issued, by jti, so that revoking a family or deleting a client can
-- revoke the access tokens that came with it. Rows go once the token expired.
CREATE TABLE nexus.oauth_access_tokens (
    jti         text        PRIMARY KEY,
    client_id   text        NOT NULL,
    tenant      text        NOT NULL,
    family_id   uuid,
    expire_time timestamptz NOT NULL
);
CREATE INDEX oauth_access_tokens_client ON nexus.oauth_access_tokens (client_id);
CREATE INDEX oauth_access_tokens_family ON nexus.oauth_access_tokens (family_id)
    WHERE family_id IS NOT NULL;
CREATE INDEX oauth_access_tokens_expiry ON nexus.oauth_access_tokens (expire_time);

-- The deny list of revoked access tokens, kept until they would have expired anyway.
CREATE TABLE nexus.oauth_revoked_tokens (
    jti         text        PRIMARY KEY,
    expire_time timestamptz NOT NULL,
    revoke_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_revoked_tokens_expiry ON nexus.oauth_revoked_tokens (expire_time);
