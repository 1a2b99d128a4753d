-- The tamper-evident audit trail (datapunk_nexus.identity.audit).
--
-- Each tenant has its own chain of records, numbered 1, 2, ... without gaps; the
-- platform's own records (failed authentications before any tenant was known) form the
-- chain of the empty tenant. Every record holds the hash of the record before it and its
-- own hash over its content and that link. Text is compared bytewise (COLLATE "C"), so
-- that prefix searches on the btree indexes work whatever the database's collation.
CREATE TABLE nexus.audit_events (
    tenant         text COLLATE "C" NOT NULL,
    seq            bigint           NOT NULL CHECK (seq > 0),
    time           timestamptz      NOT NULL,
    principal      text COLLATE "C" NOT NULL,
    principal_kind text             NOT NULL,
    credential_id  text             NOT NULL,
    action         text COLLATE "C" NOT NULL,
    method         text             NOT NULL,
    resource       text COLLATE "C" NOT NULL,
    outcome        text             NOT NULL CHECK (outcome IN ('allow', 'deny', 'error')),
    reason         text             NOT NULL,
    client_address text             NOT NULL,
    request_id     text             NOT NULL,
    prev_hash      bytea            NOT NULL,
    hash           bytea            NOT NULL,
    PRIMARY KEY (tenant, seq)
);

-- One index per search filter, each ending in seq so that a filtered page comes out of
-- the index already in chain order (keyset pagination on seq).
CREATE INDEX audit_events_principal ON nexus.audit_events (tenant, principal, seq);
CREATE INDEX audit_events_action ON nexus.audit_events (tenant, action, seq);
CREATE INDEX audit_events_resource ON nexus.audit_events (tenant, resource, seq);
CREATE INDEX audit_events_outcome ON nexus.audit_events (tenant, outcome, seq);
CREATE INDEX audit_events_time ON nexus.audit_events (tenant, time);

-- The newest record of each chain. Writers lock a tenant's row (in the transaction that
-- appends to its chain), so several Nexus instances keep one chain; the seal (a hash,
-- keyed like the records) lets verification notice the newest records cut off.
CREATE TABLE nexus.audit_chain_heads (
    tenant text COLLATE "C" PRIMARY KEY,
    seq    bigint           NOT NULL CHECK (seq >= 0),
    hash   bytea            NOT NULL,
    seal   bytea            NOT NULL
);

-- Retention: the records of a chain up to seq were removed after they were verified;
-- hash is the removed record's hash, which the next record links to. Verification starts
-- at the latest checkpoint of a chain.
CREATE TABLE nexus.audit_checkpoints (
    tenant     text COLLATE "C" NOT NULL,
    seq        bigint           NOT NULL CHECK (seq > 0),
    hash       bytea            NOT NULL,
    created_at timestamptz      NOT NULL,
    seal       bytea            NOT NULL,
    PRIMARY KEY (tenant, seq)
);
