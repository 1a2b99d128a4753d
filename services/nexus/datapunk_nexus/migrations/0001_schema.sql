-- Nexus keeps its platform metadata (principals, keys, audit) in its own schema.
CREATE SCHEMA IF NOT EXISTS nexus;
