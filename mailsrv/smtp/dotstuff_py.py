"""DATA transparency (RFC 5321 §4.5.2), the pure-Python twin: the specification of
``mailsrv._speedups.dotstuff_c`` (selected by :mod:`mailsrv.smtp.dotstuff`).

Pure: bytes in, bytes out. It works on whole chunks with ``bytes.find``
instead of line by line (aiosmtpd's per-line reader costs ≈0.7 ms of CPU per
message), so the per-message cost is a handful of C-level scans.

SMTP smuggling (CVE-2023-51764 family): the only end of data is
``CRLF . CRLF``. ``LF . LF``, ``CR . CR`` and friends are data; a message
containing a bare LF or bare CR is flagged so the session can reject it
after reading to the real end (RFC 5321 §2.3.8: lines end with CRLF only).
"""

from __future__ import annotations

_END = b".\r\n"


class DotDecoder:
    """Feed raw DATA bytes; collect the unstuffed message until ``CRLF.CRLF``.

    ``feed(data)`` returns ``(payload, consumed)``: ``payload`` is message
    bytes ready to write, ``consumed`` how much of ``data`` belongs to the
    DATA stream (less than ``len(data)`` only once :attr:`done`; the rest is
    pipelined commands after the end). The final CRLF before the dot is part of
    the message (RFC 5321 §4.1.1.4).
    """

    __slots__ = ("done", "bare_newline", "size", "_pend", "_bol")

    def __init__(self) -> None:
        self.done = False
        self.bare_newline = False
        self.size = 0
        self._pend = b""
        self._bol = True  # DATA starts at the beginning of a line

    def feed(self, data: bytes) -> tuple[bytes, int]:
        if self.done:
            return b"", 0
        pend = self._pend
        buf = pend + data if pend else data
        npend = len(pend)
        n = len(buf)
        out: list[bytes] = []
        i = 0
        consumed_to = -1
        while True:
            if self._bol:
                # i is at a line start
                if n - i < 3 and buf[i:] == _END[: n - i] and n - i > 0:
                    break  # could be the end marker: wait for more
                if n - i == 0:
                    break
                if buf[i] == 0x2E:  # "."
                    if buf.startswith(_END, i):
                        consumed_to = i + 3
                        self.done = True
                        break
                    i += 1  # RFC 5321 §4.5.2: drop the stuffed dot
                self._bol = False
            j = buf.find(b"\r\n.", i)
            if j < 0:
                # no line-start dot ahead; keep a trailing CR / CRLF that may begin one
                if buf.endswith(b"\r\n"):
                    end = n
                    self._bol = True
                elif buf.endswith(b"\r"):
                    end = n - 1
                else:
                    end = n
                out.append(buf[i:end])
                i = end
                break
            out.append(buf[i : j + 2])
            i = j + 2
            self._bol = True
        self._pend = b"" if self.done else buf[i:]
        payload = b"".join(out)
        if payload:
            # Bare LF or bare CR anywhere in the payload (CRLFs never straddle
            # chunks: a trailing CR is held back above). With L line feeds and
            # R carriage returns, none is bare iff R == L and the line breaks of
            # every kind (CRLF, CR, LF: what splitlines splits at) number L: then
            # no CR stands alone, so none of the LFs does either. Two single-byte
            # counts and a split cost 2/3 of counting the two-byte CRLF.
            lf = payload.count(b"\n")
            if payload.count(b"\r") != lf:
                self.bare_newline = True
            elif lf:
                breaks = len(payload.splitlines()) - (payload[-1] not in b"\r\n")
                if breaks != lf:
                    self.bare_newline = True
            self.size += len(payload)
        consumed = (consumed_to - npend) if self.done else len(data)
        return payload, consumed
