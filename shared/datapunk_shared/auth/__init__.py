"""Authentication shared by every service: identities, token verification and the
server-side check of callers (docs/identity.md)."""
