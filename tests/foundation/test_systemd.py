"""The systemd units are valid and hardened (checked with systemd-analyze offline)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    text = (ROOT / "systemd" / "mailsrv.service").read_text()
    # The real binary path does not exist on a test machine; any executable will do for verify.
    text = text.replace("/usr/local/bin/mailsrv", "/bin/true")
    path = tmp_path / "mailsrv.service"
    path.write_text(text)
    return path


def test_unit_verifies(unit: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in res.stderr.splitlines() if "mailsrv.service" in line]
    assert res.returncode == 0 and problems == [], res.stderr


def test_unit_is_hardened(unit: Path) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for mailsrv\.service: ([0-9.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_essentials() -> None:
    text = (ROOT / "systemd" / "mailsrv.service").read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "User=mailsrv",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/mailsrv", "NoNewPrivileges=yes", "PrivateTmp=yes"):
        assert line in text.splitlines(), line
