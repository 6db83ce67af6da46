"""The argument grammar of every IMAP command (RFC 9051 §9 ``command-*``, RFC 3501, extensions).

Pure, like :mod:`mailsrv.imap.grammar` whose productions it uses: bytes in, a
:class:`~mailsrv.imap.grammar.Command` out, or NeedMore / NeedLiteral / ParseError.
"""

from __future__ import annotations

from typing import Any

from mailsrv.imap.grammar import (
    Command,
    FetchAtt,
    NeedMore,
    ParseError,
    Parser,
    SearchKey,
    Section,
)

# --- command arguments ------------------------------------------------------------------


def _no_args(p: Parser, cmd: Command) -> None:
    return None


def _login(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["user"] = p.astring()
    p.sp()
    cmd.args["password"] = p.astring()


def _authenticate(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mechanism"] = p.atom().upper().decode()
    cmd.args["initial"] = None
    if p.maybe_sp():
        # RFC 4959 SASL-IR: base64 or "=" for an empty response.
        cmd.args["initial"] = p._run(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))


def _enable(p: Parser, cmd: Command) -> None:
    caps = []
    p.sp()
    caps.append(p.atom().upper().decode())
    while p.maybe_sp():
        caps.append(p.atom().upper().decode())
    cmd.args["capabilities"] = caps


def _mailbox_only(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()


def _select(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    cmd.args["condstore"] = False
    cmd.args["qresync"] = None
    if p.maybe_sp():
        p.expect(b"(")
        while not p.at(b")"):
            if p.at(b"CONDSTORE"):
                cmd.args["condstore"] = True
            elif p.at(b"QRESYNC"):
                # RFC 7162 §3.2.5: QRESYNC (uidvalidity modseq [known-uids [(seq uids)]])
                p.sp()
                p.expect(b"(")
                uidvalidity = p.number(nz=True)
                p.sp()
                modseq = p.number(bits=64)
                known = None
                match = None
                if p.maybe_sp():
                    if p.peek() != 0x28:
                        known = p.sequence_set()
                        p.maybe_sp()
                    if p.at(b"("):
                        seqs = p.sequence_set()
                        p.sp()
                        uids = p.sequence_set()
                        p.expect(b")")
                        match = (seqs, uids)
                p.expect(b")")
                cmd.args["qresync"] = (uidvalidity, modseq, known, match)
            else:
                raise p.error("unknown SELECT parameter")
            if p.peek() != 0x29:
                p.sp()


def _create(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    cmd.args["use"] = []
    if p.maybe_sp():
        # RFC 6154 §3: CREATE name (USE (\Drafts))
        p.expect(b"(")
        p.expect(b"USE")
        p.sp()
        cmd.args["use"] = p.flag_list()
        p.expect(b")")


def _getmetadata(p: Parser, cmd: Command) -> None:
    """RFC 5464 §4.2: ``GETMETADATA [SP "(" option *(SP option) ")"] SP mailbox SP entries``."""
    p.sp()
    cmd.args["maxsize"] = None
    cmd.args["depth"] = 0
    if p.peek() == 0x28:
        p.expect(b"(")
        while True:
            if p.at(b"MAXSIZE "):
                cmd.args["maxsize"] = p.number()
            elif p.at(b"DEPTH "):
                depth = p.atom().lower()
                if depth not in (b"0", b"1", b"infinity"):
                    raise p.error("DEPTH is 0, 1 or infinity")
                cmd.args["depth"] = None if depth == b"infinity" else int(depth)
            else:
                raise p.error("unknown GETMETADATA option")
            if p.at(b")"):
                break
            p.sp()
        p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()
    cmd.args["entries"] = p.paren_list(p.astring) if p.peek() == 0x28 else [p.astring()]


def _setmetadata(p: Parser, cmd: Command) -> None:
    """RFC 5464 §4.3: ``SETMETADATA SP mailbox SP "(" entry SP value *(SP entry SP value) ")"``,
    a value being an nstring or a literal8."""
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()

    def item() -> tuple[bytes, bytes | None]:
        entry = p.astring()
        p.sp()
        value = p.literal(binary=True) if p.peek() == 0x7E else p.nstring()
        return entry, value

    cmd.args["items"] = p.paren_list(item)


def _rename(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()
    cmd.args["new"] = p.mailbox()


def _list(p: Parser, cmd: Command) -> None:
    p.sp()
    select: list[str] = []
    if p.peek() == 0x28:
        # RFC 5258 §3: LIST (selection-options) reference patterns
        p.expect(b"(")
        while not p.at(b")"):
            select.append(p.atom().upper().decode())
            if p.peek() != 0x29:
                p.sp()
        p.sp()
    cmd.args["select"] = select
    cmd.args["reference"] = p.mailbox() if p.peek() not in (0x22, 0x7B) else p.string()
    p.sp()
    if p.peek() == 0x28:
        cmd.args["patterns"] = p.paren_list(p.list_mailbox)
        cmd.args["extended"] = True
    else:
        cmd.args["patterns"] = [p.list_mailbox()]
        cmd.args["extended"] = bool(select)
    returns: dict[str, Any] = {}
    if p.maybe_sp():
        p.expect(b"RETURN")
        p.sp()
        p.expect(b"(")
        while not p.at(b")"):
            opt = p.atom().upper().decode()
            if opt == "STATUS":
                p.sp()
                returns[opt] = p.paren_list(lambda: p.atom().upper().decode())
            else:
                returns[opt] = True
            if p.peek() != 0x29:
                p.sp()
        cmd.args["extended"] = True
    cmd.args["returns"] = returns


def _lsub(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["reference"] = p.astring()
    p.sp()
    cmd.args["patterns"] = [p.list_mailbox()]
    cmd.args["select"] = ["SUBSCRIBED"]
    cmd.args["returns"] = {}
    cmd.args["extended"] = False


def _status(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()
    cmd.args["items"] = p.paren_list(lambda: p.atom().upper().decode())


def _append_message(p: Parser) -> tuple[list[bytes], Any, Any]:
    """RFC 4466 ``append-message`` after its SP: (flags, date-time or None, the literal)."""
    flags: list[bytes] = []
    when = None
    if p.peek() == 0x28:
        flags = p.flag_list()
        p.sp()
    if p.peek() == 0x22:
        when = p.date_time()
        p.sp()
    binary = p.peek() == 0x7E
    if p.at(b"UTF8"):
        # RFC 6855 §4: UTF8 (literal8)
        p.sp()
        p.expect(b"(")
        data = p.literal(binary=True)
        p.expect(b")")
    else:
        data = p.literal(binary=binary)
    return flags, when, data


def _append(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    messages = []
    # RFC 3502 MULTIAPPEND: append-message *(SP append-message)
    while True:
        p.sp()
        messages.append(_append_message(p))
        if p.at_end():
            break
    cmd.args["messages"] = messages


def _replace(p: Parser, cmd: Command) -> None:
    """RFC 8508 §6: ``REPLACE SP seq-number SP mailbox append-message`` (a UID under UID REPLACE;
    ``seq-number`` may be ``*``, RFC 9051 §9: the last message, the highest UID: 0 here)."""
    p.sp()
    cmd.args["number"] = p.seq_number()
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()
    cmd.args["messages"] = [_append_message(p)]


_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_SIMPLE = {
    "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
    "BODYSTRUCTURE", "UID", "MODSEQ", "EMAILID", "THREADID", "SAVEDATE", "BODY",
}
_FETCH_ATT_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.")


def _section(p: Parser, *, binary: bool = False) -> Section:
    """``section`` after ``[`` up to and including ``]``."""
    parts: list[int] = []
    text = ""
    fields_: list[bytes] = []
    if p.at(b"]"):
        return Section()
    while True:
        c = p.peek()
        if 0x30 <= c <= 0x39:
            parts.append(p.number(nz=True))
            if p.at(b"."):
                continue
            break
        word = p._run(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")).upper().decode()
        if binary:
            raise p.error("BINARY sections are part numbers only")
        if word in ("HEADER", "TEXT") or (word == "MIME" and parts):
            text = word
        elif word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            text = word
            p.sp()
            fields_ = [f.upper() for f in p.paren_list(p.astring)]
        else:
            raise p.error("bad section")
        break
    p.expect(b"]")
    return Section(tuple(parts), text, tuple(fields_))


def _fetch_att(p: Parser) -> FetchAtt:
    name = p._run(_FETCH_ATT_CHARS).upper().decode()
    if name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE") and p.at(b"["):
        section = _section(p, binary=name.startswith("BINARY"))
        partial = None
        if name != "BINARY.SIZE" and p.at(b"<"):
            start = p.number()
            p.expect(b".")
            length = p.number(nz=True)
            p.expect(b">")
            partial = (start, length)
        return FetchAtt(name, section, partial)
    if name == "PREVIEW":
        if p.at(b" (LAZY)") or p.at(b"(LAZY)"):
            pass
        return FetchAtt(name)
    if name in _FETCH_SIMPLE:
        return FetchAtt(name)
    raise p.error(f"unknown fetch attribute {name or '(none)'}")


def _fetch(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()
    p.sp()
    atts: list[FetchAtt]
    if p.peek() == 0x28:
        atts = p.paren_list(lambda: _fetch_att(p))
    else:
        start = p.pos
        word = p._run(_FETCH_ATT_CHARS).upper().decode()
        if word in _FETCH_MACROS:
            atts = [FetchAtt(n) for n in _FETCH_MACROS[word]]
        else:
            p.pos = start
            atts = [_fetch_att(p)]
    cmd.args["atts"] = atts
    cmd.args["changedsince"] = None
    cmd.args["vanished"] = False
    if p.maybe_sp():
        # RFC 7162 §3.1.4 / §3.2.6: (CHANGEDSINCE n [VANISHED])
        p.expect(b"(")
        while not p.at(b")"):
            if p.at(b"CHANGEDSINCE"):
                p.sp()
                cmd.args["changedsince"] = p.number(bits=64)
            elif p.at(b"VANISHED"):
                cmd.args["vanished"] = True
            else:
                raise p.error("unknown FETCH modifier")
            if p.peek() != 0x29:
                p.sp()


def _store(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()
    p.sp()
    cmd.args["unchangedsince"] = None
    if p.at(b"("):
        p.expect(b"UNCHANGEDSINCE")
        p.sp()
        cmd.args["unchangedsince"] = p.number(bits=64)
        p.expect(b")")
        p.sp()
    mode = "="
    if p.at(b"+"):
        mode = "+"
    elif p.at(b"-"):
        mode = "-"
    p.expect(b"FLAGS")
    silent = p.at(b".SILENT")
    p.sp()
    if p.peek() == 0x28:
        flags = p.flag_list()
    else:
        flags = [p.flag()]
        while p.maybe_sp():
            flags.append(p.flag())
    cmd.args.update(mode=mode, silent=silent, flags=flags)


def _copy(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()
    p.sp()
    cmd.args["mailbox"] = p.mailbox()


def _uid_expunge(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["set"] = p.sequence_set()


_SEARCH_FLAG_KEYS = {
    "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "RECENT", "SEEN", "NEW", "OLD",
    "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN", "ALL",
}
_SEARCH_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_SEARCH_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}


def search_key(p: Parser) -> SearchKey:
    """One ``search-key`` (RFC 9051 §6.4.4, RFC 7162 MODSEQ, RFC 5032 OLDER/YOUNGER)."""
    c = p.peek()
    if c == 0x28:
        p.nest()
        p.pos += 1
        keys = [search_key(p)]
        while not p.at(b")"):
            p.sp()
            keys.append(search_key(p))
        p.unnest()
        return SearchKey("AND", tuple(keys))
    if 0x30 <= c <= 0x39 or c in (0x2A, 0x24):
        return SearchKey("SEQ", (p.sequence_set(),))
    word = p.atom().upper().decode("ascii", "replace")
    if word in _SEARCH_FLAG_KEYS or word == "SAVEDATESUPPORTED":
        return SearchKey(word)
    if word in _SEARCH_STRING_KEYS:
        p.sp()
        return SearchKey(word, (p.astring(),))
    if word in _SEARCH_DATE_KEYS:
        p.sp()
        return SearchKey(word, (p.date(),))
    if word in ("KEYWORD", "UNKEYWORD"):
        p.sp()
        return SearchKey(word, (p.flag(),))
    if word == "HEADER":
        p.sp()
        name = p.astring()
        p.sp()
        return SearchKey(word, (name, p.astring()))
    if word in ("LARGER", "SMALLER"):
        p.sp()
        return SearchKey(word, (p.number(bits=64),))
    if word in ("OLDER", "YOUNGER"):
        p.sp()
        return SearchKey(word, (p.number(nz=True),))
    if word == "UID":
        p.sp()
        return SearchKey(word, (p.sequence_set(),))
    if word in ("EMAILID", "THREADID"):
        p.sp()
        return SearchKey(word, (p.astring(),))
    if word == "NOT":
        p.sp()
        p.nest()
        key = search_key(p)
        p.unnest()
        return SearchKey(word, (key,))
    if word == "OR":
        p.sp()
        p.nest()
        a = search_key(p)
        p.sp()
        b = search_key(p)
        p.unnest()
        return SearchKey(word, (a, b))
    if word == "MODSEQ":
        # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
        p.sp()
        if p.peek() == 0x22:
            p.quoted()
            p.sp()
            p.atom()
            p.sp()
        return SearchKey(word, (p.number(bits=64),))
    raise p.error(f"unknown search key {word}")


def _search_program(p: Parser, cmd: Command, *, charset_required: bool = False) -> None:
    charset = None
    if charset_required:
        charset = p.astring().upper().decode("ascii", "replace")
        p.sp()
    elif p.at(b"CHARSET "):
        charset = p.astring().upper().decode("ascii", "replace")
        p.sp()
    keys = [search_key(p)]
    while p.maybe_sp():
        keys.append(search_key(p))
    cmd.args["charset"] = charset
    cmd.args["key"] = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


def _search(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["return"] = None
    if p.at(b"RETURN "):
        # RFC 4731 §3 / RFC 9051 §6.4.4: RETURN (MIN MAX ALL COUNT SAVE)
        p.expect(b"(")
        opts: list[str] = []
        while not p.at(b")"):
            opts.append(p.atom().upper().decode())
            if p.peek() != 0x29:
                p.sp()
        for opt in opts:
            if opt not in ("MIN", "MAX", "ALL", "COUNT", "SAVE"):
                raise p.error(f"unknown SEARCH return option {opt}")
        cmd.args["return"] = opts
        p.sp()
    _search_program(p, cmd)


def _sort(p: Parser, cmd: Command) -> None:
    # RFC 5256 §3: SORT (criteria) charset keys
    p.sp()
    cmd.args["return"] = None
    if p.at(b"RETURN "):
        p.expect(b"(")
        opts: list[str] = []
        while not p.at(b")"):
            opts.append(p.atom().upper().decode())
            if p.peek() != 0x29:
                p.sp()
        cmd.args["return"] = opts
        p.sp()
    criteria: list[tuple[bool, str]] = []
    p.expect(b"(")
    reverse = False
    while True:
        word = p.atom().upper().decode()
        if word == "REVERSE":
            reverse = True
            p.sp()
            continue
        if word not in ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"):
            raise p.error(f"unknown sort criterion {word}")
        criteria.append((reverse, word))
        reverse = False
        if p.at(b")"):
            break
        p.sp()
    cmd.args["criteria"] = criteria
    p.sp()
    _search_program(p, cmd, charset_required=True)


def _thread(p: Parser, cmd: Command) -> None:
    p.sp()
    algorithm = p.atom().upper().decode()
    if algorithm not in ("REFERENCES", "ORDEREDSUBJECT"):
        raise p.error(f"unknown thread algorithm {algorithm}")
    cmd.args["algorithm"] = algorithm
    p.sp()
    _search_program(p, cmd, charset_required=True)


def _id(p: Parser, cmd: Command) -> None:
    # RFC 2971 §3.1: ID ("key" "value" ...) / NIL
    p.sp()
    params: dict[str, str | None] = {}
    if not p.at(b"NIL"):
        p.expect(b"(")
        while not p.at(b")"):
            key = p.string().decode("utf-8", "replace")
            p.sp()
            value = p.nstring()
            params[key] = None if value is None else value.decode("utf-8", "replace")
            if p.peek() != 0x29:
                p.sp()
    cmd.args["params"] = params


def _getquota(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["root"] = p.astring()


def _setquota(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["root"] = p.astring()
    p.sp()
    p.expect(b"(")
    limits = []
    while not p.at(b")"):
        name = p.atom().upper().decode()
        p.sp()
        limits.append((name, p.number(bits=64)))
        if p.peek() != 0x29:
            p.sp()
    cmd.args["limits"] = limits


def _compress(p: Parser, cmd: Command) -> None:
    p.sp()
    cmd.args["mechanism"] = p.atom().upper().decode()


def _namespace_args(p: Parser, cmd: Command) -> None:
    return None


def _acl_identifier(p: Parser, cmd: Command) -> None:
    """RFC 4314 §3.2 / §3.4: DELETEACL and LISTRIGHTS ``mailbox SP identifier``."""
    p.sp()
    cmd.args["mailbox"] = p.mailbox()
    p.sp()
    cmd.args["identifier"] = p.astring()


def _setacl(p: Parser, cmd: Command) -> None:
    """RFC 4314 §3.1: ``SETACL mailbox SP identifier SP mod-rights`` (mod-rights an astring)."""
    _acl_identifier(p, cmd)
    p.sp()
    if p.peek() in (0x0D, 0x0A):
        # deviation (RFC 4314 §3.1: mod-rights is an astring): empty rights sent bare, as imapclient's
        # setacl(folder, who, "") does, are the empty string (remove the rights)
        cmd.args["rights"] = b""
        return
    cmd.args["rights"] = p.astring()


#: verb -> argument parser. UID-prefixed verbs are in :data:`UID_COMMANDS`.
COMMANDS = {
    "CAPABILITY": _no_args,
    "NOOP": _no_args,
    "LOGOUT": _no_args,
    "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "DELETE": _mailbox_only,
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox_only,
    "UNSUBSCRIBE": _mailbox_only,
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _namespace_args,
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_args,
    "CHECK": _no_args,
    "CLOSE": _no_args,
    "UNSELECT": _no_args,
    "EXPUNGE": _no_args,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SORT": _sort,
    "THREAD": _thread,
    "ID": _id,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _mailbox_only,
    "SETQUOTA": _setquota,
    "COMPRESS": _compress,
    "MYRIGHTS": _mailbox_only,
    "GETACL": _mailbox_only,
    "LISTRIGHTS": _acl_identifier,
    "SETACL": _setacl,
    "DELETEACL": _acl_identifier,
    "UNAUTHENTICATE": _no_args,
    "REPLACE": _replace,
    "GETMETADATA": _getmetadata,
    "SETMETADATA": _setmetadata,
}
UID_COMMANDS = {
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "SEARCH": _search,
    "EXPUNGE": _uid_expunge,
    "SORT": _sort,
    "THREAD": _thread,
    "REPLACE": _replace,
}


def parse_command(buf: bytes, *, utf8: bool = True) -> Command:
    """Parse one complete command (its line(s) and literals, ending in CRLF).

    Raises :class:`NeedMore`, :class:`NeedLiteral` or :class:`ParseError` (with
    ``tag`` set once the tag was read; ``code`` an IMAP response code or None).
    """
    p = Parser(buf, utf8=utf8)
    tag = p.tag_()
    p.tag = tag
    p.sp()
    name = p.atom().upper().decode("ascii", "replace")
    cmd = Command(tag, name)
    table = COMMANDS
    if name == "UID":
        p.sp()
        name = p.atom().upper().decode("ascii", "replace")
        cmd.name = name
        cmd.uid = True
        table = UID_COMMANDS
    parse_args = table.get(name)
    if parse_args is None:
        raise ParseError(f"unknown command {('UID ' if cmd.uid else '') + name}", tag)
    parse_args(p, cmd)
    p.end()
    return cmd


def parse_tag(line: bytes) -> bytes | None:
    """The tag of a line that failed to parse, for a tagged BAD; None when there is none."""
    p = Parser(line)
    try:
        tag = p.tag_()
    except (NeedMore, ParseError):
        return None
    if p.pos < len(line) and line[p.pos] == 0x20:
        return tag
    return None
