-- Roles, role bindings and a per-tenant policy version (datapunk_nexus.identity.policy).
-- Every table is keyed by tenant first: nothing is ever read or written without it.

-- A role: a name plus permissions. `permissions` is a JSON array of objects
-- {"type", "pattern", "actions", "max_classification", "require_clearance"}; the built-in
-- roles (admin, writer, reader) are not stored.
CREATE TABLE nexus.policy_roles (
    tenant      text        NOT NULL CHECK (tenant <> ''),
    role_id     text        COLLATE "C" NOT NULL,
    description text        NOT NULL DEFAULT '',
    permissions jsonb       NOT NULL CHECK (jsonb_typeof(permissions) = 'array'),
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, role_id)
);

-- A principal holds a role in a tenant. A binding may name a built-in role, which has
-- no row in policy_roles, so there is no foreign key; DeleteRole removes the bindings.
CREATE TABLE nexus.policy_bindings (
    tenant      text        NOT NULL CHECK (tenant <> ''),
    principal   text        COLLATE "C" NOT NULL,
    role_id     text        COLLATE "C" NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, principal, role_id)
);

-- Listing and deleting the bindings of one role.
CREATE INDEX policy_bindings_by_role ON nexus.policy_bindings (tenant, role_id, principal);

-- Bumped in the same transaction as every change of a tenant's roles or bindings; the
-- row lock also serializes concurrent changes of one tenant. Nexus instances compare it
-- with the version of the policy they hold in memory to know when to load it again.
CREATE TABLE nexus.policy_versions (
    tenant  text   PRIMARY KEY CHECK (tenant <> ''),
    version bigint NOT NULL
);
