"""SQL schema migrations of the Lake (NNNN_name.sql, forward-only)."""
