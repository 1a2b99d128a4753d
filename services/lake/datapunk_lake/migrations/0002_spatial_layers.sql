-- The spatial store (datapunk.lake.v1.SpatialService).
--
-- Storage design: one table per layer, in schema lake_spatial, named after the layer id
-- (checked against ^[a-z]([a-z0-9_-]{0,48}[a-z0-9])?$ and always quoted as an identifier).
-- Each table has its own GiST indexes, so an index holds one layer's geometries only: a
-- k-nearest scan walks only that layer's tree, the planner keeps per-layer statistics,
-- a bulk load into one layer touches only that layer's indexes, and dropping a layer is a
-- DROP TABLE. The price is one table (three relations with its indexes) per layer, which
-- is fine for the hundreds or thousands of layers the Lake is made for.
--
-- This catalog holds what is known of each layer besides its features; a layer is created
-- (catalog row + table) and deleted in one transaction.
CREATE SCHEMA IF NOT EXISTS lake_spatial;

CREATE TABLE IF NOT EXISTS lake.spatial_layers (
    layer_id    text COLLATE "C" PRIMARY KEY,
    description text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now()
);
