-- Every layer belongs to a tenant (datapunk_shared.auth.tenancy).
--
-- Two tenants may each have a layer of the same id, so the catalog is keyed by
-- (tenant, layer_id). Layers made before tenancy are the default tenant's, whose tables
-- stay in lake_spatial; another tenant's tables are in the schema lake_spatial__<tenant>,
-- which the Lake creates with the tenant's first layer. The column has no default: every
-- statement names its tenant.
ALTER TABLE lake.spatial_layers ADD COLUMN tenant text COLLATE "C" NOT NULL DEFAULT 'default';
ALTER TABLE lake.spatial_layers ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE lake.spatial_layers DROP CONSTRAINT spatial_layers_pkey;
ALTER TABLE lake.spatial_layers ADD PRIMARY KEY (tenant, layer_id);
