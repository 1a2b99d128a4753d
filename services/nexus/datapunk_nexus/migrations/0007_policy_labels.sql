-- Data classification labels of resources (datapunk_nexus.identity.policy). A label is
-- part of its tenant's policy: every change bumps nexus.policy_versions in the same
-- transaction, so every Nexus instance loads the tenant again.
CREATE TABLE nexus.policy_labels (
    tenant         text        NOT NULL CHECK (tenant <> ''),
    resource       text        COLLATE "C" NOT NULL,
    classification text        NOT NULL
        CHECK (classification IN ('public', 'internal', 'confidential', 'restricted')),
    update_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, resource)
);
