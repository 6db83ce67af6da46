"""The README's "Users, domains and groups" commands, run literally and in order on a fresh setup.

A newcomer types them top to bottom; each must work where it stands (a department before the user
placed in it, an administrator who exists). Prompts become ``--password-stdin``, ``[ARG]`` is typed
as ``ARG``, and the import goes into an empty directory, as the README says it must.
"""

from __future__ import annotations

import io
import json
import shlex
import sys
from pathlib import Path

import pytest
from support.server import init_setup

from mailsrv.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
PW = "readme walk pw 1"


def readme_commands(text: str, section: str) -> list[tuple[list[str], str | None]]:
    """The ``mailsrv`` command lines of the first indented block after ``section``: (argv, stdin)."""
    lines = text[text.index(section):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("    mailsrv"))
    block: list[str] = []
    for ln in lines[start:]:
        if not ln.startswith("    "):
            break
        block.append(ln.strip())
    joined = " ".join(block).replace("\\ ", "").replace(" mailsrv ", "\n mailsrv ").replace('echo "$PW" |', "\necho |")
    out: list[tuple[list[str], str | None]] = []
    stdin: str | None = None
    for part in joined.splitlines():
        part = part.split(" #")[0].strip().rstrip(";").strip()
        if part == "echo |":
            stdin = PW + "\n"
            continue
        if not part:
            continue
        argv = [a.strip("[]") for a in shlex.split(part)]
        assert argv[0] == "mailsrv", part
        if argv[1:3] in (["user", "add"], ["user", "passwd"]) and "--password-stdin" not in argv:
            argv.append("--password-stdin")  # the README's "asks for the password" / "prompt"
        if "--password-stdin" in argv:
            stdin = PW + "\n"
        out.append((argv[1:], stdin))
        stdin = None
    return out


def test_readme_directory_commands_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cmds = readme_commands(README.read_text(), "## Users, domains and groups")
    assert len(cmds) >= 20 and cmds[0][0] == ["domain", "add", "example.com"]
    cfg, empty = init_setup(tmp_path / "s"), init_setup(tmp_path / "empty")
    monkeypatch.chdir(tmp_path)
    for argv, stdin in cmds:
        target = empty if argv[:2] == ["directory", "import"] else cfg
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        rc = main(["-c", str(target), *argv])
        err = capsys.readouterr().err
        assert rc == 0, f"mailsrv {shlex.join(argv)}: {err}"
    assert main(["-c", str(empty), "user", "list", "--json"]) == 0
    restored = {u["address"]: u["department"] for u in json.loads(capsys.readouterr().out)}
    assert restored == {"alice@example.com": "Sales", "bob@example.com": None, "carol@example.com": None}
    assert main(["-c", str(empty), "admin", "list", "--json"]) == 0
    assert "carol@example.com" in capsys.readouterr().out


def test_the_block_parser_reads_prompts_brackets_and_pipes() -> None:
    text = ('## S\n\n    mailsrv user add a@x.test --name "A B" \\\n        --quota 2G   # asks\n'
            '    echo "$PW" | mailsrv user add b@x.test --password-stdin\n'
            '    mailsrv lockout list ; mailsrv quota show [x.test]   # both\n\nafter\n    mailsrv not this\n')
    assert readme_commands(text, "## S") == [
        (["user", "add", "a@x.test", "--name", "A B", "--quota", "2G", "--password-stdin"], PW + "\n"),
        (["user", "add", "b@x.test", "--password-stdin"], PW + "\n"),
        (["lockout", "list"], None),
        (["quota", "show", "x.test"], None),
    ]
