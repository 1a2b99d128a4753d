"""SQL schema migrations of the Nexus (NNNN_name.sql, forward-only)."""
