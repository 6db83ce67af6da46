"""Sample messages shared by the MIME tests and make_dovecot_fixtures.py (keys "generated/<name>")."""

from __future__ import annotations


def crlf(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# RFC 2046 §5.1.1 example (preamble, epilogue, implicit text/plain parts)
RFC2046_MULTIPART = crlf(
    """From: Nathaniel Borenstein <nsb@bellcore.com>
To: Ned Freed <ned@innosoft.com>
Date: Sun, 21 Mar 1993 23:56:48 -0800 (PST)
Subject: Sample message
MIME-Version: 1.0
Content-type: multipart/mixed; boundary="simple boundary"

This is the preamble.  It is to be ignored, though it
is a handy place for composition agents to include an
explanatory note to non-MIME conformant readers.

--simple boundary

This is implicitly typed plain US-ASCII text.
It does NOT end with a linebreak.
--simple boundary
Content-type: text/plain; charset=us-ascii

This is explicitly typed plain US-ASCII text.
It DOES end with a linebreak.

--simple boundary--

This is the epilogue.  It is also to be ignored.
"""
)

# The classic MIME torture test shape: multipart/mixed > digest > message/rfc822 > alternative
TORTURE = crlf(
    """From: Torture <t@example.org>
Subject: torture
Message-ID: <torture@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: text/plain

intro
--outer
Content-Type: multipart/digest; boundary=dig

--dig

From: a@example.org
Subject: first digested
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain; charset=utf-8

plain
--alt
Content-Type: text/html; charset=utf-8

<p>html</p>
--alt--

--dig
Content-Type: message/rfc822

From: b@example.org
Subject: second digested

inner body
--dig--
--outer
Content-Type: image/png; name=pic.png
Content-Disposition: attachment; filename=pic.png
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--outer--
"""
)

RFC2231 = crlf(
    """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/x-stuff;
 title*0*=us-ascii'en'This%20is%20even%20more%20;
 title*1*=%2A%2A%2Afun%2A%2A%2A%20;
 title*2="isn't it!"
Content-Disposition: attachment;
 filename*=UTF-8''%E4%B8%AD%E6%96%87.pdf

x
--b
Content-Type: application/pdf; name="=?utf-8?B?5oql5ZGK?=.pdf"
Content-Disposition: attachment; filename*0="long"; filename*1="name.txt"

y
--b--
"""
)

ATTACH = crlf(
    """From: a@b.c
Content-Type: multipart/mixed; boundary=m

--m
Content-Type: multipart/alternative; boundary=a

--a
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Hello =E4=B8=96=E7=95=8C, this is the text body that is long enough=
 to be soft-wrapped.
--a
Content-Type: multipart/related; boundary=r

--r
Content-Type: text/html; charset=utf-8

<html><body><p>Hello <b>world</b></p><img src="cid:logo"></body></html>
--r
Content-Type: image/png
Content-ID: <logo>

PNG
--r--
--a--
--m
Content-Type: application/pdf; name=report.pdf
Content-Disposition: attachment; filename=report.pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQK
JSVFT0YK
--m
Content-Type: image/jpeg; name=photo.jpg
Content-Disposition: inline; filename=photo.jpg
Content-Transfer-Encoding: base64

/9j/
--m--
"""
)


ENCODED_HEADERS = crlf(
    """From: =?GB2312?B?1cXI/Q==?= <zhang@example.cn>, =?big5?B?pKSk5Q==?= <big5@example.tw>
To: =?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?= <jp@example.jp>, "Quoted \\"Name\\"" <"odd local"@example.org>
Cc: undisclosed-recipients:;, team: a@x.org, b@y.org (Bee);, <@route.example:c@z.org>
Subject: =?KOI8-R?Q?=F0=D2=C9=D7=C5=D4?= and =?UTF-8?B?5Lit5paH?=
	folded  with   blanks
Date: Thu, 26 Nov 2026 10:00:00 +0800
Message-ID: <encoded@example.org>
In-Reply-To: <parent@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset="gb2312"
Content-Transfer-Encoding: 8bit

body
"""
)

SAME_BOUNDARY = crlf(
    "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/alternative; boundary=b\n\n"
    "--b\n\none\n--b\n\ntwo\n--b--\n--b\n\nthree\n--b--\n"
)

UNTERMINATED = crlf(
    "Subject: unterminated\nContent-Type: multipart/mixed; boundary=x\n\n--x\n\nfirst\n--x\n"
    "Content-Type: multipart/related; boundary=y\n\n--y\n\ninner never closed\n--x\n\nlast, no close\n"
)

NESTED_120 = (
    b"".join(
        b"Content-Type: multipart/mixed; boundary=x%dx\r\n\r\n--x%dx\r\n" % (i, i)
        for i in range(120)
    )
    + b"\r\nleaf\r\n"
)

RFC822_CHAIN_120 = (
    b"Subject: chain\r\nContent-Type: message/rfc822\r\n\r\n" * 120 + b"Subject: end\r\n\r\nend\r\n"
)

# RFC 2231 §3-4: the boundary as an encoded, continued parameter (Dovecot 2.3 ignores it)
RFC2231_BOUNDARY = crlf(
    """Subject: rfc 2231 boundary
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary*0*=us-ascii'en'b%3D1%20x;
 boundary*1="-y"

--b=1 x-y
Content-Type: text/plain; charset=us-ascii

one
--b=1 x-y
Content-Type: application/octet-stream; name=two.bin
Content-Transfer-Encoding: base64

dHdv
--b=1 x-y--
"""
)

#: The same message with a plain boundary parameter: what Dovecot shows for the parts.
RFC2231_BOUNDARY_PLAIN = RFC2231_BOUNDARY.replace(
    b"boundary*0*=us-ascii'en'b%3D1%20x;\r\n boundary*1=\"-y\"", b'boundary="b=1 x-y"'
)

# Parts encoded inside containers: BINARY of the multipart and of the message/rfc822
# decodes them and rewrites their headers (RFC 3516; Dovecot's form)
BINARY_CONTAINERS = crlf(
    """Subject: binary containers
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=o

--o
Content-Type: multipart/alternative; boundary=a

--a
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

caf=C3=A9 =
soft
--a
Content-Transfer-Encoding: BASE64
Content-Type: text/html;
 charset=utf-8
Content-Transfer-Encoding: base64

PHA+aGk8L3A+
--a--
--o
Content-Type: message/rfc822

Subject: inner
Content-Type: application/octet-stream
Content-Transfer-Encoding: base64

AAECAw==
--o
Content-Type: text/plain
Content-Transfer-Encoding: 8bit

plain
--o--
"""
)

# Part headers cut by a delimiter (no empty line): the CRLF before the delimiter is the
# delimiter's (RFC 2046 §5.1.1), so n.MIME ends before it (Dovecot agrees)
CUT_HEADERS = crlf(
    """Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain
--b
junk
--b
X-A: 1
junk
--b
Content-Type: text/plain

--b
Content-Type: multipart/mixed; boundary=c

--c

body
--b--
"""
)

# RFC 2045 §4: without MIME-Version (or a Content-Type) a message is plain RFC 5322 text
# for BODYSTRUCTURE (Dovecot ignores its Content-* fields); parts of a multipart are MIME
NO_MIME_VERSION = crlf(
    """Subject: no MIME-Version
Content-Transfer-Encoding: quoted-printable
Content-Disposition: attachment; filename=a.txt
Content-ID: <i@x>
Content-Language: en
Content-Location: l
Content-MD5: m

caf=C3=A9
"""
)

EMBEDDED_NO_MIME_VERSION = crlf(
    """MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Transfer-Encoding: base64
Content-ID: <x>

YWJj
--b
Content-Type: message/rfc822

Subject: in
Content-Transfer-Encoding: base64
Content-Description: d
Content-Disposition: attachment; filename=a

YWJj
--b
Content-Type: message/rfc822

Subject: in2
MIME-Version: 1.0
Content-Transfer-Encoding: base64

YWJj
--b--
"""
)

# RFC 2045 §6.1 mechanism := token: a comment after it is fine, junk makes BODYSTRUCTURE
# show the default (Dovecot), BINARY still decodes by the leading token (Dovecot too)
CTE_SPELLINGS = crlf(
    """MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=b

--b
Content-Transfer-Encoding: BASE64 (comment)

YWJj
--b
Content-Transfer-Encoding: Quoted-Printable;x

a=3Db
--b
Content-Transfer-Encoding: x-foo

abc
--b--
"""
)

#: name -> message, as stored (CRLF).
SAMPLES = {
    "rfc2046-multipart": RFC2046_MULTIPART,
    "torture": TORTURE,
    "rfc2231": RFC2231,
    "attachments": ATTACH,
    "encoded-headers": ENCODED_HEADERS,
    "same-boundary": SAME_BOUNDARY,
    "unterminated": UNTERMINATED,
    "nested-120": NESTED_120,
    "rfc822-chain-120": RFC822_CHAIN_120,
    "rfc2231-boundary": RFC2231_BOUNDARY,
    "rfc2231-boundary-plain": RFC2231_BOUNDARY_PLAIN,
    "binary-containers": BINARY_CONTAINERS,
    "cut-headers": CUT_HEADERS,
    "no-mime-version": NO_MIME_VERSION,
    "embedded-no-mime-version": EMBEDDED_NO_MIME_VERSION,
    "cte-spellings": CTE_SPELLINGS,
}
