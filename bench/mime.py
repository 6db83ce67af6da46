"""MIME parsing throughput: the Cython scanner vs its Python twin, the stdlib and fast-mail-parser.

Inputs: every message of ../shared/corpus (CRLF-normalised, as stored) and
generated large messages (a multipart with a base64 attachment, a single-line
text body) up to 10 MB. All parsers run in the same process on the same bytes:

- ``mailsrv.mime.parse`` with the compiled scanner (``mime_c``), then with the twin;
- ``email.message_from_bytes(policy=email.policy.default)`` walking every part
  and reading its content type (the stdlib baseline);
- ``fast_mail_parser.parse_email`` (Rust, optional extra ``bench``; printed as
  missing when not installed);
- a plain ``bytes.find`` scan: the header end and every line starting ``--``,
  the least any MIME parser must look at (the floor).

Each figure is the best of several timed passes (MB/s counts input bytes).
"""

from __future__ import annotations

import base64
import email
import email.policy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._common import in_process_meter

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"

#: size -> (seconds per measurement, passes, generated sizes in MB)
SIZES = {"smoke": (0.05, 2, (1,)), "full": (0.6, 3, (1, 10))}


def corpus_messages() -> list[bytes]:
    import sys

    sys.path.insert(0, str(ROOT / "tests" / "mime"))
    from corpus_files import message_paths, normalise

    return [normalise((CORPUS / rel).read_bytes()) for rel in message_paths(CORPUS)]


def generated(mb: int) -> dict[str, bytes]:
    """Large messages: a multipart with text, HTML and a base64 attachment; one long line."""
    payload = bytes(range(256)) * (mb * 1024 * 1024 * 3 // 4 // 256)
    att = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    text = b"Hello, this is the text part.\r\n" * 200
    multipart = (
        b"From: Bench <bench@example.org>\r\nTo: a@example.org, b@example.org\r\nSubject: =?utf-8?B?5Lit5paH?=\r\n"
        b"Message-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="==outer=="\r\n\r\n'
        b'--==outer==\r\nContent-Type: multipart/alternative; boundary="==alt=="\r\n\r\n'
        b"--==alt==\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text + b"\r\n"
        b"--==alt==\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>"
        + text
        + b"</p>\r\n--==alt==--\r\n"
        b"--==outer==\r\nContent-Type: application/octet-stream; name=blob.bin\r\n"
        b"Content-Disposition: attachment; filename=blob.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + att
        + b"--==outer==--\r\n"
    )
    oneline = (
        b"Subject: long line\r\nContent-Type: text/plain\r\n\r\n"
        + b"x" * (mb * 1024 * 1024)
        + b"\r\n"
    )
    return {f"multipart+base64 {mb} MB": multipart, f"single line {mb} MB": oneline}


def find_scan(raw: bytes) -> int:
    """The floor: header end plus every line that starts with ``--``."""
    n = raw.find(b"\r\n\r\n")
    i = 0
    find = raw.find
    while True:
        i = find(b"\n--", i)
        if i < 0:
            return n
        i += 3
        n += 1


def stdlib(raw: bytes) -> int:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    n = 0
    for part in msg.walk():
        part.get_content_type()
        n += 1
    return n


def load_fast_mail_parser() -> Callable[[bytes], Any] | None:
    try:
        from fast_mail_parser import parse_email
    except ImportError:
        return None

    def fmp(raw: bytes) -> Any:
        try:
            return parse_email(raw)
        except Exception:
            return None

    return fmp


def throughput(
    fn: Callable[[bytes], Any], msgs: list[bytes], seconds: float, passes: int
) -> tuple[float, float]:
    """Best (messages/s, MB/s) over ``passes`` measurements of about ``seconds`` each."""
    total = sum(len(m) for m in msgs)
    best = float("inf")
    for _ in range(passes):
        rounds = 0
        t0 = time.perf_counter()
        while True:
            for m in msgs:
                fn(m)
            rounds += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        best = min(best, elapsed / rounds)
    return len(msgs) / best, total / best / 1e6


def result(
    results: list[dict[str, Any]],
    set_name: str,
    figures: dict[str, tuple[float, float]],
    label: str,
    base: str | None,
    unit_idx: int = 1,
) -> None:
    """Append one figure (MB/s, or messages/s with ``unit_idx=0``) with its baseline and ratio."""
    unit = "MB/s" if unit_idx else "messages/s"
    if label not in figures:
        results.append(
            {"name": f"{set_name}: {label} ({unit})", "unit": unit, "value": 0.0, "baseline": None}
        )
        return
    entry: dict[str, Any] = {
        "name": f"{set_name}: {label}",
        "unit": unit,
        "value": figures[label][unit_idx],
    }
    if base is not None:
        if base in figures:
            entry["baseline"] = {"name": base, "value": figures[base][unit_idx]}
            entry["ratio"] = figures[label][unit_idx] / figures[base][unit_idx]
        else:
            entry["baseline"] = None
    results.append(entry)


def run(size: str) -> dict[str, Any]:
    seconds, passes, gen_sizes = SIZES[size]
    from mailsrv import mime
    from mailsrv._speedups import mime_py

    try:
        from mailsrv._speedups import mime_c
    except ImportError:
        mime_c = None  # type: ignore[assignment]

    def parser(mod: Any) -> Callable[[bytes], Any]:
        lim = mime.MimeLimits()

        def parse(raw: bytes) -> Any:
            return mime.MessageStructure(mod.scan(raw, lim.max_depth, lim.max_parts, lim.max_value))

        return parse

    fmp = load_fast_mail_parser()
    notes: list[str] = []
    if mime_c is None:
        notes.append(
            "compiled scanner mailsrv._speedups.mime_c not built (make build): Cython figures missing"
        )
    if fmp is None:
        notes.append(
            "fast-mail-parser not installed (pip install '.[bench]'): its baseline is missing"
        )
    results: list[dict[str, Any]] = []
    sets: list[tuple[str, list[bytes]]] = [("corpus", corpus_messages())]
    for mb in gen_sizes:
        for name, raw in generated(mb).items():
            sets.append((name, [raw]))
    for set_name, msgs in sets:
        few = len(msgs) == 1
        figures: dict[str, tuple[float, float]] = {}
        candidates: list[tuple[str, Callable[[bytes], Any] | None]] = [
            ("cython", parser(mime_c) if mime_c is not None else None),
            ("python twin", parser(mime_py)),
            ("stdlib email", stdlib),
            ("fast-mail-parser", fmp),
            ("bytes.find scan", find_scan),
        ]
        for label, fn in candidates:
            if fn is None:
                continue
            figures[label] = throughput(
                fn, msgs, seconds, passes if not few else max(2, passes - 2)
            )

        result(results, set_name, figures, "cython", "stdlib email")
        result(results, set_name, figures, "cython", "python twin")
        result(results, set_name, figures, "cython", "fast-mail-parser")
        result(results, set_name, figures, "cython", "bytes.find scan")
        result(results, set_name, figures, "python twin", "stdlib email")
        result(results, set_name, figures, "stdlib email", None)
        if "fast-mail-parser" in figures:
            result(results, set_name, figures, "fast-mail-parser", None)
        result(results, set_name, figures, "bytes.find scan", None)
        if not few:
            result(results, set_name, figures, "cython", "stdlib email", 0)
    # cache: bytes per message in the index, and decode + BODYSTRUCTURE speed
    msgs = sets[0][1]
    meter = in_process_meter("corpus messages parsed once by mailsrv.mime.parse")
    structs = [mime.parse(m) for m in msgs]
    meter.add(len(msgs))
    servers = [meter.summary()]
    blobs = [s.to_cache() for s in structs]
    results.append(
        {
            "name": "corpus: cache bytes per message (mean)",
            "unit": "bytes",
            "value": sum(map(len, blobs)) / len(blobs),
        }
    )
    results.append(
        {
            "name": "corpus: message bytes per message (mean)",
            "unit": "bytes",
            "value": sum(map(len, msgs)) / len(msgs),
        }
    )
    t0 = time.perf_counter()
    rounds = 0
    while time.perf_counter() - t0 < seconds:
        for b in blobs:
            mime.MessageStructure.from_cache(b)
        rounds += 1
    results.append(
        {
            "name": "corpus: from_cache",
            "unit": "messages/s",
            "value": rounds * len(blobs) / (time.perf_counter() - t0),
        }
    )
    t0 = time.perf_counter()
    rounds = 0
    while time.perf_counter() - t0 < seconds:
        for b in blobs:
            mime.MessageStructure.from_cache(b).imap_bodystructure()
        rounds += 1
    results.append(
        {
            "name": "corpus: from_cache + BODYSTRUCTURE",
            "unit": "messages/s",
            "value": rounds * len(blobs) / (time.perf_counter() - t0),
        }
    )
    notes.append(
        "fast-mail-parser decodes bodies and flattens nested message/rfc822 parts; "
        "the stdlib walks every part; the bytes.find scan finds header end and '--' lines only"
    )
    notes.append(f"implementation selected by mailsrv.mime.parse: {mime._scanner.IMPL}")
    notes.append("measured in-process (a library); CPU and peak RSS are this process's (baselines included in the RSS)")
    return {"scenario": "mime", "results": results, "notes": notes, "servers": servers}
