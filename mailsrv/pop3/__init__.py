"""POP3 server (RFC 1939, RFC 2449 CAPA): grammar, session, server, plus the maildrop and its lock.

- ``grammar``  pure: command lines, numbers, the streaming multi-line encoder
- ``session``  the state machine (AUTHORIZATION -> TRANSACTION -> UPDATE); owns no socket
- ``server``   the connection loop and ``make_service(ctx)`` for the worker
- ``maildrop`` what the session sees of store and directory, and the store-backed form
- ``lock``     the cross-process in-use lock (flock) and the last-login time

RFC status (yes / partial / no):

- RFC 1939 POP3: yes; APOP no (needs clear-text passwords, the directory keeps
  argon2id and SCRAM verifiers only; the greeting has no timestamp).
- RFC 2449 CAPA and response codes: yes (TOP, UIDL, USER, SASL, RESP-CODES,
  PIPELINING, EXPIRE NEVER / 0 / days (enforced at QUIT, resp. at the next
  login), LOGIN-DELAY (enforced), IMPLEMENTATION; IN-USE, LOGIN-DELAY, SYS/TEMP).
  The per-user forms of EXPIRE and LOGIN-DELAY in TRANSACTION: no.
- RFC 2595 STLS: yes (plain text pipelined after STLS is discarded (logged) and
  the handshake goes on).
- RFC 3206 AUTH-RESP-CODE, SYS and AUTH codes: yes.
- RFC 5034 AUTH (SASL): yes, the mechanisms ``mailsrv.auth`` offers (PLAIN,
  LOGIN, SCRAM-SHA-256, SCRAM-SHA-256-PLUS with tls-server-end-point).
- RFC 6856 UTF8 / LANG: no (user names are taken as UTF-8 anyway).
"""
