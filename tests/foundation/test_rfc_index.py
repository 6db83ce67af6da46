"""docs/rfc-index.md stays complete: every RFC the code cites has a row there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INDEX = ROOT / "docs" / "rfc-index.md"
CITE = re.compile(r"\bRFC ?(\d{3,5})\b")
ROW = re.compile(r"^\| RFC (\d{3,5})((?:/\d{3,5})*)(?: §[\d.]+)? \| ([^|]*) \| ([^|]*) \|")


def cited(root: Path) -> dict[int, str]:
    """RFC number -> the first file under ``root`` that cites it as ``RFC NNNN``."""
    out: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pxd") or not path.is_file():
            continue
        for m in CITE.finditer(path.read_text(encoding="utf-8")):
            out.setdefault(int(m.group(1)), str(path.relative_to(ROOT)))
    return out


def indexed(text: str) -> dict[int, set[str]]:
    """RFC number -> the statuses its rows in the index give it."""
    out: dict[int, set[str]] = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            numbers = [m.group(1), *filter(None, m.group(2).split("/"))]
            for n in numbers:
                out.setdefault(int(n), set()).add(m.group(4).strip())
    return out


def test_every_cited_rfc_is_indexed() -> None:
    have = indexed(INDEX.read_text(encoding="utf-8"))
    missing = {n: where for n, where in cited(ROOT / "mailsrv").items() if n not in have}
    assert not missing, f"RFCs cited in mailsrv/ without a row in docs/rfc-index.md: {missing}"


def test_citations_are_found() -> None:
    # The scan itself works: RFCs the servers are built on are seen as cited.
    found = cited(ROOT / "mailsrv")
    assert {5321, 9051, 1939, 8620, 8621} <= found.keys(), sorted(found)


def test_rows_have_a_status() -> None:
    rows = indexed(INDEX.read_text(encoding="utf-8"))
    assert len(rows) >= 80, len(rows)
    bad = {n: s for n, s in rows.items() if not s <= {"yes", "partial", "no"}}
    assert not bad, f"status must be yes / partial / no: {bad}"


def test_parsers() -> None:
    assert indexed("| RFC 2048/2049 | MIME | yes | |\n| RFC 9051 §6.4.4 | SEARCH | partial | x |\n") == {
        2048: {"yes"}, 2049: {"yes"}, 9051: {"partial"}}
    assert indexed("RFC 5321 in prose\n| 5321 | no prefix | yes | |\n") == {}
    assert [int(m.group(1)) for m in CITE.finditer("# RFC 5321 §4.5, RFC822, RFC5322.From, xRFC 1")] == [5321, 822, 5322]
