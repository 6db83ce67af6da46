"""The configuration schema, the sample file, and operator-facing errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support.server import init_setup, mailsrv_cmd

from mailsrv import config
from mailsrv.config import Config, ConfigError, load, parse_bind

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "conf" / "mailsrv.toml"


def documented_keys(text: str) -> set[str]:
    """Dotted keys written in the sample, set or commented out (``# key = ...``)."""
    keys = set()
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^#?\s*\[([^\]]+)\]\s*$", line)
        if m:
            section = m.group(1).replace('"', "")
            continue
        m = re.match(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line)
        if m:
            keys.add(f"{section}.{m.group(1)}" if section else m.group(1))
    return keys


def test_sample_config_loads() -> None:
    cfg = load(SAMPLE)
    assert cfg.listener["smtp"].bind == ("0.0.0.0:25", "[::]:25")
    assert cfg.listener["imaps"].tls == "implicit"
    assert cfg.server.data_dir == Path("/var/lib/mailsrv")


def key_pattern(schema_key: str) -> re.Pattern[str]:
    """``listener.*.bind`` matches ``listener.smtp.bind`` (tables of named entries)."""
    return re.compile("^" + r"\.".join("[^.]+" if p == "*" else re.escape(p) for p in schema_key.split(".")) + "$")


def test_every_schema_key_is_documented_in_the_sample() -> None:
    written = documented_keys(SAMPLE.read_text())
    missing = []
    for key, field in config.iter_keys(Config):
        assert field.metadata.get("doc"), f"{key} has no doc string in the schema"
        rx = key_pattern(key)
        if not any(rx.match(w) for w in written):
            missing.append(key)
    assert missing == [], f"keys missing from conf/mailsrv.toml (tools/config_sample.py prints them): {missing}"


def test_sample_has_no_key_the_schema_does_not_know() -> None:
    known = [key_pattern(k) for k, _ in config.iter_keys(Config)]
    for key in documented_keys(SAMPLE.read_text()):
        assert any(rx.match(key) for rx in known), f"{key} in the sample is not in the schema"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[server]\nbogus = 1\n", "server.bogus", "unknown key"),
        ("[nosuch]\n", "nosuch", "unknown key"),
        ("[server]\nworkers = 0\n", "server.workers", '"auto"'),
        ("[server]\nworkers = \"many\"\n", "server.workers", '"auto"'),
        ("[server]\nshutdown_grace = \"10\"\n", "server.shutdown_grace", "expected number"),
        ("[server]\nlog_level = \"loud\"\n", "server.log_level", "'trace'"),
        ("[limits]\nmax_connections = -1\n", "limits.max_connections", "greater than 0"),
        ("[limits]\nmax_connections = true\n", "limits.max_connections", "expected integer"),
        ("[listener.x]\nprotocol = \"smtp\"\n", "listener.x.bind", "missing required key"),
        ("[listener.x]\nprotocol = \"gopher\"\nbind = [\"127.0.0.1:1\"]\n", "listener.x.protocol", "'smtp'"),
        ("[listener.x]\nprotocol = \"smtp\"\nbind = [\"localhost:25\"]\n", "listener.x.bind", "not an IP address"),
        ("[listener.x]\nprotocol = \"smtp\"\nbind = [\"127.0.0.1:99999\"]\n", "listener.x.bind", "port"),
        ("[listener.x]\nprotocol = \"smtp\"\nbind = \"127.0.0.1:25\"\n", "listener.x.bind", "expected a list"),
        ("[listener.x]\nprotocol = \"jmap\"\nbind = [\"127.0.0.1:1\"]\ntls = \"starttls\"\n", "listener.x.tls", "STARTTLS"),
        (
            "[listener.a]\nprotocol = \"smtp\"\nbind = [\"127.0.0.1:25\"]\n"
            "[listener.b]\nprotocol = \"imap\"\nbind = [\"127.0.0.1:25\"]\n",
            "listener.b.bind",
            "also bound",
        ),
        ("[listener.x]\nprotocol = \"smtp\"\nbind = [\"127.0.0.1:1\"]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
         "listener.x.trusted_networks", "CIDR"),
        ("server = [\n", "", "not valid TOML"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.source == str(path)
    assert err.key == key
    assert words in err.message, err.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml")


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\ndata_dir = "d"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    cfg = load(path)
    assert cfg.server.data_dir == tmp_path / "d"
    assert cfg.tls.cert == tmp_path / "c.pem" and cfg.tls.key == tmp_path / "k.pem"


def test_listener_overrides_global_limits(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[limits]\nidle_timeout = 60\n[listener.i]\nprotocol = "imap"\n'
                               'bind = ["127.0.0.1:0"]\nidle_timeout = 1860\n[listener.p]\n'
                               'protocol = "pop3"\nbind = ["127.0.0.1:0"]\n'))
    assert cfg.listener["i"].limit(cfg.limits, "idle_timeout") == 1860
    assert cfg.listener["p"].limit(cfg.limits, "idle_timeout") == 60


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:143", ("::1", 143)), ("*:587", ("0.0.0.0", 587))],
)
def test_parse_bind(spec: str, expected: tuple[str, int]) -> None:
    assert parse_bind(spec) == expected


def test_check_config_cli(tmp_path: Path) -> None:
    cfg = init_setup(tmp_path / "s")
    ok = subprocess.run(mailsrv_cmd("check-config", "-c", str(cfg)), capture_output=True, text=True)
    assert ok.returncode == 0 and "OK (11 listeners)" in ok.stdout
    cfg.write_text(cfg.read_text().replace("[server]", "[server]\nwrokers = 2"))
    bad = subprocess.run(mailsrv_cmd("check-config", "-c", str(cfg)), capture_output=True, text=True)
    assert bad.returncode == 2
    assert f"{cfg}: server.wrokers: unknown key" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_check_config_reports_unreadable_certificate(tmp_path: Path) -> None:
    cfg = init_setup(tmp_path / "s")
    (tmp_path / "s" / "tls" / "key.pem").write_text("not a key\n")
    res = subprocess.run(mailsrv_cmd("check-config", "-c", str(cfg)), capture_output=True, text=True)
    assert res.returncode == 2
    assert "tls: cannot load" in res.stderr and "Traceback" not in res.stderr


def test_config_from_environment(tmp_path: Path) -> None:
    cfg = init_setup(tmp_path / "s")
    import os

    res = subprocess.run(mailsrv_cmd("check-config"), capture_output=True, text=True,
                         env={**os.environ, "MAILSRV_CONFIG": str(cfg)})
    assert res.returncode == 0 and str(cfg) in res.stdout


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init_setup(tmp_path / "s")
    res = subprocess.run(mailsrv_cmd("init", "--dir", str(tmp_path / "s")), capture_output=True, text=True)
    assert res.returncode == 2 and "exists already" in res.stderr


def test_version() -> None:
    res = subprocess.run(mailsrv_cmd("version"), capture_output=True, text=True)
    from mailsrv import __version__

    assert res.returncode == 0 and res.stdout.startswith(f"mailsrv {__version__}")
