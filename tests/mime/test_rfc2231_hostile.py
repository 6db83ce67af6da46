"""RFC 2231 parameter sections from hostile mail (found by fuzz/ mime_header): a section number
that is not ASCII digits is ignored, never an exception in whoever reads the part's parameters."""

from __future__ import annotations

from mailsrv import mime
from mailsrv.mime import headers

# "name*\xb2": the latin-1 "²" is a digit to str.isdigit() and not to int()
MSG = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
       b"Content-Type: application/pdf; name*0=a; name*\xb2=b; name*1=c\r\n"
       b"Content-Disposition: attachment; filename*\xb9*=utf-8''x; filename*0=report.pdf\r\n\r\nx\r\n--b--\r\n")


def test_non_ascii_section_numbers_are_ignored() -> None:
    params = headers.merge_params([(b"name*0", b"a"), (b"name*\xb2", b"b"), (b"name*1", b"c")])
    assert params == [("name", "ac")]


def test_a_part_with_such_parameters_still_reads_for_imap_and_jmap() -> None:
    st = mime.parse(MSG)
    part = st.part("1")
    assert part is not None
    assert part.params["name"] == "ac"
    assert part.filename == "report.pdf"
    body = mime.jmap_body_parts(MSG, st)
    assert [a["name"] for a in body["attachments"]] == ["report.pdf"]


def test_section_numbers_in_non_ascii_digits_address_no_part() -> None:
    """IMAP section specs ("1.2.TEXT", RFC 9051 §6.4.5) are ASCII digits; "²" and "١" are digits to
    str.isdigit() only: no part, no range, never a ValueError from int()."""
    st = mime.parse(MSG)
    for spec in ("\u00b2", "1.\u00b2", "\u0661", "\u00b9.TEXT"):
        assert st.part(spec) is None, spec
        assert st.section_range(spec) is None, spec
    assert st.part("1") is not None and st.section_range("1") is not None
