"""Identity and access at Nexus (docs/identity.md)."""
