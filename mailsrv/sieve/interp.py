"""Running a compiled script on one message: pure (no I/O), bounded work, an :class:`Outcome`.

The outcome lists what delivery must do; mailsrv.delivery.sieve does it. A
runtime error (too many actions, a second vacation) raises
:class:`SieveRuntimeError`, and delivery then keeps the message (RFC 5228 §2.10.6).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from mailsrv.mime.headers import unfold
from mailsrv.mime.structure import Part
from mailsrv.sieve.editheader import PROTECTED, Edit, apply_edits, body_of, encoded_value, head_end
from mailsrv.sieve.lang import ADDRESS, normalize_flags
from mailsrv.sieve.match import Matcher, matcher
from mailsrv.sieve.message import MAX_BODY_TEXT, MessageView, addresses_of, header_fields
from mailsrv.sieve.mimeedit import (
    CONTENT_FIELDS,
    ENCLOSE_COPIED,
    MAX_MESSAGE,
    MAX_TEXT,
    Enclose,
    Replace,
    enclosure,
    field_name,
    header_field,
    mime_entity,
    one_address,
    split_entity,
    text_entity,
)
from mailsrv.sieve.mimeparts import (
    MAX_PARTS_VISITED,
    Break,
    ExtractText,
    ForEveryPart,
    LoopBreak,
    MimeOpts,
    loop_parts,
    option_values,
    scope,
    text_of,
)
from mailsrv.sieve.nodes import (
    Action,
    AddHeader,
    AddressTest,
    AllOf,
    AnyOf,
    BodyTest,
    Const,
    DateTest,
    DeleteHeader,
    Discard,
    DuplicateTest,
    EnvironmentTest,
    ErrorAction,
    ExistsTest,
    FileInto,
    FlagOp,
    GlobalVars,
    HasFlagTest,
    HeaderTest,
    If,
    Include,
    Keep,
    MailboxExists,
    Node,
    Notify,
    NotifyMethodTest,
    NotTest,
    Redirect,
    Reject,
    Return,
    Script,
    SetVar,
    SizeTest,
    Stop,
    StringTest,
    VacationAction,
    VerdictTest,
)
from mailsrv.sieve.notify import parse_mailto

#: Actions one run may take (keep, fileinto, redirect, vacation; Pigeonhole's sieve_max_actions is 32)
MAX_ACTIONS = 32
#: Redirects of one message (Pigeonhole's sieve_max_redirects is 4 since 0.5)
MAX_REDIRECTS = 4
#: RFC 5229: variables one run may set, and the characters one holds (Pigeonhole: 255 and 4 KB)
MAX_VARIABLES = 255
MAX_VARIABLE = 4096
# RFC 5229 §3 variable-ref = "${" [namespace] variable-name "}" (no namespaces here: left as written)
_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}")
#: subaddress separator (RFC 5233 §1: "+" is the common choice, Dovecot's recipient_delimiter)
DETAIL_SEPARATOR = "+"

INBOX = "INBOX"
#: RFC 5435: notifications one run may send (more is a runtime error; each also counts as an action)
MAX_NOTIFICATIONS = 4
#: RFC 6609: includes nested in one another at run time (Pigeonhole's sieve_include_max_nesting_depth)
MAX_INCLUDE_DEPTH = 10


class SieveRuntimeError(Exception):
    """The script failed while running (RFC 5228 §2.10.6): the delivery keeps the message."""


class _Return(Exception):
    """RFC 6609 §3.4 ``return``: unwinds to the include that ran the script."""



@dataclass(frozen=True)
class Target:
    """A copy in ``mailbox`` with ``flags`` (RFC 5232: names as IMAP writes them); ``keep``: the
    keep (implicit or explicit) into INBOX rather than a fileinto."""

    mailbox: str
    flags: frozenset[str]
    keep: bool = False
    #: RFC 5293: how many of the run's header edits the copy gets, those made before its action
    #: (None: all, as the implicit keep at the end)
    edits: int | None = field(default=None, compare=False)


#: The vacation action to consider after the run, its strings expanded (RFC 5230 §4.5 checks are the
#: deliverer's): the compiled action's shape
Vacation = VacationAction


@dataclass(frozen=True)
class Outcome:
    """What the script decided: copies (``targets``, empty = discarded), ``redirects``, a
    ``vacation``; ``implicit_keep``: no action cancelled the implicit keep (RFC 5228 §2.10.2)."""

    targets: tuple[Target, ...]
    redirects: tuple[str, ...] = ()
    vacation: Vacation | None = None
    implicit_keep: bool = True
    #: RFC 5429: the message is refused with this reason (no targets, redirects or vacation then)
    reject: str | None = None
    #: RFC 5435: notifications to send (strings expanded; the method a valid mailto URI)
    notifications: tuple[Notify, ...] = ()
    #: RFC 5293: header edits for the stored and redirected copies (mailsrv.sieve.editheader)
    edits: tuple[Edit, ...] = ()
    #: RFC 5293: per redirect, how many of ``edits`` it gets (those made before it ran)
    redirect_edits: tuple[int, ...] = ()
    #: RFC 7352 §3: (key, seconds, last, seen) of each duplicate test that ran, for the caller to
    #: record once the recipient's copies are made (MessageView.duplicate; docs/sieve.md)
    duplicates: tuple[tuple[str, int, bool, bool], ...] = ()

    @property
    def discarded(self) -> bool:
        return not self.targets


KEEP = Outcome((Target(INBOX, frozenset(), True),))


class _Run:
    def __init__(self, msg: MessageView, max_redirects: int, variables: bool,
                 includes: Mapping[tuple[str, str], Script | None] | None = None) -> None:
        self.msg = msg
        #: RFC 6609: the resolved scripts, the includes running now, those that ran (for :once), the
        #: global variables and the current script's global declarations
        self.includes = includes or {}
        self.stack: list[tuple[str, str]] = []
        self.ran: set[tuple[str, str]] = set()
        self.globals: dict[str, str] = {}
        self.declared: set[str] = set()
        self.max_redirects = max_redirects
        self.flags: dict[str, None] = {}  # RFC 5232 §3 internal variable (ordered, unique)
        self.targets: dict[str, Target] = {}
        self.redirects: list[str] = []
        self.vacation: Vacation | None = None
        self.implicit_keep = True
        self.duplicates: list[tuple[str, int, bool, bool]] = []
        self.redirect_edits: list[int] = []
        self.actions = 0
        self.reject: str | None = None
        self.notifications: list[Notify] = []
        self.edits: list[Edit] = []
        #: RFC 5229: the script's variables (None: it does not require "variables") and ${0}..${9}
        self.vars: dict[str, str] | None = {} if variables else None
        self.matched: list[str] = []
        #: RFC 5703: the current MIME part of each foreverypart loop running, and the parts visited
        self.parts: list[Part] = []
        self.visited = 0
        #: RFC 5703 §5, §6: the message as the run began (once replace or enclose ran), the parts
        #: replaced within the message the loops walk (its offsets: start, end, new bytes), and how many
        #: edits came before the first enclose (a second one encloses that message again)
        self.orig: bytes | None = None
        self.splices: list[tuple[int, int, bytes]] = []
        self.enclosed_at: int | None = None

    def count(self) -> None:
        self.actions += 1
        if self.actions > MAX_ACTIONS:
            raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions")

    # --- RFC 5229 variables ---------------------------------------------------------------------

    def x(self, s: str) -> str:
        """``s`` with its variable references expanded (RFC 5229 §3); as it is without variables."""
        if self.vars is None or "${" not in s:
            return s
        return _VAR_REF.sub(self._ref, s)[:MAX_VARIABLE]

    def _ref(self, m: re.Match[str]) -> str:
        name = m.group(1)
        if name.isdigit():  # a match variable: "" when not set (§3.2)
            n = int(name.lstrip("0") or "0") if len(name.lstrip("0")) <= 4 else len(self.matched)  # 5 000 digits: past int()'s limit
            return self.matched[n] if n < len(self.matched) else ""
        return self.scope(name.lower()).get(name.lower(), "")  # an unset variable is "" (§3)

    def scope(self, name: str) -> dict[str, str]:
        """Where variable ``name`` lives: the shared globals once declared ``global`` (RFC 6609 §3.3)."""
        assert self.vars is not None
        return self.globals if name in self.declared else self.vars

    def flagset(self, flags: tuple[str, ...]) -> tuple[str, ...]:
        return flags if self.vars is None else normalize_flags(tuple(self.x(f) for f in flags))

    def live(self, keys: tuple[Matcher, ...]) -> tuple[Matcher, ...]:
        """The keys with their variables expanded (a key without a reference is the compiled one)."""
        if self.vars is None or not any("${" in k.key for k in keys):
            return keys
        try:
            return tuple(matcher(k.kind, self.x(k.key), k.comparator, k.relation) if "${" in k.key else k
                         for k in keys)
        except ValueError as exc:  # a :regex key that does not compile once expanded
            raise SieveRuntimeError(str(exc)) from None

    def set_var(self, c: SetVar) -> None:
        self.assign(c.name, self.x(c.value), c.modifiers)

    def assign(self, name: str, v: str, modifiers: tuple[str, ...]) -> None:
        """Variable ``name`` := ``v`` after ``modifiers`` (RFC 5229 §4; set and extracttext)."""
        assert self.vars is not None
        for m in modifiers:  # RFC 5229 §4.1, in precedence order
            if m == "lower":
                v = v.lower()
            elif m == "upper":
                v = v.upper()
            elif m == "lowerfirst":
                v = v[:1].lower() + v[1:]
            elif m == "upperfirst":
                v = v[:1].upper() + v[1:]
            elif m == "quotewildcard":
                v = v.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
            elif m == "encodeurl":  # RFC 5435 §7: every octet but the unreserved ones percent-encoded
                v = quote(v, safe="-._~")
            else:  # length
                v = str(len(v))
        where = self.scope(name)
        if name not in where and len(where) >= MAX_VARIABLES:
            raise SieveRuntimeError(f"more than {MAX_VARIABLES} variables")
        where[name] = v[:MAX_VARIABLE]

    # --- actions ----------------------------------------------------------------------------------

    def store(self, mailbox: str, flags: tuple[str, ...] | None, keep: bool) -> None:
        self.count()
        fl = frozenset(self.flags if flags is None else self.flagset(flags))
        # RFC 5228 §2.10.3: a message filed twice into one mailbox is stored once (flags joined)
        prev = self.targets.get(mailbox)
        edits = len(self.edits)
        if prev is not None:  # the copy as the first action filed it (RFC 5293)
            fl |= prev.flags
            keep |= prev.keep
            edits = prev.edits if prev.edits is not None else edits
        self.targets[mailbox] = Target(mailbox, fl, keep, edits)

    def block(self, cmds: tuple[Action, ...]) -> bool:
        """False once ``stop`` ran."""
        for c in cmds:
            if isinstance(c, If):
                for test, body in c.branches:
                    if self.test(test):
                        if not self.block(body):
                            return False
                        break
                else:
                    if c.orelse is not None and not self.block(c.orelse):
                        return False
            elif isinstance(c, FileInto):
                box = self.x(c.mailbox)
                if not box or len(box) > 255:
                    raise SieveRuntimeError(f"fileinto: {box!r} is not a mailbox name")
                self.store(box, c.flags, False)
                if not c.copy:  # RFC 3894 §3: :copy keeps the implicit keep
                    self.implicit_keep = False
            elif isinstance(c, Keep):
                self.store(INBOX, c.flags, True)
                self.implicit_keep = False
            elif isinstance(c, ErrorAction):  # RFC 5463 §5: the script fails (the message is kept)
                raise SieveRuntimeError(f"error: {self.x(c.message)}")
            elif isinstance(c, Discard):
                self.implicit_keep = False  # RFC 5228 §4.4: cancels the implicit keep only
            elif isinstance(c, Redirect):
                addr = self.x(c.address)
                if addr is not c.address and not ADDRESS.fullmatch(addr):
                    raise SieveRuntimeError(f"redirect: {addr!r} is not a mail address")
                if addr.lower() not in (r.lower() for r in self.redirects):  # §2.10.3: once per address
                    self.count()
                    if len(self.redirects) >= self.max_redirects:
                        raise SieveRuntimeError(f"more than {self.max_redirects} redirects")
                    self.redirects.append(addr)
                    self.redirect_edits.append(len(self.edits))
                if not c.copy:
                    self.implicit_keep = False
            elif isinstance(c, FlagOp):
                flags = self.flagset(c.flags)
                if c.op == "setflag":
                    self.flags = dict.fromkeys(flags)
                elif c.op == "addflag":
                    self.flags.update(dict.fromkeys(flags))
                else:
                    drop = {f.lower() for f in flags}
                    self.flags = {f: None for f in self.flags if f.lower() not in drop}
            elif isinstance(c, SetVar):
                self.set_var(c)
            elif isinstance(c, Reject):
                if self.reject is not None:
                    raise SieveRuntimeError("reject used twice")
                self.count()
                self.reject = self.x(c.reason)
                self.implicit_keep = False  # RFC 5429 §2.1
            elif isinstance(c, VacationAction):
                if self.vacation is not None:  # RFC 5230 §4: one vacation per run
                    raise SieveRuntimeError("vacation used twice")
                self.count()
                x = self.x
                self.vacation = VacationAction(x(c.reason), c.seconds, None if c.subject is None else x(c.subject),
                                         None if c.from_ is None else x(c.from_),
                                         tuple(x(a) for a in c.addresses), c.mime, x(c.handle))
            elif isinstance(c, Notify):
                self.notify(c)
            elif isinstance(c, AddHeader | DeleteHeader):
                self.edit(c)
            elif isinstance(c, ForEveryPart):
                if not self.foreverypart(c):
                    return False
            elif isinstance(c, Break):
                raise LoopBreak(c.name)
            elif isinstance(c, ExtractText):
                self.extracttext(c)
            elif isinstance(c, Replace | Enclose):
                self.mime_edit(c)
            elif isinstance(c, Include):
                if not self.include(c):
                    return False
            elif isinstance(c, Return):
                raise _Return
            elif isinstance(c, GlobalVars):
                self.declared.update(c.names)
            elif isinstance(c, Stop):
                return False
        return True

    def edit(self, c: AddHeader | DeleteHeader) -> None:
        """RFC 5293: edit the header; later tests see the edited fields. A protected field is left as it
        is (§7)."""
        fields = list(self.msg.fields)
        if isinstance(c, AddHeader):
            if c.name.lower() in PROTECTED:
                return
            self.count()
            value = encoded_value(self.x(c.value))
            entry = (c.name.lower(), value)
            at = len(fields) if c.last else 1 if fields and fields[0][0] == "return-path" else 0
            fields.insert(at, entry)
            self.edits.append(("add", c.name, value, c.last))
        else:
            if c.name in PROTECTED:
                return
            values = self.msg.decoded(c.name)
            chosen = range(len(values)) if not c.index else [
                i for i in [c.index - 1 if c.index > 0 else len(values) + c.index] if 0 <= i < len(values)]
            keys = self.live(c.keys)
            drop = tuple(i for i in chosen if not keys or any(k(values[i]) for k in keys))
            if not drop:
                return
            self.count()
            seen = -1
            kept = []
            for f in fields:
                if f[0] == c.name:
                    seen += 1
                    if seen in drop:
                        continue
                kept.append(f)
            fields = kept
            self.edits.append(("delete", c.name, drop, None))
        self.msg = replace(self.msg, fields=tuple(fields), _decoded={}, _index={}, _addresses={})

    def notify(self, c: Notify) -> None:
        """RFC 5435 §3: one notification more (an identical one is sent once, §3.8)."""
        x = self.x
        n = Notify(x(c.method), None if c.from_ is None else x(c.from_), x(c.importance),
                   tuple(x(o) for o in c.options), None if c.message is None else x(c.message))
        if parse_mailto(n.method) is None:  # RFC 5435 §3.1: built from variables, checked now
            raise SieveRuntimeError(f"notify: {n.method!r} is not a usable mailto URI")
        if n.importance not in ("1", "2", "3"):
            raise SieveRuntimeError('notify: :importance is "1", "2" or "3"')
        if any(p.method == n.method and p.options == n.options for p in self.notifications):
            return
        self.count()
        if len(self.notifications) >= MAX_NOTIFICATIONS:
            raise SieveRuntimeError(f"more than {MAX_NOTIFICATIONS} notifications")
        self.notifications.append(n)

    # --- RFC 5703 MIME parts ------------------------------------------------------------------------

    def foreverypart(self, c: ForEveryPart) -> bool:
        """RFC 5703 §3: the block once per part (:func:`loop_parts`), each then the current part; False
        once ``stop`` ran. At most MAX_PARTS_VISITED parts per run, all loops together."""
        root = self.msg.root()
        if root is None:
            return True
        try:
            return self.loop(c, loop_parts(root, self.parts[-1] if self.parts else None))
        finally:
            if not self.parts and self.splices:  # RFC 5703 §5: the loops are done, tests see the new parts
                self.splices = []
                self.view(True)

    def loop(self, c: ForEveryPart, parts: list[Part]) -> bool:
        for part in parts:
            self.visited += 1
            if self.visited > MAX_PARTS_VISITED:
                raise SieveRuntimeError(f"foreverypart: more than {MAX_PARTS_VISITED} MIME parts visited")
            self.parts.append(part)
            try:
                if not self.block(c.body):  # type: ignore[arg-type]
                    return False
            except LoopBreak as b:
                if b.name is None or b.name == c.name:
                    return True
                raise  # an outer loop's name
            finally:
                self.parts.pop()
        return True

    def extracttext(self, c: ExtractText) -> None:
        """RFC 5703 §7: the current part's text (its first ``:first`` characters) into a variable; at
        most the variable's MAX_VARIABLE characters are kept, so at most 4 octets each are decoded."""
        root = self.msg.root()
        assert self.parts and root is not None and self.msg.message is not None  # checked at compile time
        limit = min(MAX_BODY_TEXT, 4 * MAX_VARIABLE)
        text = text_of(self.msg.message, self.parts[-1], limit)
        self.assign(c.name, text[:c.first] if c.first else text, c.modifiers)

    # --- RFC 5703 §5 replace, §6 enclose ------------------------------------------------------------

    def current(self, upto: int | None = None) -> bytes:
        """The message as the run's edits (the first ``upto`` of them) make it."""
        assert self.orig is not None
        edits = self.edits if upto is None else self.edits[:upto]
        cut = head_end(self.orig)
        body = body_of(edits)
        return apply_edits(self.orig[:cut], edits) + (self.orig[cut:] if body is None else body)

    def view(self, whole: bool) -> None:
        """Later tests see the header fields of :meth:`current` (``whole``: its parts too; not while a
        loop walks the parts of the message it began with)."""
        new = self.current()
        extra: dict[str, Any] = {"message": new, "size": len(new), "_mime": {}} if whole else {}
        self.msg = replace(self.msg, fields=tuple(header_fields(new)), _decoded={}, _index={},
                           _addresses={}, **extra)

    def mime_edit(self, c: Replace | Enclose) -> None:
        """RFC 5703 §5, §6: header edits and a new body (mailsrv.sieve.mimeedit); later actions deliver,
        and later tests see, the message they make."""
        what = "replace" if isinstance(c, Replace) else "enclose"
        msg = self.msg
        if self.orig is None:  # the delivery gives the message's first BODY_MAX octets
            if msg.message is None or msg.size > len(msg.message) or head_end(msg.message) < 0:
                raise SieveRuntimeError(f"{what}: the message is too large or has no header block")
            self.orig = msg.message
        self.count()
        text = self.x(c.text)
        if len(text) > MAX_TEXT:
            raise SieveRuntimeError(f"{what}: the text is longer than {MAX_TEXT} characters")
        if isinstance(c, Enclose):
            self.enclose(c, text)
        else:
            self.replace(c, text)
        if len(self.current()) > MAX_MESSAGE:
            raise SieveRuntimeError(f"{what}: the message made is larger than {MAX_MESSAGE} octets")
        self.view(not self.parts)

    def set_fields(self, drop: tuple[str, ...] | list[str], add: list[tuple[str, bytes]]) -> None:
        """Header edits: every occurrence of the fields ``drop`` deleted, then ``add`` (name, value as
        written) at the end."""
        for name in dict.fromkeys(drop):
            n = len(self.msg.raw(name))
            if n and name not in PROTECTED:
                self.edits.append(("delete", name, tuple(range(n)), None))
        for name, value in add:
            self.edits.append(("add", name, value, True))

    def replace(self, c: Replace, text: str) -> None:
        """RFC 5703 §5: the current part (outside a loop: the message's body, its content fields with it)
        becomes the replacement; :subject and :from set the message's fields."""
        entity = mime_entity(text) if c.mime else text_entity(text)
        if not self.parts:  # outside a loop the view is the message as it is now
            self.splices = []
        base = self.msg.message
        root = self.msg.root()
        assert base is not None and root is not None
        part = self.parts[-1] if self.parts else root
        start, end = (root.body_start, len(base)) if part is root else (part.header_start, part.body_end)
        if any(s <= start and end <= e for s, e, _ in self.splices):
            return  # within a part replaced before: gone
        # RFC 2046 §5.1.1: a boundary line of the message inside the new part would cut it short
        lines = b"\n" + entity
        if any(b"\n--" + p.params["boundary"].encode("utf-8", "replace") in lines
               for p in root.walk() if p.is_multipart and p.params.get("boundary")):
            raise SieveRuntimeError("replace: the text holds a boundary line of the message")
        fields, rest = split_entity(entity)
        if part is root:  # the message's own content fields are the replacement's
            self.set_fields(CONTENT_FIELDS, [("MIME-Version", b" 1.0")]
                            + [(field_name(n), v) for n, v in fields if n in CONTENT_FIELDS and n != "mime-version"])
            new = rest[2:]
        else:
            new = entity
        if c.from_ is not None:
            sender = self.x(c.from_)
            if not one_address(sender):
                raise SieveRuntimeError(f"replace: :from {sender!r} is not a mail address")
            self.set_fields(("from",), [("From", encoded_value(sender))])
        if c.subject is not None:
            self.set_fields(("subject",), [("Subject", encoded_value(self.x(c.subject)))])
        self.splices = [s for s in self.splices if not (start <= s[0] and s[1] <= end)] + [(start, end, new)]
        out, at = [], 0
        for s, e, b in sorted(self.splices):
            out += [base[at:s], b]
            at = e
        out.append(base[at:])
        spliced = b"".join(out)
        self.edits.append(("body", "", spliced[head_end(base):], None))

    def enclose(self, c: Enclose, text: str) -> None:
        """RFC 5703 §6: a new message: the :headers fields, Subject, the enclosed message's Date, From,
        To, Cc and Message-ID unless :headers set them, a multipart/mixed body (the text, then the
        message as message/rfc822). A second enclose encloses the message the first one enclosed."""
        if self.enclosed_at is None:
            self.enclosed_at = len(self.edits)
        inner = self.current(self.enclosed_at)
        inner_fields = header_fields(inner)
        add: list[tuple[str, bytes]] = []
        for h in c.headers:
            got = header_field(self.x(h))
            if got is None:
                raise SieveRuntimeError(f"enclose: :headers {h!r} is not a field we may add")
            add.append(got)
        given = {n.lower() for n, _ in add}
        if c.subject is not None:
            add.append(("Subject", encoded_value(self.x(c.subject))))
            given.add("subject")
        for name, value in inner_fields:
            if (name in ENCLOSE_COPIED or name == "subject") and name not in given:
                add.append((field_name(name), value))
        ctype, body = enclosure(text, inner)
        add += [("MIME-Version", b" 1.0"), ("Content-Type", b" " + ctype.encode())]
        self.set_fields([n for n, _ in self.msg.fields], add)
        self.edits.append(("body", "", body, None))

    def mime_parts(self, opts: MimeOpts) -> list[Part]:
        """RFC 5703 §4: the parts a ``:mime`` test reads (none without the message's bytes)."""
        root = self.msg.root()
        if root is None:
            return []
        return list(scope(root, self.parts[-1] if self.parts else None, opts.anychild))

    def mime_values(self, t: HeaderTest, opts: MimeOpts) -> list[str]:
        out: list[str] = []
        for part in self.mime_parts(opts):
            fields = self.msg.part_fields(part)
            for name in t.names:
                raws = _nth([v for n, v in fields if n == name], t.index)
                if raws or (opts.option and name == "content-type"):  # its RFC 2045 default
                    out += option_values(part, name, raws, opts)
        return out

    def include(self, c: Include) -> bool:
        """RFC 6609 §3.2: run the included script (its own variables but the globals); False once
        ``stop`` ran in it (which ends every script)."""
        key = (c.location, c.name)
        if c.once and key in self.ran:
            return True
        inc = self.includes.get(key)
        if inc is None:
            if c.optional:
                return True
            raise SieveRuntimeError(f"include: no {c.location} script {c.name!r}")
        if key in self.stack:  # RFC 6609 §3.2: a script that includes itself, directly or not
            raise SieveRuntimeError(f"include: {c.name!r} includes itself")
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError(f"includes nested more than {MAX_INCLUDE_DEPTH} deep")
        self.ran.add(key)
        self.stack.append(key)
        saved = self.vars, self.declared
        self.vars, self.declared = ({} if "variables" in inc.extensions else None), set()
        try:
            return self.block(inc.commands)
        except _Return:
            return True
        finally:
            self.vars, self.declared = saved
            self.stack.pop()

    # --- tests -------------------------------------------------------------------------------------

    def match(self, values: list[str] | tuple[str, ...], keys: tuple[Matcher, ...]) -> bool:
        """Any value against any key (RFC 5228 §2.7); :count on the number of values (RFC 5231 §4.2);
        a :matches success sets ${0}..${9} when the script has variables (RFC 5229 §3.2)."""
        keys = self.live(keys)
        if keys and keys[0].kind == "count":
            return _count(list(values), keys)
        if self.vars is None:
            return any(k(v) for v in values for k in keys)
        for v in values:
            for k in keys:
                if (k.kind == "matches" and not k.numeric) or k.kind == "regex":
                    caps = k.capture(v)
                    if caps is not None:
                        self.matched = caps[:10]
                        return True
                elif k(v):
                    return True
        return False

    def test(self, t: Node) -> bool:
        msg = self.msg
        if isinstance(t, HeaderTest):
            if t.mime is not None:  # RFC 5703 §4.1
                return self.match(self.mime_values(t, t.mime), t.keys)
            # RFC 5228 §5.7: true when any occurrence of any named field matches any key
            return self.match([v for n in t.names for v in _nth(msg.decoded(n), t.index)], t.keys)
        if isinstance(t, AddressTest):
            return self.match(self.address_values(t), t.keys)
        if isinstance(t, DateTest):
            return self.match(self.date_values(t), t.keys)
        if isinstance(t, NotifyMethodTest):
            uris = [self.x(u) for u in t.uris]
            valid = all(parse_mailto(u) is not None for u in uris)
            if t.capability is None:  # RFC 5435 §5: every URI is one we can notify
                return valid
            # RFC 5436 §2.2 / RFC 5435 §6: "online" is "maybe" for mail; other capabilities are not known
            return valid and t.capability == "online" and self.match(["maybe"], t.keys)
        if isinstance(t, StringTest):  # RFC 5229 §5
            return self.match([self.x(src) for src in t.sources], t.keys)
        if isinstance(t, MailboxExists):  # RFC 5490 §3.1: every named folder exists
            boxes = msg.mailboxes
            return boxes is not None and all(self.x(n) in boxes or self.x(n).upper() == INBOX for n in t.names)
        if isinstance(t, BodyTest):
            return self.match(msg.body_values(t.transform, t.types), t.keys)
        if isinstance(t, AllOf):
            return all(self.test(x) for x in t.tests)
        if isinstance(t, AnyOf):
            return any(self.test(x) for x in t.tests)
        if isinstance(t, NotTest):
            return not self.test(t.test)
        if isinstance(t, ExistsTest):
            if t.mime is not None:  # RFC 5703 §4.3: a part (any, with :anychild) with every field
                return any({n for n, _ in msg.part_fields(p)}.issuperset(t.names) for p in self.mime_parts(t.mime))
            return all(msg.has(n) for n in t.names)
        if isinstance(t, SizeTest):
            return msg.size > t.limit if t.over else msg.size < t.limit
        if isinstance(t, HasFlagTest):
            return self.match(list(self.flags), t.keys)
        if isinstance(t, DuplicateTest):
            return self.duplicate(t)
        if isinstance(t, EnvironmentTest):  # RFC 5183 §4: an unknown item is false
            value = msg.environment.get(t.name)
            return value is not None and self.match([value], t.keys)
        if isinstance(t, VerdictTest):  # RFC 5235 §3.2, §3.3 ("0": not tested)
            return self.match([getattr(msg.verdicts, t.kind)], t.keys)
        assert isinstance(t, Const)
        return t.value

    def duplicate(self, t: DuplicateTest) -> bool:
        """RFC 7352 §3: the id (none: false, nothing tracked), looked up in the account's state."""
        if t.uniqueid is not None:
            ident = self.x(t.uniqueid)
        else:
            vals = self.msg.raw(t.header or "message-id")
            ident = " ".join(unfold(vals[0]).decode("utf-8", "replace").split()) if vals else ""
        if not ident:
            return False
        key = hashlib.sha256(f"{self.x(t.handle)}\0{ident}".encode("utf-8", "surrogatepass")).hexdigest()
        for k, _, _, seen in self.duplicates:  # §3: the same id again in one run: the first answer
            if k == key:
                return seen
        check = self.msg.duplicate
        seen = check is not None and check(key)
        self.duplicates.append((key, t.seconds, t.last, seen))
        return seen

    def address_values(self, t: AddressTest) -> list[str]:
        out: list[str] = []
        if t.envelope:
            for part in t.names:
                addr = self.msg.envelope_from if part == "from" else self.msg.envelope_to
                if not addr:  # RFC 5228 §5.4: the null reverse path is "" for :all, nothing else
                    if t.part == "all":
                        out.append("")
                    continue
                local, _, domain = addr.rpartition("@") if "@" in addr else (addr, "", "")
                _part(out, t.part, local, domain, addr)
            return out
        if t.mime is not None:  # RFC 5703 §4.2: the fields of the current part (or of every one within)
            for p in self.mime_parts(t.mime):
                fields = self.msg.part_fields(p)
                for name in t.names:
                    for local, host in addresses_of(_nth([v for n, v in fields if n == name], t.index)):
                        _part(out, t.part, local, host, f"{local}@{host}")
            return out
        for name in t.names:
            if t.index:  # RFC 5260 §6: the addresses of the n-th occurrence only
                pairs = addresses_of(_nth(self.msg.raw(name), t.index))
            else:
                pairs = list(self.msg.addresses(name))
            for local, host in pairs:
                _part(out, t.part, local, host, f"{local}@{host}")
        return out

    def date_values(self, t: DateTest) -> list[str]:
        """RFC 5260 §4, §5: the date part of each (or the :index-th) occurrence of the field that parses
        as a date (a Received field: after its last ";"), or of the current time."""
        if t.header is None:
            now = datetime.fromtimestamp(self.msg.now or time.time(), UTC)
            return [_date_part(_in_zone(now, t.zone or None), t.part)]
        out = []
        for v in _nth(self.msg.decoded(t.header), t.index):
            if t.header == "received":
                v = v.rpartition(";")[2]
            try:
                dt = parsedate_to_datetime(v.strip()[:200])
            except (TypeError, ValueError, IndexError, OverflowError):
                continue  # RFC 5260 §4.1: a field that is not a date does not match
            if dt.tzinfo is None:  # RFC 5322 §3.3 "-0000": the zone is not known: taken as UTC
                dt = dt.replace(tzinfo=UTC)
            out.append(_date_part(dt if t.zone == "" else _in_zone(dt, t.zone), t.part))
        return out


def _nth(values: list[bytes] | tuple[str, ...] | list[str], index: int) -> Any:
    """RFC 5260 §6: every value (0), the index-th (1-based), or the -index-th from the end (:last)."""
    if not index:
        return values
    i = index - 1 if index > 0 else len(values) + index
    return values[i:i + 1] if 0 <= i < len(values) else []


def _in_zone(dt: datetime, zone: str | None) -> datetime:
    """``dt`` in ``zone`` ("+hhmm"), or in the server's zone when None (RFC 5260 §4.1)."""
    if zone is None:
        return dt.astimezone()
    minutes = int(zone[1:3]) * 60 + int(zone[3:5])
    return dt.astimezone(timezone(timedelta(minutes=-minutes if zone[0] == "-" else minutes)))


#: RFC 5260 §4.2: each date-part of a date as the test compares it
_DATE_PARTS: dict[str, Callable[[datetime], str]] = {
    "year": lambda d: f"{d.year:04d}",
    "month": lambda d: f"{d.month:02d}",
    "day": lambda d: f"{d.day:02d}",
    "date": lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}",
    "julian": lambda d: str((d.date() - date(1858, 11, 17)).days),  # the Modified Julian Day
    "hour": lambda d: f"{d.hour:02d}",
    "minute": lambda d: f"{d.minute:02d}",
    "second": lambda d: f"{d.second:02d}",
    "time": lambda d: f"{d.hour:02d}:{d.minute:02d}:{d.second:02d}",
    "iso8601": lambda d: d.replace(microsecond=0).isoformat(),
    "std11": format_datetime,
    "zone": lambda d: _zone(int((d.utcoffset() or timedelta()).total_seconds()) // 60),
    "weekday": lambda d: str(d.isoweekday() % 7),  # 0 is Sunday
}


def _zone(minutes: int) -> str:
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _date_part(dt: datetime, part: str) -> str:
    """RFC 5260 §4.2: one date-part of ``dt`` as the test compares it."""
    return _DATE_PARTS[part](dt)




def _count(values: list[str], keys: tuple[Matcher, ...]) -> bool:
    """RFC 5231 §4.2: the number of values (field occurrences, addresses, flags; an empty one, such as
    the null reverse path, is not counted) compared with each key."""
    n = str(sum(1 for v in values if v != ""))
    return any(k(n) for k in keys)


def _part(out: list[str], part: str, local: str, domain: str, whole: str) -> None:
    if part == "all":
        out.append(whole)
    elif part == "localpart":
        out.append(local)
    elif part == "domain":
        out.append(domain)
    else:  # RFC 5233 §4: :user before the separator, :detail after it (no separator: no detail)
        user, sep, detail = local.partition(DETAIL_SEPARATOR)
        if part == "user":
            out.append(user)
        elif sep:
            out.append(detail)


def run(script: Script, msg: MessageView, *, max_redirects: int = MAX_REDIRECTS) -> Outcome:
    """The outcome of ``script`` on ``msg``; raises :class:`SieveRuntimeError` (keep the message)."""
    r = _Run(msg, max_redirects, "variables" in script.extensions, script.includes)
    try:
        r.block(script.commands)
    except _Return:  # RFC 6609 §3.4: return in the main script ends it
        pass
    if r.reject is not None:
        # RFC 5429 §2.3: reject with keep, fileinto, redirect or vacation is an error (the message is kept)
        if r.targets or r.redirects or r.vacation is not None:
            raise SieveRuntimeError("reject together with keep, fileinto, redirect or vacation")
        return Outcome((), (), None, False, r.reject, duplicates=tuple(r.duplicates))
    targets = dict(r.targets)
    if r.implicit_keep and INBOX not in targets:
        # RFC 5232 §5: the implicit keep takes the internal variable's flags
        targets[INBOX] = Target(INBOX, frozenset(r.flags), True)
    return Outcome(tuple(targets.values()), tuple(r.redirects), r.vacation, r.implicit_keep,
                   notifications=tuple(r.notifications), edits=tuple(r.edits), duplicates=tuple(r.duplicates),
                   redirect_edits=tuple(r.redirect_edits))
