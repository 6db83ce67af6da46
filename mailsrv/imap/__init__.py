"""IMAP4rev2 / IMAP4rev1 server.

Parts (STYLE.md §12): ``grammar`` (RFC 9051 §9 productions, pure) and ``commands``
(each command's arguments, pure); ``response``/``mutf7`` (serialisation);
``session`` (the state machine and mailbox commands) with ``messages`` (FETCH,
STORE, COPY/MOVE, EXPUNGE, SEARCH, SORT, THREAD) and ``listing`` (LIST/LSUB);
``fetch``/``structure`` (FETCH items, the fallback MIME walker), ``search``/
``searchindex``/``sortthread`` (SEARCH, SORT, THREAD); ``server`` (the connection
loop: framing, limits, errors -> replies), ``compress`` (COMPRESS=DEFLATE),
``spool`` (big APPEND literals to disk); ``replace`` (REPLACE); ``metadata`` (GETMETADATA / SETMETADATA); ``memory`` (an in-memory store for tests).

RFCs and their status here (for docs/rfc-index.md):

=========  ==============================  ======  ==========================================
RFC        what                            status  notes
=========  ==============================  ======  ==========================================
9051       IMAP4rev2                       yes     ENABLE IMAP4rev2: UTF-8 names, ESEARCH
3501       IMAP4rev1                       yes     \\Recent per mailbox (store mark; EXAMINE peeks)
7888       LITERAL+ / LITERAL-             yes     LITERAL+ advertised
2177       IDLE                            yes     ends after [imap] idle_timeout with BYE
4315       UIDPLUS                         yes     APPENDUID, COPYUID, UID EXPUNGE
6851       MOVE                            yes
2342       NAMESPACE                       yes     personal "" and Other Users "Other Users/" (shares)
4314       ACL, RIGHTS=texk                partial per-folder ACLs (any of lrswipkxtea per user), account
                                                   grants as every folder's default; no negative rights
5530       response codes                  yes     NOPERM for operations a share does not allow
2971       ID                              yes
5161       ENABLE                          yes     CONDSTORE QRESYNC IMAP4rev2 UTF8=ACCEPT
3691       UNSELECT                        yes
3348       CHILDREN                        yes
6154       SPECIAL-USE, CREATE-SPECIAL-USE yes
5258       LIST-EXTENDED                   yes     incl. RECURSIVEMATCH CHILDINFO; no REMOTE
5819       LIST-STATUS                     yes
8438       STATUS=SIZE                     yes
4959       SASL-IR                         yes
4616/7677  AUTH=PLAIN, SCRAM-SHA-256(-PLUS) yes     mailsrv.auth; -PLUS: tls-server-end-point
7162       CONDSTORE, QRESYNC              yes
4731       ESEARCH                         yes     SEARCH RETURN (MIN MAX ALL COUNT SAVE)
5182       SEARCHRES                       yes
5256       SORT, THREAD                    yes     REFERENCES, ORDEREDSUBJECT
5267       ESORT                           partial SORT RETURN (MIN MAX COUNT ALL); no CONTEXT=
5957       SORT=DISPLAY                    yes
9208       QUOTA                           yes     STORAGE, MESSAGE; SETQUOTA refused
7889       APPENDLIMIT                     yes
3502       MULTIAPPEND                     yes     all or nothing
3516       BINARY                          yes
6855       UTF8=ACCEPT                     yes
4978       COMPRESS=DEFLATE                yes
8474       OBJECTID                        yes     MAILBOXID, EMAILID, THREADID
8514       SAVEDATE                        yes
8970       PREVIEW                         yes
5032       WITHIN                          yes     OLDER, YOUNGER
8440       LIST-MYRIGHTS                   yes     own folders and shared ones (the grantee's rights)
8437       UNAUTHENTICATE                  yes     TLS, COMPRESS and failed-login count kept
8508       REPLACE                         yes     i on the target, t e on the source; new before old
5464       METADATA                        yes     server and mailbox entries in the account's metadata.db
=========  ==============================  ======  ==========================================
"""
