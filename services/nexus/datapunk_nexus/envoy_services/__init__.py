"""gRPC services Envoy calls on Nexus: external authorization and global rate limits."""
