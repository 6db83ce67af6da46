"""Produce tests/mime/fixtures/dovecot.json: what Debian's Dovecot answers for the corpus.

Usage (as root, dovecot-imapd installed, nothing listening is needed)::

    .venv/bin/python tests/mime/make_dovecot_fixtures.py

Starts a private Dovecot on 127.0.0.1 (temporary config, static passdb, a
maildir owned by ``nobody``), APPENDs every corpus message (normalised to
CRLF, as SMTP or APPEND would deliver it) and the generated samples of
samples.py (keyed ``generated/<name>``), FETCHes ENVELOPE, BODY and
BODYSTRUCTURE with imaplib and stores each reply's wire bytes (latin-1 text)
keyed by corpus path. For every section our parser finds it also FETCHes
BODY.PEEK[section] (and .MIME, .HEADER, .TEXT) as a length + SHA-256 digest,
BINARY.SIZE and BINARY.PEEK[section] (digest) into fixtures/dovecot_sections.json. The tests never need
Dovecot: they read the JSON.
"""

from __future__ import annotations

import hashlib
import imaplib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus_files import message_paths, normalise  # noqa: E402
from samples import SAMPLES  # noqa: E402

CORPUS = HERE.parent.parent.parent / "shared" / "corpus"
OUT = HERE / "fixtures" / "dovecot.json"
OUT_SECTIONS = HERE / "fixtures" / "dovecot_sections.json"
ITEMS = ("ENVELOPE", "BODY", "BODYSTRUCTURE")

CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{d}/home/%u/Maildir
first_valid_uid = 1
passdb {{
  driver = static
  args = password=pw
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wire(data: list) -> bytes:
    """Rebuild the wire bytes of one imaplib FETCH answer (literals come as tuples)."""
    out = b""
    for item in data:
        if isinstance(item, tuple):
            out += item[0] + b"\r\n" + item[1]
        elif item is not None:
            out += item
    return out


def item_value(resp: bytes, item: str) -> bytes:
    key = b"(" + item.encode() + b" "
    i = resp.index(key) + len(key)
    if not resp.endswith(b")"):
        raise ValueError(f"unexpected FETCH answer {resp[-40:]!r}")
    return resp[i:-1]


def digest(data: bytes) -> str:
    """Length and SHA-256 prefix: enough to compare a section without storing it."""
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()[:16]}"


def sections_of(raw: bytes) -> list[str]:
    """Section specs to ask for: every part, its MIME header, HEADER/TEXT of messages."""
    sys.path.insert(0, str(HERE.parent.parent))
    from mailsrv import mime

    s = mime.parse(raw)
    specs = ["HEADER", "TEXT"]
    for p in s.parts():
        if not p.section or p.is_message:
            continue
        for spec in (p.section, p.section + ".MIME"):
            if spec not in specs:
                specs.append(spec)
        if p.message is not None:
            specs += [p.section + ".HEADER", p.section + ".TEXT"]
    return specs


def fetch_section(imap: imaplib.IMAP4, n: int, spec: str, item: str = "BODY.PEEK") -> str | None:
    """BODY.PEEK[spec] (or BINARY.PEEK) as a digest, None for NIL or an error."""
    typ, data = imap.fetch(str(n), f"({item}[{spec}])")
    if typ != "OK" or not data:
        return None
    # skip untagged FETCH answers left over from an earlier failed command
    name = item.split(".")[0].encode() + b"["
    for first in data:
        if isinstance(first, tuple) and name in first[0]:
            return digest(first[1])
        if isinstance(first, bytes) and name in first and first.rstrip(b")").endswith(b'""'):
            return digest(b"")
    return None


def fetch_binary_size(imap: imaplib.IMAP4, n: int, spec: str) -> int | None:
    typ, data = imap.fetch(str(n), f"(BINARY.SIZE[{spec}])")
    if typ != "OK" or not data:
        return None
    for line in data:
        m = re.search(rb"BINARY\.SIZE\[[^\]]*\] (\d+)", line) if isinstance(line, bytes) else None
        if m:
            return int(m.group(1))
    return None


def connect(port: int, deadline: float) -> imaplib.IMAP4:
    while True:
        try:
            return imaplib.IMAP4("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)  # polling a starting server with a deadline


def main() -> int:
    d = Path(tempfile.mkdtemp(prefix="mime-dovecot-"))
    d.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    for sub in ("run", "state", "home"):
        (d / sub).mkdir()
    os.chown(d / "home", nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    (d / "dovecot.conf").write_text(
        CONF.format(d=d, uid=nobody.pw_uid, gid=nobody.pw_gid, port=port)
    )
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(d / "dovecot.conf")])
    try:
        imap = connect(port, time.monotonic() + 20)
        imap.login("fixture", "pw")
        messages = [(rel, normalise((CORPUS / rel).read_bytes())) for rel in message_paths(CORPUS)]
        messages += [(f"generated/{name}", raw) for name, raw in SAMPLES.items()]
        result: dict[str, dict[str, str]] = {}
        sections: dict[str, dict[str, dict[str, str | int | None]]] = {}
        for n, (rel, raw) in enumerate(messages, 1):
            typ, resp = imap.append("INBOX", None, None, raw)
            assert typ == "OK", (rel, resp)
            imap.select("INBOX")
            entry = {}
            for item in ITEMS:
                typ, data = imap.fetch(str(n), f"({item})")
                assert typ == "OK", (rel, item)
                entry[item] = item_value(wire(data), item).decode("latin-1")
            typ, data = imap.fetch(str(n), "(RFC822.SIZE)")
            size = int(wire(data).split(b"RFC822.SIZE ")[1].rstrip(b")"))
            assert size == len(raw), (rel, size, len(raw))
            result[rel] = entry
            per: dict[str, dict[str, str | int | None]] = {}
            for spec in sections_of(raw):
                item: dict[str, str | int | None] = {}
                try:
                    item["body"] = fetch_section(imap, n, spec)
                    if re.fullmatch(r"[0-9.]+", spec):
                        item["binary_size"] = fetch_binary_size(imap, n, spec)
                        # BINARY.SIZE is not always the length of BINARY in Dovecot 2.3
                        item["binary"] = fetch_section(imap, n, spec, "BINARY.PEEK")
                except imaplib.IMAP4.abort as exc:
                    # Dovecot drops the connection on some malformed parts: note it, go on
                    item = {"error": str(exc).split(" [")[0]}
                    imap = connect(port, time.monotonic() + 20)
                    imap.login("fixture", "pw")
                    imap.select("INBOX")
                per[spec] = item
            sections[rel] = per
        imap.logout()
        version = subprocess.run(
            ["dovecot", "--version"], capture_output=True, text=True
        ).stdout.strip()
        OUT.write_text(
            json.dumps({"dovecot": version, "messages": result}, indent=1, ensure_ascii=True) + "\n"
        )
        OUT_SECTIONS.write_text(
            json.dumps({"dovecot": version, "messages": sections}, indent=0, sort_keys=True) + "\n"
        )
        print(f"{len(result)} messages -> {OUT}, {OUT_SECTIONS}")
    finally:
        proc.terminate()
        proc.wait(10)
        if os.environ.get("KEEP"):
            print(d)
        else:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
