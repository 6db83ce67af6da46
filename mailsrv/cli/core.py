"""Core sub-commands: init, serve, check-config, version."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import socket
import sys
from pathlib import Path

from mailsrv import __version__
from mailsrv import config as config_mod
from mailsrv.cli import CliError, check_data_owner, config_path

#: Hooks run by ``mailsrv init`` after the config exists: fn(config, args) -> None.
#: Later modules (the directory) append to this to create their files and the demo users.
INIT_HOOKS: list = []

DEV_LISTENERS = [
    # name, protocol, port, tls   (DESIGN.md: development ports, all on 127.0.0.1)
    ("smtp", "smtp", 2525, "starttls"),
    ("submission", "submission", 2587, "starttls"),
    ("submissions", "submission", 2465, "implicit"),
    ("imap", "imap", 2143, "starttls"),
    ("imaps", "imap", 2993, "implicit"),
    ("pop3", "pop3", 2110, "starttls"),
    ("pop3s", "pop3", 2995, "implicit"),
    ("managesieve", "managesieve", 2190, "starttls"),  # RFC 5804 (4190)
    ("jmap", "jmap", 2080, "none"),
    ("jmaps", "jmap", 2443, "implicit"),
    ("admin", "admin", 2081, "none"),  # admin HTTP API (bearer tokens: `mailsrv token issue`)
]


#: The development ports are this plus the last three digits of each (2525, 2587, ...); ``init --port-base``
#: moves the whole set (3000: 3525, 3587, ...) for a second demo on one machine.
DEV_PORT_BASE = 2000
MAX_PORT_BASE = 65535 - max(port for _, _, port, _ in DEV_LISTENERS) + DEV_PORT_BASE


#: RFC 9051 §5.4 (IMAP autologout at least 30 min), RFC 1939 §3 (POP3 at least 10 min).
IDLE_TIMEOUTS = {"imap": 1860, "pop3": 600}


def render_config(hostname: str, bind_host: str = "127.0.0.1", port_base: int = DEV_PORT_BASE,
                  workers: str | int = "auto") -> str:
    """A complete config for a setup directory (paths relative to the file).

    ``port_base=0`` binds every listener to port 0 (tests: the kernel picks).
    """
    host = f"[{bind_host}]" if ":" in bind_host else bind_host
    w = f'"{workers}"' if isinstance(workers, str) else str(workers)
    out = [
        "# mailsrv configuration made by `mailsrv init`; conf/mailsrv.toml documents every key.",
        "",
        "[server]",
        f'hostname = "{hostname}"',
        f"workers = {w}",
        'data_dir = "data"',
        "shutdown_grace = 10",
        'log_level = "info"',
        "",
        "[tls]",
        'cert = "tls/cert.pem"',
        'key = "tls/key.pem"',
        "",
    ]
    for name, proto, port, tls in DEV_LISTENERS:
        p = 0 if port_base == 0 else port - DEV_PORT_BASE + port_base
        out += [f"[listener.{name}]", f'protocol = "{proto}"', f'bind = ["{host}:{p}"]', f'tls = "{tls}"']
        if proto in IDLE_TIMEOUTS:
            out.append(f"idle_timeout = {IDLE_TIMEOUTS[proto]}")
        out.append("")
    return "\n".join(out)


def make_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """Write a self-signed ECDSA P-256 certificate for hostname, localhost, 127.0.0.1 and ::1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    cfg_file = target / "mailsrv.toml"
    if cfg_file.exists() and not args.force:
        raise CliError(f"{cfg_file} exists already (use --force to overwrite)")
    check_data_owner(target, os.geteuid())  # root's key.pem and directory in the service's setup: unreadable to it
    target.mkdir(parents=True, exist_ok=True)
    hostname = args.hostname or ("mail.example.test" if args.demo else socket.getfqdn())
    cfg_file.write_text(
        render_config(hostname, port_base=0 if args.any_port else args.port_base, workers=args.workers)
    )
    make_self_signed(target / "tls" / "cert.pem", target / "tls" / "key.pem", hostname)
    cfg = config_mod.load(cfg_file)
    cfg.server.data_dir.mkdir(parents=True, exist_ok=True)
    for hook in INIT_HOOKS:
        hook(cfg, args)
    print(f"mailsrv: created {cfg_file} (certificate in {target / 'tls'}, data in {cfg.server.data_dir})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mailsrv.master import serve

    return serve(config_path(args))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args)
    cfg = config_mod.load(path)
    from mailsrv.delivery import archive

    archive.check(cfg)  # the archive accounts exist and the rules match local addresses, as at start
    if any(lst.tls != "none" for lst in cfg.listener.values()):
        from mailsrv.net.tls import TlsSetupError, server_context

        try:
            server_context(cfg.tls)
        except TlsSetupError as exc:
            raise CliError(f"{path}: {exc}") from None
    print(f"{path}: OK ({len(cfg.listener)} listeners)")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"mailsrv {__version__} (Python {sys.version.split()[0]})")
    return 0


def _port_base(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 1 <= n <= MAX_PORT_BASE:
        raise argparse.ArgumentTypeError(f"{value!r}: a number from 1 to {MAX_PORT_BASE}")
    return n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a working setup in a directory")
    p.add_argument("--dir", required=True, help="directory to create (config, certificate, data)")
    p.add_argument("--demo", action="store_true", help="also create domain example.test with users alice and bob")
    p.add_argument("--hostname", default=None, help="server host name (default: this machine's FQDN)")
    p.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v))
    p.add_argument("--any-port", action="store_true", help="bind port 0 everywhere (tests)")
    p.add_argument("--port-base", type=_port_base, default=DEV_PORT_BASE, metavar="N",
                   help=f"development ports N+525, N+587, ... (default {DEV_PORT_BASE}: 2525, 2587, ...)")
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("serve", help="run the server in the foreground (master and workers)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate the configuration file and TLS files")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)


def _init_directory(cfg: config_mod.Config, args: argparse.Namespace) -> None:
    # the directory database, and the demo users with --demo
    from mailsrv.cli.directory import init_directory

    init_directory(cfg, args)


INIT_HOOKS.append(_init_directory)
