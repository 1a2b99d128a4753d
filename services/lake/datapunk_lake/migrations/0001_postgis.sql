-- The Lake keeps geometry in PostGIS, in its own schema.
CREATE EXTENSION IF NOT EXISTS postgis;
CREATE SCHEMA IF NOT EXISTS lake;
