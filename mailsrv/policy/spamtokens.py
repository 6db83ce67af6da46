"""The spam learner's tokens of one message: what SpamBayes, SpamAssassin's Bayes and rspamd feed their classifiers.

Pure and bounded: bytes in, a set of strings out, never raises on malformed mail;
every regex is linear (no nested quantifiers) and the text read is capped
(:data:`TEXT_LIMIT`), so a hostile megabyte costs milliseconds, not seconds.

Token families (the prefix says where a token came from, so "free" in the
subject and "free" in the body are different evidence):

* body words: lowercased, split on white space with surrounding punctuation
  stripped ("free!!" and "$100" stay themselves, as in SpamBayes), 3 to
  :data:`MAX_WORD` characters; a longer run gives one ``skip:<first char><length
  bucket>`` token (SpamBayes' "skip" tokens: base64 blobs, tracking strings and
  long URLs say "something long was here" without filling the database); CJK
  text gives bigrams; adjacent word pairs (``a b``) as rspamd's and CRM114's
  bigrams do, from the first :data:`BIGRAM_WORDS` words;
* HTML: the text a reader sees (tags, scripts, styles and comments removed),
  plus ``tag:`` tokens for the markup spam uses (font, img, table, form,
  hidden styles) and ``url:`` hosts from href/src;
* URLs and addresses in the text: ``url:`` the host and its registrable domain
  (public suffix list, offline), ``proto:`` the scheme, ``urlip`` for a numeric
  host, ``email:`` the domain of an address;
* header fields (except the ones we add, see :data:`OUR_FIELDS`, and the ones a
  mail store or client adds after delivery, see :data:`MAILBOX_FIELDS`): ``h:``
  the field name (one ``h:list-*`` for all of a list manager's fields, see
  :data:`LIST_FIELDS`); the subject's words (``s:``, and ``S:`` as written when
  they have capitals) and shape (capitals, "!!", "$"); From (``from:`` domain and registrable domain, ``fromlp:`` the local
  part's shape, ``fn:`` display name words), To/Cc (``to:`` recipient count
  bucket, named or bare addresses), Reply-To's domain, Message-ID (``mid:``
  domain and ``midshape:`` letters->a, digits->9), X-Mailer/User-Agent words,
  Date (``date:`` zone and shape), Content-Type (``bnd:`` the boundary's shape,
  ``cs:`` charsets, ``ct:`` types), List-Id (``list-id:`` the id, one token),
  Precedence/X-Priority/Importance/Organization words. Not Received (ours is on
  every message, and in a public corpus the relays name the collector's
  spamtraps, not the spam);
* MIME structure: part types, transfer encodings, charsets, attachment extensions.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Iterable

from mailsrv import mime
from mailsrv._speedups import tokenize
from mailsrv.policy.dmarc import org_domain
from mailsrv.policy.headers import split_fields

#: Distinct tokens taken from one message (bounds memory and the database work per message).
MAX_TOKENS = 3000
#: Characters of decoded text tokenized per message.
TEXT_LIMIT = 200_000
#: Body words outside 3..MAX_WORD characters are noise; longer ones give a "skip" token (SpamBayes: 12).
MIN_WORD, MAX_WORD = 3, 20
#: Adjacent word pairs are taken from the first this many words of a text (bigrams double the tokens).
BIGRAM_WORDS = 300
#: Header fields we (or the MTA) add at delivery or when filing: never tokens.
OUR_FIELDS = frozenset({b"received", b"return-path", b"delivered-to", b"authentication-results",
                        b"x-spam-flag", b"x-spam-score", b"x-spam-status", b"x-virus-status",
                        b"x-original-to", b"received-spf", b"arc-authentication-results", b"x-spam-level",
                        b"x-spam-checker-version", b"x-spam-report"})
#: Header fields a mail store, fetcher or client writes after delivery (mbox Status/X-Status/X-UID/
#: Content-Length/Lines, Thunderbird's X-Mozilla-*, X-Keywords, Delivery-Date, UW-IMAP's X-IMAP*): never
#: tokens. A message judged at SMTP time never carries them, one learned from an archive (``mailsrv policy
#: learn``) often does: learned, they would describe the archive, not the sender (in the SpamAssassin public
#: corpus, X-Keywords is on 30 % of the spam and 0.6 % of the ham because of how it was collected).
MAILBOX_FIELDS = frozenset({b"status", b"x-status", b"x-keywords", b"x-uid", b"content-length", b"lines",
                            b"delivery-date", b"x-mozilla-status", b"x-mozilla-status2", b"x-mozilla-keys",
                            b"x-imap", b"x-imapbase", b"x-evolution", b"x-evolution-source"})
_SKIP_FIELDS = OUR_FIELDS | MAILBOX_FIELDS
#: Fields a mailing list manager adds (RFC 2369 List-*, RFC 2919 List-Id, Mailman's, ezmlm's) besides every
#: ``List-*``: all give the one token ``h:list-*``. They say one thing (it came through a list), and Fisher's
#: combining counts every clue as independent evidence: a dozen of them outvoted the text of spam posted to a
#: list (5-fold cross-validation on the development half: 94.9 -> 96.1 % caught, see docs/policy.md).
LIST_FIELDS = frozenset({b"x-beenthere", b"x-mailman-version", b"errors-to", b"precedence", b"x-mailing-list",
                         b"mailing-list", b"x-loop"})
_LIST_ID = re.compile(r"<([^<>\s]{1,200})>")
#: Header field values longer than this are cut before any regex sees them.
MAX_FIELD = 2000
#: Subject words taken with their case (``S:`` tokens).
SUBJECT_WORDS = 30

_URL = re.compile(r"(?i)\b(https?|ftp)://(?:[^\s/@<>\"']{0,64}@)?([a-z0-9][a-z0-9.\-]{0,252})")
_TAG_NAME = re.compile(r"<\s{0,5}([a-z][a-z0-9]{0,9})\b", re.I)
_HREF = re.compile(r"(?i)\b(?:href|src)\s{0,5}=\s{0,5}[\"']?\s{0,5}(https?)://([a-z0-9][a-z0-9.\-]{0,252})")
_HIDDEN = re.compile(r"(?i)display\s{0,3}:\s{0,3}none|visibility\s{0,3}:\s{0,3}hidden|font-size\s{0,3}:\s{0,3}[01]px")
_EMAIL = re.compile(r"[a-z0-9._%+\-]{1,64}@([a-z0-9][a-z0-9.\-]{0,252}\.[a-z]{2,24})", re.I)
_STRIP = "\"'()[]{}<>.,;:*`|"
#: Scripts written without spaces (tokenize.is_cjk's ranges): such a run gives bigrams, not one word.
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\u1100-\u11ff\u3130-\u318f"
                  "\u31f0-\u31ff\uf900-\ufaff\uff66-\uff9d\U00020000-\U0003ffff]")
_MARKUP = frozenset({"font", "img", "table", "form", "script", "style", "center", "map", "area", "iframe",
                     "input", "embed", "object", "blink", "marquee", "base"})


def shape(text: str, limit: int = 40) -> str:
    """Letters -> a/A, digits -> 9, runs of one class collapsed: "<20021001.GA123@x.org>" -> "<9.A9@a.a>"."""
    out: list[str] = []
    for ch in text[:limit]:
        if ch.isdigit():
            c = "9"
        elif ch.isalpha():
            c = "A" if ch.isupper() else "a"
        else:
            c = ch
        if not out or out[-1] != c or c not in "9aA":
            out.append(c)
    return "".join(out)


def _bucket(n: int) -> str:
    return str(n) if n < 5 else "5-9" if n < 10 else "10+"


def _cjk(term: str, prefix: str) -> Iterable[str]:
    for t in tokenize.terms(tokenize.normalize(term)):
        if len(t) == 2 and tokenize.is_cjk(ord(t[0])):
            yield prefix + t


def words(text: str, prefix: str = "", bigrams: bool = True) -> set[str]:
    """Word tokens of ``text`` (lowercased, punctuation around a word stripped), CJK bigrams, skip tokens,
    and adjacent pairs among the first :data:`BIGRAM_WORDS` words (a skipped word breaks a pair)."""
    out: set[str] = set()
    seq: list[str] = []  # the words in order, "" where something was skipped
    for w in text.lower().split():
        w = w.strip(_STRIP)
        size = len(w)
        if MIN_WORD <= size <= MAX_WORD and w.isascii():
            seq.append("num:" + _bucket(size) if w.isdigit() else w)
        elif size < MIN_WORD:
            seq.append("")
        elif _CJK.search(w):
            out.update(_cjk(w, prefix))
            seq.append("")
        elif size > MAX_WORD:
            out.add(f"{prefix}skip:{w[0]}{size // 10 * 10}")
            seq.append("")
        else:
            seq.append(w)
    out.update([prefix + w for w in seq if w])
    if bigrams:
        head = seq[:BIGRAM_WORDS]
        out.update([f"{prefix}{a} {b}" for a, b in zip(head, head[1:], strict=False) if a and b])
    return out


def host_tokens(host: str, prefix: str) -> list[str]:
    """``prefix``host and ``prefix``its registrable domain (and ``urlip`` style for numeric hosts)."""
    host = host.lower().strip(".-")
    if not host:
        return []
    if host.replace(".", "").isdigit():
        parts = host.split(".")
        return [prefix + "ip", prefix + "ip:" + ".".join(parts[:2])]
    out = [prefix + host]
    if "." in host:
        reg = org_domain(host)
        if reg != host:
            out.append(prefix + reg)
    return out


def _subject(subject: str) -> set[str]:
    out = words(subject, "s:")
    out.update(subject_case(subject))
    letters = [c for c in subject if c.isalpha()]
    if len(letters) >= 8:
        caps = sum(c.isupper() for c in letters) / len(letters)
        out.add("s:caps:" + ("high" if caps > 0.7 else "mixed" if caps > 0.3 else "low"))
    for mark in ("!!", "??", "$", "%", "  "):
        if mark in subject:
            out.add("s:has:" + mark.replace(" ", "_"))
    if subject[-8:].strip() and any(c.isdigit() for c in subject[-8:]) and any(c.isalpha() for c in subject[-8:]):
        out.add("s:tail:" + shape(subject.split()[-1] if subject.split() else "", 12))
    return out


def subject_case(subject: str) -> list[str]:
    """``S:`` the subject's words of :data:`MIN_WORD` to :data:`MAX_WORD` characters written with a capital, as
    written (SpamBayes keeps the subject's case: "FREE" and "Free" are other evidence than "free"), from its
    first :data:`SUBJECT_WORDS` words."""
    out = []
    for w in subject.split(maxsplit=SUBJECT_WORDS)[:SUBJECT_WORDS]:
        w = w.strip(_STRIP)
        if MIN_WORD <= len(w) <= MAX_WORD and w != w.lower():
            out.append("S:" + w)
    return out


def _header_tokens(message: bytes, structure: mime.MessageStructure) -> set[str]:
    out: set[str] = set()
    for name, value, _raw in split_fields(message):
        if name in _SKIP_FIELDS:
            continue
        field = name.decode("ascii", "replace")
        out.add("h:list-*" if name.startswith(b"list-") or name in LIST_FIELDS else "h:" + field)
        value = value[:MAX_FIELD]
        if name in (b"x-mailer", b"user-agent"):
            text = mime.decode_header(value)
            out.update(words(text, "xm:", bigrams=False))
            out.add("xmshape:" + shape(text, 30))
        elif name == b"date":
            text = value.decode("latin-1").strip()
            out.add("date:" + shape(text, 40))
            out.add("date:zone:" + (text.split()[-1][:10] if text.split() else ""))
        elif name == b"content-type":
            m = re.search(rb"(?i)boundary\s{0,3}=\s{0,3}\"?([^\";\s]{1,100})", value)
            if m:
                out.add("bnd:" + shape(m.group(1).decode("latin-1"), 30))
        elif name == b"list-id":  # RFC 2919: "phrase <id>": the id alone (its words are one fact too)
            text = mime.decode_header(value[:300]).lower()
            lid = _LIST_ID.search(text)
            out.add("list-id:" + (lid.group(1) if lid else text.strip()[:100]))
        elif name in (b"precedence", b"x-priority", b"x-msmail-priority", b"importance", b"organization"):
            out.update(words(mime.decode_header(value)[:200], field + ":", bigrams=False))
    out.update(_subject(structure.subject or ""))
    for addr in structure.addresses(b"from")[:1]:
        if addr.host:
            out.update(host_tokens(addr.host, "from:"))
        if addr.mailbox:
            out.add("fromlp:" + shape(addr.mailbox, 20))
        if addr.name:
            out.update(words(mime.decode_header(addr.name.encode("latin-1", "replace")), "fn:", bigrams=False))
        else:
            out.add("fn:none")
    for addr in structure.addresses(b"reply-to")[:1]:
        if addr.host:
            out.update(host_tokens(addr.host, "replyto:")[-1:])
    rcpts = structure.addresses(b"to") + structure.addresses(b"cc")
    out.add("to:count:" + _bucket(len(rcpts)))
    for addr in rcpts[:3]:  # not their domains: at a server those are our own (and a corpus' spamtrap)
        out.add("to:named" if addr.name else "to:bare")
    mid = structure.message_id
    if mid is None:
        out.add("mid:none")
    else:
        out.add("midshape:" + shape(mid, 40))
        if "@" in mid:
            out.update(host_tokens(mid.rpartition("@")[2], "mid:")[-1:])
    return out


def _html(text: str, out: set[str]) -> str:
    """Tokens of HTML markup into ``out``; the visible text returned (entities decoded)."""
    for proto, host in _HREF.findall(text):
        out.update(host_tokens(host, "url:"))
        out.add("proto:" + proto.lower())
    for tag in _TAG_NAME.findall(text[:TEXT_LIMIT]):
        tag = tag.lower()
        if tag in _MARKUP:
            out.add("tag:" + tag)
    if _HIDDEN.search(text):
        out.add("tag:hidden")
    visible = strip_tags(text)
    if "&" in visible:
        visible = htmllib.unescape(visible)
    out.add("html")
    return visible


def strip_tags(html: str) -> str:
    """The text of ``html`` without tags, comments, scripts and styles, in one pass (str.find moves forward
    only: linear however the markup is broken). "<" not followed by a letter, "/" or "!" is text, as in
    browsers; an unclosed tag, comment or script hides the rest, as in browsers."""
    lower = html.lower()
    out: list[str] = []
    i, n = 0, len(html)
    while i < n:
        j = html.find("<", i)
        if j < 0:
            out.append(html[i:])
            break
        nxt = html[j + 1:j + 2]
        if not (nxt.isascii() and (nxt.isalpha() or nxt in "/!")):
            out.append(html[i:j + 1])
            i = j + 1
            continue
        out.append(html[i:j])
        out.append(" ")
        if lower.startswith("<!--", j):
            k = lower.find("-->", j + 4)
            i = n if k < 0 else k + 3
            continue
        k = lower.find(">", j + 1)
        if k < 0:
            break
        name = lower[j + 1:j + 7]
        if name.startswith(("script", "style")):
            end = lower.find("</" + ("script" if name.startswith("script") else "style"), k)
            k = n if end < 0 else lower.find(">", end)
            if k < 0:
                break
        i = k + 1
    return "".join(out)


def tokens(message: bytes) -> set[str]:
    """The learner's tokens of one message (pure; never raises on malformed mail)."""
    structure = mime.parse(message)
    out = _header_tokens(message, structure)
    attachments = 0
    for part in structure.parts():
        ctype = part.mime_type.lower()
        out.add("ct:" + ctype)
        if part.is_multipart:
            continue
        if part.encoding:
            out.add("cte:" + part.encoding.lower())
        charset = part.params.get("charset")
        if charset:
            out.add("cs:" + charset.lower()[:30])
        if part.filename:
            attachments += 1
            ext = part.filename.rpartition(".")[2].lower()
            out.add("ext:" + (ext if 0 < len(ext) <= 8 else "?"))
    out.add("attach:" + _bucket(attachments))
    budget = TEXT_LIMIT
    for part in mime.text_parts(structure):
        if budget <= 0 or len(out) >= MAX_TOKENS:
            break
        text = mime.part_text(message, part, limit=budget)
        budget -= len(text)
        if part.subtype == "html":
            text = _html(text, out)
        for proto, host in _URL.findall(text):
            out.update(host_tokens(host, "url:"))
            out.add("proto:" + proto.lower())
        for host in _EMAIL.findall(text):
            out.update(host_tokens(host, "email:")[-1:])
        out.update(words(_URL.sub(" ", text)))
    if len(out) > MAX_TOKENS:
        out = set(sorted(out)[:MAX_TOKENS])
    return out
