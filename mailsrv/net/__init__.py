"""Network plumbing shared by every protocol: TLS contexts, connections, listeners."""
