"""ManageSieve server (RFC 5804): users manage their Sieve scripts remotely; grammar, session, server, storage.

- ``grammar``  pure: command lines with quoted strings and literals, responses
- ``session``  the state machine (non-authenticated -> authenticated); owns no socket
- ``server``   reading commands and literals, the connection loop, ``make_service(ctx)``
- ``storage``  what a session sees of an account's scripts (mailsrv.sieve.scripts in a pool)

RFC status (yes / partial / no):

- RFC 5804 ManageSieve: yes: AUTHENTICATE (with initial response, SASL
  response code for SCRAM's server-final), STARTTLS (capabilities re-issued),
  LOGOUT, CAPABILITY (IMPLEMENTATION, SASL, SIEVE, STARTTLS, MAXREDIRECTS,
  OWNER, VERSION "1.0"; NOTIFY omitted: no enotify), HAVESPACE, PUTSCRIPT,
  LISTSCRIPTS, SETACTIVE, GETSCRIPT, DELETESCRIPT, RENAMESCRIPT, CHECKSCRIPT,
  NOOP (TAG), UNAUTHENTICATE; response codes QUOTA/MAXSCRIPTS, QUOTA/MAXSIZE,
  NONEXISTENT, ACTIVE, ALREADYEXISTS, TRYLATER, ENCRYPT-NEEDED, TAG, SASL.
  WARNINGS: never sent (the compiler has no warnings). SASL security layers: no.
  Referrals (§1.3 REFERRAL): no. The ``sieve://`` URL scheme (§3): nothing to do server-side.
- RFC 5228 scripts are checked with ``mailsrv.sieve.compile`` before they are stored.
"""
