"""The Sieve language (RFC 5228 and extensions): checks a parsed script and compiles it into an
immutable :class:`Script` of typed nodes (mailsrv.sieve.nodes) that :func:`mailsrv.sieve.interp.run` walks.

Every rule that RFC 5228 makes a compile error is one here, with its line: an
unknown command or test, an extension used without ``require``, a wrong
argument, ``elsif``/``else`` without ``if``, ``require`` after another command.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from mailsrv.sieve.grammar import (
    MAX_SCRIPT_SIZE,
    Argument,
    Command,
    Number,
    SieveError,
    StringList,
    Tag,
    Test,
    parse,
)
from mailsrv.sieve.match import COMPARATORS, RELATIONS, Matcher, matcher
from mailsrv.sieve.mimeedit import Enclose, Replace, header_field, one_address
from mailsrv.sieve.mimeparts import MIME_OPTIONS, Break, ExtractText, ForEveryPart, MimeOpts
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

#: What ``require`` accepts (ManageSieve announces it as SIEVE, RFC 5804 §1.7)
EXTENSIONS: tuple[str, ...] = (
    "fileinto",  # RFC 5228 §4.1
    "envelope",  # RFC 5228 §5.4
    "copy",  # RFC 3894
    "imap4flags",  # RFC 5232
    "vacation",  # RFC 5230
    "vacation-seconds",  # RFC 6131
    "subaddress",  # RFC 5233
    "relational",  # RFC 5231
    "body",  # RFC 5173
    "mailbox",  # RFC 5490 §3: fileinto :create, mailboxexists
    "variables",  # RFC 5229
    "reject",  # RFC 5429 §2.2
    "ereject",  # RFC 5429 §2.1
    "enotify",  # RFC 5435 with the mailto method (RFC 5436): notify, valid_notify_method, :encodeurl
    "editheader",  # RFC 5293: addheader, deleteheader (Received, Auto-Submitted, Return-Path protected)
    "include",  # RFC 6609: include (:personal, :global, :once, :optional), return, global
    "date",  # RFC 5260 §4, §5: date, currentdate
    "index",  # RFC 5260 §6: :index, :last
    "regex",  # draft-ietf-sieve-regex-01 (RE2: no backtracking; mailsrv.sieve.match)
    "spamtest",  # RFC 5235 §3.2: our policy's X-Spam-Score (mailsrv.sieve.verdicts)
    "spamtestplus",  # RFC 5235 §3.2: spamtest :percent
    "virustest",  # RFC 5235 §3.3: our policy's X-Virus-Status
    "duplicate",  # RFC 7352: per account state, bounded (mailsrv.delivery.sieve)
    "environment",  # RFC 5183: name, version, host, domain, location "MS", phase "during"
    "ihave",  # RFC 5463: ihave (known at compile time), error
    "foreverypart",  # RFC 5703 §3: foreverypart, break (mailsrv.sieve.mimeparts)
    "mime",  # RFC 5703 §4: header/address/exists :mime, :anychild, :type/:subtype/:contenttype/:param
    "extracttext",  # RFC 5703 §7
    "replace",  # RFC 5703 §5 (mailsrv.sieve.mimeedit)
    "enclose",  # RFC 5703 §6
    "comparator-i;ascii-numeric",  # RFC 4790 §9.1 (RFC 5228 §2.7.3: needs its require)
    "comparator-i;octet",  # RFC 5228 §2.7.3 (always available; require accepts it)
    "comparator-i;ascii-casemap",
)

#: RFC 7352 §3.4: the period of duplicate without :seconds, and the longest one (Pigeonhole's
#: sieve_duplicate_default_period / max_period are 12 hours / 2 days)
DUPLICATE_DEFAULT_SECONDS = 86400
DUPLICATE_MAX_SECONDS = 7 * 86400
#: RFC 5230 §4.1: :days defaults to 7; Pigeonhole's sieve_vacation_min_period / max_period are 1 / 60 days
VACATION_DEFAULT_DAYS = 7
VACATION_MIN_SECONDS = 0  # RFC 6131 §2: 0 means "reply every time" (still once per message)
VACATION_MAX_SECONDS = 60 * 86400
#: RFC 5232 §3 system flags, in their canonical case (\Recent cannot be set)
SYSTEM_FLAGS = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}
# RFC 3501 §9 flag-keyword = atom: no ( ) { SP CTL % * " \ ]
_KEYWORD = re.compile(r"[^\x00-\x20\x7f-\uffff(){%*\"\\\]]+")
#: RFC 5229 §3 variable-name (identifier) for ``set``
_VARNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: RFC 5229 §4: set's modifiers by precedence group (applied 40, 30, 20, then 10)
SET_MODIFIERS = {"lower": 40, "upper": 40, "lowerfirst": 30, "upperfirst": 30, "quotewildcard": 20, "length": 10}
#: RFC 5260 §6: the largest :index (a message has at most MAX_FIELDS fields anyway)
MAX_INDEX = 1000
#: RFC 5260 §4.2 date-part
DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601",
              "std11", "zone", "weekday")
#: RFC 5260 §4.1 :zone "+hhmm" / "-hhmm"
ZONE = re.compile(r"[+-](?:[01][0-9]|2[0-3])[0-5][0-9]")
ADDRESS = re.compile(r"[^@\s<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")

# --- argument checking ---------------------------------------------------------

MATCH_TYPES = ("is", "contains", "matches")
ADDRESS_PARTS = {"all": "", "localpart": "", "domain": "", "user": "subaddress", "detail": "subaddress"}


class _Args:
    """Tagged arguments first, then positional ones (RFC 5228 §2.6.2); checked against a spec."""

    def __init__(self, where: Command | Test, ext: frozenset[str]) -> None:
        self.where = where
        self.name = where.name
        self.ext = ext
        self.tags: dict[str, Argument | None] = {}
        self.match = "is"
        self.relation = ""
        self.comparator = "i;ascii-casemap"
        self.part = "all"
        self.positional: list[Argument] = []

    def err(self, line: int, msg: str) -> SieveError:
        return SieveError(line, f"{self.name}: {msg}")

    def take(self, *, values: dict[str, str] | None = None, flags: tuple[str, ...] = (),
             match: bool = False, address: bool = False) -> _Args:
        """``values``: tag -> kind of its value ("str", "list", "num"); ``flags``: tags without a value;
        ``match``: the MATCH-TYPE and COMPARATOR groups; ``address``: the ADDRESS-PART group."""
        values = values or {}
        args = self.where.args
        i = 0
        seen_groups: set[str] = set()
        while i < len(args) and isinstance(args[i], Tag):
            tag = args[i]
            assert isinstance(tag, Tag)
            t = tag.name
            group = None
            if match and t in MATCH_TYPES:
                group, self.match = "match type", t
            elif match and t == "regex":  # draft-ietf-sieve-regex §3
                if "regex" not in self.ext:
                    raise self.err(tag.line, ':regex needs require "regex"')
                group, self.match = "match type", t
            elif match and t in ("value", "count"):  # RFC 5231 §4: :value / :count "<relation>"
                if "relational" not in self.ext:
                    raise self.err(tag.line, f':{t} needs require "relational"')
                group, self.match = "match type", t
                i += 1
                v = args[i] if i < len(args) else None
                if not isinstance(v, StringList) or v.bracketed or v.items[0].lower() not in RELATIONS:
                    raise self.err(tag.line, f":{t} needs one of " + ", ".join(f'"{r}"' for r in RELATIONS))
                self.relation = v.items[0].lower()
            elif address and t in ADDRESS_PARTS:
                if ADDRESS_PARTS[t] and ADDRESS_PARTS[t] not in self.ext:
                    raise self.err(tag.line, f":{t} needs require \"{ADDRESS_PARTS[t]}\"")
                group, self.part = "address part", t
            elif match and t == "comparator":
                group = "comparator"
                i += 1
                v = args[i] if i < len(args) else None
                if not isinstance(v, StringList) or v.bracketed:
                    raise self.err(tag.line, ":comparator needs a string")
                self.comparator = v.items[0]
                if self.comparator not in COMPARATORS:
                    # RFC 5228 §2.7.3: an unknown comparator is an error
                    raise self.err(tag.line, f"unknown comparator {self.comparator!r}")
                if self.comparator == "i;ascii-numeric" and "comparator-i;ascii-numeric" not in self.ext:
                    raise self.err(tag.line, 'i;ascii-numeric needs require "comparator-i;ascii-numeric"')
            elif t in values:
                group = t
                i += 1
                v = args[i] if i < len(args) else None
                kind = values[t]
                if kind == "num" and not isinstance(v, Number):
                    raise self.err(tag.line, f":{t} needs a number")
                if kind in ("str", "list") and not isinstance(v, StringList):
                    raise self.err(tag.line, f":{t} needs a string{' list' if kind == 'list' else ''}")
                if kind == "str" and isinstance(v, StringList) and v.bracketed:
                    raise self.err(tag.line, f":{t} needs a string, not a list")
                self.tags[t] = v
            elif t in flags:
                group = t
                self.tags[t] = None
            else:
                raise self.err(tag.line, f"unknown tagged argument :{t}")
            if group in seen_groups:
                raise self.err(tag.line, f"{group} given twice")
            seen_groups.add(group)
            i += 1
        self.positional = list(args[i:])
        for a in self.positional:
            if isinstance(a, Tag):
                raise self.err(a.line, f"tagged argument :{a.name} after the positional arguments")
        return self

    def strings(self, kinds: str) -> list[tuple[str, ...]]:
        """The positional arguments, each "s" (one string) or "l" (a string list)."""
        line = self.where.line
        if len(self.positional) != len(kinds):
            raise self.err(line, f"expects {len(kinds)} argument{'s' if len(kinds) != 1 else ''}, "
                           f"got {len(self.positional)}")
        out = []
        for a, k in zip(self.positional, kinds, strict=True):
            if not isinstance(a, StringList):
                raise self.err(a.line, "expects a string" + (" list" if k == "l" else ""))
            if k == "s" and a.bracketed:
                raise self.err(a.line, "expects a string, not a list")
            out.append(a.items)
        return out

    def matchers(self, keys: tuple[str, ...]) -> tuple[Matcher, ...]:
        if self.comparator == "i;ascii-numeric" and self.match in ("contains", "matches"):
            # RFC 4790 §9.1: i;ascii-numeric has equality and order, no substring operation
            raise self.err(self.where.line, f":{self.match} cannot use i;ascii-numeric")
        if self.match == "regex" and self.comparator == "i;ascii-numeric":
            raise self.err(self.where.line, ":regex cannot use i;ascii-numeric")
        try:  # with variables, a key that holds a reference compiles after expansion, at run time
            return tuple(matcher(self.match, k, self.comparator, self.relation)
                         if not (self.match == "regex" and "variables" in self.ext and "${" in k)
                         else Matcher("regex", k, self.comparator == "i;ascii-casemap") for k in keys)
        except ValueError as exc:
            raise self.err(self.where.line, str(exc)) from None


def _no_tests(c: Command | Test) -> None:
    if c.tests:
        raise SieveError(c.line, f"{c.name}: takes no test")


def normalize_flags(items: tuple[str, ...]) -> tuple[str, ...]:
    """RFC 5232 §3: each string is a space-separated list of flags; system flags take their
    canonical case, invalid ones are ignored (§3: "SHOULD ignore"), duplicates dropped."""
    out: dict[str, None] = {}
    for s in items:
        for f in s.split():
            if f.startswith("\\"):
                canon = SYSTEM_FLAGS.get(f.lower())
                if canon:
                    out[canon] = None
            elif _KEYWORD.fullmatch(f):
                out[f] = None
    return tuple(out)


def _one(value: Any) -> str | None:
    """A tag's string value (None: the tag was not given)."""
    return value.items[0] if isinstance(value, StringList) else None


def _header_names(c: Test | Command, names: tuple[str, ...]) -> tuple[str, ...]:
    for n in names:  # RFC 5322 §3.6.8 field-name = 1*ftext (printable US-ASCII except ":")
        if not n or any(not ("!" <= ch <= "~") or ch == ":" for ch in n):
            raise SieveError(c.line, f"{c.name}: {n!r} is not a header field name")
    return tuple(n.lower() for n in names)


# --- the compiler ----------------------------------------------------------------


class _Compiler:
    def __init__(self) -> None:
        self.ext: frozenset[str] = frozenset()
        #: extensions blocks under ``ihave`` use (RFC 5463 §4)
        self.ihave: frozenset[str] = frozenset()
        #: RFC 5703 §3: the names of the foreverypart loops around the command compiled now ("": none)
        self.loops: list[str] = []

    def need(self, ext: str, line: int, what: str) -> None:
        if ext not in self.ext:
            # RFC 5228 §3.2: using an extension without require is an error
            raise SieveError(line, f"{what} needs require \"{ext}\"")

    def block(self, cmds: tuple[Command, ...], top: bool = False) -> tuple[Action, ...]:
        out: list[Action] = []
        i = 0
        if top:
            req: set[str] = set()
            while i < len(cmds) and cmds[i].name == "require":
                req |= self.require(cmds[i])
                i += 1
            self.ext = frozenset(req)
        while i < len(cmds):
            c = cmds[i]
            if c.name == "if":
                branches = [self.branch(c)]
                else_: tuple[Action, ...] | None = None
                while i + 1 < len(cmds) and cmds[i + 1].name in ("elsif", "else"):
                    i += 1
                    nxt = cmds[i]
                    if nxt.name == "elsif":
                        branches.append(self.branch(nxt))
                        continue
                    if nxt.args or nxt.tests:
                        raise SieveError(nxt.line, "else: takes no arguments")
                    else_ = self.body(nxt)
                    break
                out.append(If(tuple(branches), else_))
            elif c.name in ("elsif", "else"):
                raise SieveError(c.line, f"{c.name} without a preceding if")
            elif c.name == "require":
                raise SieveError(c.line, "require must come before every other command")  # RFC 5228 §3.2
            elif c.name == "foreverypart":
                out.append(self.foreverypart(c))
            else:
                if c.block is not None:
                    raise SieveError(c.line, f"{c.name}: takes no block")
                out.append(self.action(c))
            i += 1
        return tuple(out)

    def require(self, c: Command) -> set[str]:
        a = _Args(c, self.ext).take()
        _no_tests(c)
        if c.block is not None:
            raise SieveError(c.line, "require: takes no block")
        (names,) = a.strings("l")
        for n in names:
            if n not in EXTENSIONS:
                raise SieveError(c.line, f"require: unsupported extension {n!r}")
        return set(names)

    def test_of(self, c: Command) -> Node:
        if len(c.tests) != 1:
            raise SieveError(c.line, f"{c.name}: needs one test")
        if c.args:
            raise SieveError(c.line, f"{c.name}: takes a test, not arguments")
        return self.test(c.tests[0])

    def branch(self, c: Command) -> tuple[Node, tuple[Action, ...]]:
        """An if/elsif's test and block. RFC 5463 §4: under ``ihave`` the block may use the extensions it
        names without require; when one is not supported the block is not compiled (never runs)."""
        t = c.tests[0] if len(c.tests) == 1 else None
        if t is None or t.name != "ihave":
            return self.test_of(c), self.body(c)
        test = self.test_of(c)
        assert isinstance(test, Const)
        if not test.value:
            if c.block is None:
                raise SieveError(c.line, f"{c.name}: needs a block")
            return test, ()
        ext = self.ext
        self.ext = ext | {n for n in self.ihave_names(t) if n in EXTENSIONS}
        self.ihave |= self.ext  # the run and the delivery look at a script's extensions (body, variables...)
        try:
            return test, self.body(c)
        finally:
            self.ext = ext

    def ihave_names(self, t: Test) -> tuple[str, ...]:
        self.need("ihave", t.line, "ihave")
        (names,) = _Args(t, self.ext).take().strings("l")
        return names

    def body(self, c: Command) -> tuple[Action, ...]:
        if c.block is None:
            raise SieveError(c.line, f"{c.name}: needs a block")
        return self.block(c.block)

    def action(self, c: Command) -> Action:
        _no_tests(c)
        name, line = c.name, c.line
        if name == "stop":
            _Args(c, self.ext).take().strings("")
            return Stop()
        if name == "error":  # RFC 5463 §5
            self.need("ihave", line, "error")
            ((message,),) = _Args(c, self.ext).take().strings("s")
            return ErrorAction(message)
        if name == "keep":
            a = _Args(c, self.ext).take(values=self.flag_tag(line))
            a.strings("")
            return Keep(self.tag_flags(a))
        if name == "discard":
            _Args(c, self.ext).take().strings("")
            return Discard()
        if name == "fileinto":
            self.need("fileinto", line, "fileinto")
            # RFC 5490 §3.2 :create: a missing folder is created (mailsrv creates it anyway: docs/sieve.md)
            create = ("create",) if "mailbox" in self.ext else ()
            a = _Args(c, self.ext).take(values=self.flag_tag(line), flags=self.copy_tag() + create)
            ((box,),) = a.strings("s")
            if not box or len(box) > 255:
                raise SieveError(line, "fileinto: needs a mailbox name of 1 to 255 characters")
            return FileInto(box, "copy" in a.tags, self.tag_flags(a))
        if name == "redirect":
            a = _Args(c, self.ext).take(flags=self.copy_tag())
            ((addr,),) = a.strings("s")
            addr = addr.strip()
            if addr.startswith("<") and addr.endswith(">"):
                addr = addr[1:-1]
            if not ADDRESS.fullmatch(addr) and not self.dynamic(addr):
                # RFC 5228 §4.2: a syntactically invalid address is an error (with variables: at run time)
                raise SieveError(line, f"redirect: {addr!r} is not a mail address")
            return Redirect(addr, "copy" in a.tags)
        if name in ("setflag", "addflag", "removeflag"):
            self.need("imap4flags", line, name)
            (flags,) = _Args(c, self.ext).take().strings("l")
            return FlagOp(name, self.flag_list(flags))
        if name == "vacation":
            return self.vacation(c)
        if name in ("reject", "ereject"):
            self.need(name, line, name)
            ((reason,),) = _Args(c, self.ext).take().strings("s")
            return Reject(reason, name == "ereject")
        if name == "include":
            self.need("include", line, "include")
            a = _Args(c, self.ext).take(flags=("personal", "global", "once", "optional"))
            ((script,),) = a.strings("s")
            if "personal" in a.tags and "global" in a.tags:
                raise SieveError(line, "include: :personal and :global exclude each other")  # RFC 6609 §3.2
            if not script or len(script) > 128 or "/" in script or any(ch < " " for ch in script):
                raise SieveError(line, f"include: {script!r} is not a script name")
            if self.dynamic(script):  # RFC 6609 §3.2: a constant name
                raise SieveError(line, "include: the script name cannot hold variables")
            return Include(script, "global" if "global" in a.tags else "personal", "once" in a.tags,
                           "optional" in a.tags)
        if name == "return":
            self.need("include", line, "return")
            _Args(c, self.ext).take().strings("")
            return Return()
        if name == "global":
            self.need("include", line, "global")
            self.need("variables", line, "global")  # RFC 6609 §3.3
            (names,) = _Args(c, self.ext).take().strings("l")
            for n in names:
                if not _VARNAME.fullmatch(n):
                    raise SieveError(line, f"global: {n!r} is not a variable name")
            return GlobalVars(tuple(n.lower() for n in names))
        if name == "notify":
            return self.notify(c)
        if name in ("break", "extracttext"):
            return self.loop_command(c)
        if name in ("replace", "enclose"):
            return self.mime_edit(c)
        if name == "addheader":
            self.need("editheader", line, name)
            a = _Args(c, self.ext).take(flags=("last",))
            (field_name,), (text,) = a.strings("ss")
            _header_names(c, (field_name,))  # RFC 5293 §4: a valid field name
            return AddHeader(field_name, text, "last" in a.tags)
        if name == "deleteheader":
            self.need("editheader", line, name)
            # RFC 5293 §5: its own :index/:last, with or without require "index"
            a = _Args(c, self.ext).take(match=True, values={"index": "num"}, flags=("last",))
            if len(a.positional) == 1:
                ((field_name,),) = a.strings("s")
                keys: tuple[str, ...] = ()
            else:
                (field_name,), keys = a.strings("sl")
            return DeleteHeader(_header_names(c, (field_name,))[0], a.matchers(keys), self.index_of(c, a))
        if name == "set":
            self.need("variables", line, "set")
            modifiers = {**SET_MODIFIERS, **({"encodeurl": 15} if "enotify" in self.ext else {})}
            a = _Args(c, self.ext).take(flags=tuple(modifiers))
            var, value = a.strings("ss")
            if not _VARNAME.fullmatch(var[0]):
                raise SieveError(line, f"set: {var[0]!r} is not a variable name")  # RFC 5229 §4
            mods = sorted(a.tags, key=lambda m: -modifiers[m])  # RFC 5435 §7: :encodeurl is 15
            groups = [modifiers[m] for m in mods]
            if len(set(groups)) != len(groups):
                raise SieveError(line, "set: two modifiers of the same precedence")  # RFC 5229 §4
            return SetVar(var[0].lower(), value[0], tuple(mods))
        raise SieveError(line, f"unknown command {name!r}")  # RFC 5228 §2.9 / §3.2

    def foreverypart(self, c: Command) -> ForEveryPart:
        """RFC 5703 §3: ``foreverypart [:name string] block``."""
        self.need("foreverypart", c.line, "foreverypart")
        _no_tests(c)
        a = _Args(c, self.ext).take(values={"name": "str"})
        a.strings("")
        name = a.tags.get("name")
        label = name.items[0] if isinstance(name, StringList) else ""
        self.loops.append(label)
        try:
            return ForEveryPart(label or None, self.body(c))
        finally:
            self.loops.pop()

    def mime_edit(self, c: Command) -> Replace | Enclose:
        """RFC 5703 §5 ``replace [:mime] [:subject string] [:from string] <replacement: string>`` and
        §6 ``enclose [:subject string] [:headers string-list] <text: string>``."""
        self.need(c.name, c.line, c.name)
        if c.name == "replace":
            a = _Args(c, self.ext).take(values={"subject": "str", "from": "str"}, flags=("mime",))
            ((text,),) = a.strings("s")
            subject, from_ = (_one(a.tags.get(t)) for t in ("subject", "from"))
            if from_ is not None and "${" not in from_ and not one_address(from_):
                raise SieveError(c.line, f"replace: :from {from_!r} is not a mail address")
            return Replace(text, "mime" in a.tags, subject, from_)
        a = _Args(c, self.ext).take(values={"subject": "str", "headers": "list"})
        ((text,),) = a.strings("s")
        if self.loops:  # deviation (RFC 5703 §6 allows it): the loop walks parts the enclosure moves
            raise SieveError(c.line, "enclose: not inside a foreverypart loop")
        headers = a.tags.get("headers")
        heads = tuple(headers.items) if isinstance(headers, StringList) else ()
        for h in heads:
            if "${" not in h and header_field(h) is None:
                raise SieveError(c.line, f"enclose: :headers {h!r} is not a field we may add")
        return Enclose(text, _one(a.tags.get("subject")), heads)

    def loop_command(self, c: Command) -> Action:
        """RFC 5703 §3 ``break [:name string]`` and §7 ``extracttext [MODIFIER] [:first n] varname``,
        both only inside a foreverypart loop (a compile error elsewhere, as Pigeonhole)."""
        if c.name == "break":
            self.need("foreverypart", c.line, "break")
            a = _Args(c, self.ext).take(values={"name": "str"})
            a.strings("")
            name = a.tags.get("name")
            label = name.items[0] if isinstance(name, StringList) else None
            if not self.loops or (label is not None and label not in self.loops):
                what = f'a foreverypart loop named "{label}"' if label is not None else "a foreverypart loop"
                raise SieveError(c.line, f"break: not inside {what}")
            return Break(label)
        self.need("extracttext", c.line, "extracttext")
        self.need("variables", c.line, "extracttext")  # RFC 5703 §7: it sets a variable
        modifiers = {**SET_MODIFIERS, **({"encodeurl": 15} if "enotify" in self.ext else {})}
        a = _Args(c, self.ext).take(values={"first": "num"}, flags=tuple(modifiers))
        ((var,),) = a.strings("s")
        if not _VARNAME.fullmatch(var):
            raise SieveError(c.line, f"extracttext: {var!r} is not a variable name")
        if not self.loops:
            raise SieveError(c.line, "extracttext: only inside a foreverypart loop")
        mods = sorted((m for m in a.tags if m != "first"), key=lambda m: -modifiers[m])
        groups = [modifiers[m] for m in mods]
        if len(set(groups)) != len(groups):
            raise SieveError(c.line, "extracttext: two modifiers of the same precedence")
        first = a.tags.get("first")
        return ExtractText(var.lower(), first.value if isinstance(first, Number) else 0, tuple(mods))

    def mime_tags(self, options: bool) -> dict[str, Any]:
        """RFC 5703 §4: the tags :mime brings (with require "mime"): :anychild, and for header the
        MIME-OPTS (:type, :subtype, :contenttype, :param list)."""
        if "mime" not in self.ext:
            return {}
        flags: tuple[str, ...] = ("mime", "anychild") + (MIME_OPTIONS[:3] if options else ())
        return {"flags": flags, "values": {"param": "list"} if options else {}}

    def mime_of(self, t: Test, a: _Args) -> MimeOpts | None:
        opts = [o for o in MIME_OPTIONS if o in a.tags]
        if "mime" not in a.tags:
            for tag in ("anychild", *opts):  # RFC 5703 §4.1: they modify :mime only
                if tag in a.tags:
                    raise SieveError(t.line, f"{t.name}: :{tag} needs :mime")
            return None
        if len(opts) > 1:
            raise SieveError(t.line, f"{t.name}: :{opts[0]} and :{opts[1]} exclude each other")
        param = a.tags.get("param")
        return MimeOpts("anychild" in a.tags, opts[0] if opts else "",
                        tuple(p.lower() for p in param.items) if isinstance(param, StringList) else ())

    def dynamic(self, s: str) -> bool:
        """A string that variables expand at run time (RFC 5229 §3)."""
        return "variables" in self.ext and "${" in s

    def flag_list(self, items: tuple[str, ...]) -> tuple[str, ...]:
        # with variables the flags are checked after expansion, at run time
        return tuple(items) if "variables" in self.ext else normalize_flags(items)

    def copy_tag(self) -> tuple[str, ...]:
        return ("copy",) if "copy" in self.ext else ()

    def flag_tag(self, line: int) -> dict[str, str]:
        return {"flags": "list"} if "imap4flags" in self.ext else {}

    def tag_flags(self, a: _Args) -> tuple[str, ...] | None:
        v = a.tags.get("flags")
        return self.flag_list(v.items) if isinstance(v, StringList) else None

    def notify(self, c: Command) -> Notify:
        """RFC 5435 §3: notify [:from s] [:importance "1"|"2"|"3"] [:options l] [:message s] method."""
        from mailsrv.sieve.notify import parse_mailto

        self.need("enotify", c.line, "notify")
        a = _Args(c, self.ext).take(values={"from": "str", "importance": "str", "options": "list", "message": "str"})
        ((method,),) = a.strings("s")
        if not self.dynamic(method) and parse_mailto(method) is None:  # RFC 5435 §3.1: checked when known
            raise SieveError(c.line, f"notify: {method!r} is not a mailto URI with 1 to 8 addresses "
                             "(the only method here)")
        imp = a.tags.get("importance")
        importance = imp.items[0] if isinstance(imp, StringList) else "2"
        if importance not in ("1", "2", "3") and not self.dynamic(importance):
            raise SieveError(c.line, 'notify: :importance is "1", "2" or "3"')  # RFC 5435 §3.4
        frm, opts, msg = (a.tags.get(k) for k in ("from", "options", "message"))
        return Notify(method, frm.items[0] if isinstance(frm, StringList) else None, importance,
                      opts.items if isinstance(opts, StringList) else (),
                      msg.items[0] if isinstance(msg, StringList) else None)

    def vacation(self, c: Command) -> VacationAction:
        self.need("vacation", c.line, "vacation")
        values = {"days": "num", "subject": "str", "from": "str", "addresses": "list", "handle": "str"}
        if "vacation-seconds" in self.ext:
            values["seconds"] = "num"
        a = _Args(c, self.ext).take(values=values, flags=("mime",))
        ((reason,),) = a.strings("s")
        if "days" in a.tags and "seconds" in a.tags:
            raise SieveError(c.line, "vacation: :days and :seconds exclude each other")  # RFC 6131 §2
        days, secs = a.tags.get("days"), a.tags.get("seconds")
        if isinstance(secs, Number):
            seconds = secs.value
        else:  # RFC 5230 §4.1: the minimum is 1 day
            seconds = max(1, days.value if isinstance(days, Number) else VACATION_DEFAULT_DAYS) * 86400
        seconds = min(max(seconds, VACATION_MIN_SECONDS), VACATION_MAX_SECONDS)
        subject, frm, handle = (a.tags.get(k) for k in ("subject", "from", "handle"))
        addrs = a.tags.get("addresses")
        subj = subject.items[0] if isinstance(subject, StringList) else None
        from_ = frm.items[0] if isinstance(frm, StringList) else None
        if isinstance(handle, StringList):
            h = handle.items[0]
        else:  # RFC 5230 §4.2: without :handle, the same reason, subject and from are the same vacation
            h = "auto:" + hashlib.sha256("\0".join((reason, subj or "", from_ or "", str("mime" in a.tags)))
                                         .encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return VacationAction(reason, seconds, subj, from_,
                              addrs.items if isinstance(addrs, StringList) else (), "mime" in a.tags, h)

    def index_tags(self) -> dict[str, Any]:
        """RFC 5260 §6: :index <n> and :last on header, address and date (with require "index")."""
        return {"values": {"index": "num"}, "flags": ("last",)} if "index" in self.ext else {}

    def index_of(self, t: Test | Command, a: _Args) -> int:
        n = a.tags.get("index")
        if not isinstance(n, Number):
            if "last" in a.tags:
                raise SieveError(t.line, f"{t.name}: :last needs :index")  # RFC 5260 §6
            return 0
        if not 1 <= n.value <= MAX_INDEX:
            raise SieveError(t.line, f"{t.name}: :index needs a number from 1 to {MAX_INDEX}")
        return -n.value if "last" in a.tags else n.value

    def date(self, t: Test) -> DateTest:
        self.need("date", t.line, t.name)
        current = t.name == "currentdate"
        extra = {} if current else self.index_tags()
        values: dict[str, str] = {"zone": "str", **extra.get("values", {})}
        flags: tuple[str, ...] = extra.get("flags", ()) + (() if current else ("originalzone",))
        a = _Args(t, self.ext).take(match=True, values=values, flags=flags)
        got = a.strings("sl" if current else "ssl")
        header = None if current else _header_names(t, got[0])[0]
        part = got[-2][0].lower()
        if part not in DATE_PARTS:
            raise SieveError(t.line, f"{t.name}: unknown date part {part!r}")  # RFC 5260 §4.2
        zone_arg = a.tags.get("zone")
        if zone_arg is not None and "originalzone" in a.tags:
            raise SieveError(t.line, f"{t.name}: :zone and :originalzone exclude each other")
        zone = zone_arg.items[0] if isinstance(zone_arg, StringList) else "" if "originalzone" in a.tags else None
        if zone and not ZONE.fullmatch(zone):
            raise SieveError(t.line, f"{t.name}: :zone needs \"+hhmm\" or \"-hhmm\"")  # RFC 5260 §4.1.1
        return DateTest(header, part, zone, a.matchers(got[-1]), 0 if current else self.index_of(t, a))

    def test(self, t: Test) -> Node:
        name = t.name
        if name in ("true", "false"):
            _no_tests(t)
            _Args(t, self.ext).take().strings("")
            return Const(name == "true")
        if name == "not":
            _Args(t, self.ext).take().strings("")
            if len(t.tests) != 1:
                raise SieveError(t.line, "not: needs one test")
            return NotTest(self.test(t.tests[0]))
        if name in ("allof", "anyof"):
            _Args(t, self.ext).take().strings("")
            if not t.tests:
                raise SieveError(t.line, f"{name}: needs a test list")
            tests = tuple(self.test(x) for x in t.tests)
            return AllOf(tests) if name == "allof" else AnyOf(tests)
        _no_tests(t)
        if name == "header":
            a = _Args(t, self.ext).take(match=True, **_merged(self.index_tags(), self.mime_tags(True)))
            names, keys = a.strings("ll")
            return HeaderTest(_header_names(t, names), a.matchers(keys), self.index_of(t, a), self.mime_of(t, a))
        if name in ("date", "currentdate"):
            return self.date(t)
        if name in ("address", "envelope"):
            if name == "envelope":
                self.need("envelope", t.line, "envelope")
            a = _Args(t, self.ext).take(match=True, address=True, **(
                _merged(self.index_tags(), self.mime_tags(False)) if name == "address" else {}))
            names, keys = a.strings("ll")
            if name == "envelope":
                parts = tuple(n.lower() for n in names)
                for p in parts:
                    if p not in ("from", "to"):  # RFC 5228 §5.4: unsupported parts are errors
                        raise SieveError(t.line, f"envelope: unknown envelope part {p!r}")
                return AddressTest(parts, a.part, a.matchers(keys), True)
            return AddressTest(_header_names(t, names), a.part, a.matchers(keys), False, self.index_of(t, a),
                               self.mime_of(t, a))
        if name == "exists":
            a = _Args(t, self.ext).take(**self.mime_tags(False))
            (names,) = a.strings("l")
            return ExistsTest(_header_names(t, names), self.mime_of(t, a))
        if name == "size":
            a = _Args(t, self.ext).take(flags=("over", "under"))
            over, under = "over" in a.tags, "under" in a.tags
            if over == under or len(a.positional) != 1 or not isinstance(a.positional[0], Number):
                raise SieveError(t.line, "size: needs :over or :under and a number")
            return SizeTest(over, a.positional[0].value)
        if name == "string":
            self.need("variables", t.line, "string")
            a = _Args(t, self.ext).take(match=True)
            sources, keys = a.strings("ll")
            return StringTest(sources, a.matchers(keys))
        if name == "valid_notify_method":  # RFC 5435 §5
            self.need("enotify", t.line, name)
            (uris,) = _Args(t, self.ext).take().strings("l")
            return NotifyMethodTest(uris, None)
        if name == "notify_method_capability":  # RFC 5435 §6
            self.need("enotify", t.line, name)
            a = _Args(t, self.ext).take(match=True)
            uri, cap, keys = a.strings("ssl")
            return NotifyMethodTest(uri, cap[0].lower(), a.matchers(keys))
        if name == "mailboxexists":
            self.need("mailbox", t.line, "mailboxexists")
            (names,) = _Args(t, self.ext).take().strings("l")
            return MailboxExists(tuple(names))
        if name == "body":
            self.need("body", t.line, "body")
            a = _Args(t, self.ext).take(match=True, flags=("raw", "text"), values={"content": "list"})
            (keys,) = a.strings("l")
            given = [k for k in ("raw", "text", "content") if k in a.tags]
            if len(given) > 1:  # RFC 5173 §5: one BODY-TRANSFORM
                raise SieveError(t.line, "body: :raw, :content and :text exclude each other")
            if a.match == "count":
                raise SieveError(t.line, "body: :count is not allowed")  # RFC 5173 §4
            content = a.tags.get("content")
            types = tuple(x.lower() for x in content.items) if isinstance(content, StringList) else ()
            return BodyTest(given[0] if given else "text", types, a.matchers(keys))
        if name == "ihave":  # RFC 5463 §4: true when every named extension is supported
            return Const(all(n in EXTENSIONS for n in self.ihave_names(t)))
        if name == "duplicate":  # RFC 7352 §3
            self.need("duplicate", t.line, name)
            a = _Args(t, self.ext).take(values={"handle": "str", "header": "str", "uniqueid": "str", "seconds": "num"},
                                        flags=("last",))
            a.strings("")
            if "header" in a.tags and "uniqueid" in a.tags:  # RFC 7352 §3.1
                raise SieveError(t.line, "duplicate: :header and :uniqueid exclude each other")
            handle, header, unique, secs = (a.tags.get(k) for k in ("handle", "header", "uniqueid", "seconds"))
            seconds = secs.value if isinstance(secs, Number) else DUPLICATE_DEFAULT_SECONDS
            return DuplicateTest(handle.items[0] if isinstance(handle, StringList) else "",
                                 _header_names(t, header.items)[0] if isinstance(header, StringList) else None,
                                 unique.items[0] if isinstance(unique, StringList) else None,
                                 min(seconds, DUPLICATE_MAX_SECONDS), "last" in a.tags)  # §3.4: capped
        if name == "environment":  # RFC 5183 §4
            self.need("environment", t.line, name)
            a = _Args(t, self.ext).take(match=True)
            item, keys = a.strings("sl")
            return EnvironmentTest(item[0].lower(), a.matchers(keys))
        if name in ("spamtest", "virustest"):
            if name == "spamtest" and "spamtestplus" not in self.ext:  # RFC 5235 §3.2: plus includes it
                self.need("spamtest", t.line, name)
            if name == "virustest":
                self.need("virustest", t.line, name)
            a = _Args(t, self.ext).take(match=True, flags=("percent",) if name == "spamtest" else ())
            if "percent" in a.tags:
                self.need("spamtestplus", t.line, "spamtest :percent")
            (keys,) = a.strings("s")
            kind = "virus" if name == "virustest" else "spam_percent" if "percent" in a.tags else "spam"
            return VerdictTest(kind, a.matchers(keys))
        if name == "hasflag":
            self.need("imap4flags", t.line, "hasflag")
            a = _Args(t, self.ext).take(match=True)
            (keys,) = a.strings("l")
            return HasFlagTest(a.matchers(keys))
        raise SieveError(t.line, f"unknown test {name!r}")


def _merged(*specs: dict[str, Any]) -> dict[str, Any]:
    """Tag specs of :meth:`_Args.take` (``values`` and ``flags``) joined."""
    values: dict[str, str] = {}
    flags: tuple[str, ...] = ()
    for spec in specs:
        values.update(spec.get("values", {}))
        flags += spec.get("flags", ())
    return {"values": values, "flags": flags}


def compile(text: str, max_size: int = MAX_SCRIPT_SIZE) -> Script:
    """Parse and check ``text``; raises :class:`SieveError` (and nothing else) when it is not a valid
    script of the supported extensions (EXTENSIONS)."""
    cmds = parse(text, max_size)
    comp = _Compiler()
    commands = comp.block(cmds, top=True)
    return Script(commands, comp.ext | comp.ihave, len(text))
