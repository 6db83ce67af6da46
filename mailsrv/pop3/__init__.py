"""POP3 server (RFC 1939, RFC 2449 CAPA)."""
