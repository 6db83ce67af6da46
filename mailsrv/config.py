"""The one configuration schema: frozen dataclasses loaded from one TOML file.

Every field carries its documentation in ``metadata["doc"]``; the sample
``conf/mailsrv.toml`` documents the same keys (a test checks they agree).
Unknown keys, wrong types and bad values raise :class:`ConfigError` naming the
file and the dotted key. Lower layers receive their section as an argument and
never read files or the environment themselves.

To add a section: define a frozen dataclass whose fields all have defaults and
a ``doc``, add it as a field of :class:`Config`, and document it in
``conf/mailsrv.toml``.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        self.message = message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


def doc(text: str, default: Any = MISSING, *, check: Any = None, factory: Any = MISSING) -> Any:
    """A dataclass field with documentation and an optional value check.

    ``check(value)`` returns an error message (str) for a bad value, or None.
    """
    meta = {"doc": text, "check": check}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --- value checks -----------------------------------------------------------


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or greater"


def _probability(v: float) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be between 0 and 1"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number from 0 to 65535"


def parse_bind(value: str) -> tuple[str, int]:
    """``"127.0.0.1:25"``, ``"[::1]:25"`` or ``"*:25"`` -> (host, port)."""
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not [IPv6]:port")
    else:
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not host:port")
    if host == "*":
        host = "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} in {value!r} is not an IP address") from None
    if not port.isdigit() or _port(int(port)):
        raise ValueError(f"{port!r} in {value!r} is not a port number")
    return host, int(port)


def _binds(v: tuple[str, ...]) -> str | None:
    if not v:
        return "needs at least one address"
    for item in v:
        try:
            parse_bind(item)
        except ValueError as exc:
            return str(exc)
    return None


def _workers(v: int | str) -> str | None:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024):
        return None
    return 'must be "auto" or a number of processes from 1 to 1024'


def _cidrs(v: tuple[str, ...]) -> str | None:
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"{item!r} is not an IP network (CIDR)"
    return None


# --- sections ----------------------------------------------------------------

LogLevel = Literal["trace", "debug", "info", "warning", "error"]
Protocol = Literal["smtp", "submission", "imap", "pop3", "jmap", "admin", "managesieve"]
TlsMode = Literal["none", "starttls", "implicit"]


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = doc("Fully qualified host name used in banners, Received headers and HELO.", "localhost")
    workers: int | str = doc('Worker processes: "auto" for one per core, or a number.', "auto", check=_workers)
    data_dir: Path = doc("Where mail, indexes, the queue and the directory live.", Path("/var/lib/mailsrv"))
    shutdown_grace: float = doc(
        "Seconds that SIGTERM or a reload lets open sessions finish before they are closed.",
        30.0,
        check=_non_negative,
    )
    restart_backoff_max: float = doc(
        "Longest wait in seconds before restarting a worker that keeps dying.", 30.0, check=_positive
    )
    reuse_port: bool = doc(
        "One listening socket per worker for each address (Linux SO_REUSEPORT), so that the kernel spreads "
        "new connections over the workers; false: one socket shared by all (a burst goes to the worker "
        "that wakes first). A reload keeps what is bound: a change applies to already bound addresses at a restart.",
        True,
    )
    pin_workers: bool = doc(
        "Pin worker N and its threads to CPU N of the CPUs the master may run on (round-robin; Linux), as "
        "nginx's worker_cpu_affinity: a worker's hand-offs between its event loop and its threads then wake "
        "a thread on the same CPU (measured on 2 vCPUs: 1.1-1.2x msgs/s at 50 SMTP sessions, 0.93x at one, "
        "whose background work no longer runs on the other CPU). false: the kernel places them. Applies to "
        "workers started after a change.",
        False,
    )
    log_level: LogLevel = doc("Least severe level logged: trace, debug, info, warning, error.", "info")


@dataclass(frozen=True)
class TlsConfig:
    cert: Path = doc("PEM certificate chain served on every TLS listener.", Path("/etc/mailsrv/tls/cert.pem"))
    key: Path = doc("PEM private key of the certificate.", Path("/etc/mailsrv/tls/key.pem"))
    min_version: Literal["TLSv1.2", "TLSv1.3"] = doc("Oldest TLS version accepted.", "TLSv1.2")
    ciphers: str = doc(
        "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are always the modern ones).",
        "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20",
    )


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = doc("Open connections per listener and worker.", 5000, check=_positive)
    max_connections_per_ip: int = doc("Open connections from one client IP per listener and worker.", 50, check=_positive)
    idle_timeout: float = doc("Seconds a connection may stay silent before it is closed.", 300.0, check=_positive)
    max_line_length: int = doc("Longest command line in bytes (RFC 5321 §4.5.3.1.4 allows 512; IMAP lines are longer).", 65536, check=_positive)
    max_errors: int = doc("Protocol errors a session may cause before it is disconnected.", 20, check=_positive)


@dataclass(frozen=True)
class ListenerConfig:
    protocol: Protocol = doc("What the listener speaks: smtp, submission, imap, pop3, jmap, admin or managesieve.")
    bind: tuple[str, ...] = doc('Addresses to listen on, e.g. ["0.0.0.0:25", "[::]:25"].', check=_binds)
    tls: TlsMode = doc("none, starttls (offered in-protocol) or implicit (TLS from the first byte).", "none")
    max_connections: int | None = doc("Overrides limits.max_connections for this listener.", None, check=_positive)
    max_connections_per_ip: int | None = doc("Overrides limits.max_connections_per_ip.", None, check=_positive)
    idle_timeout: float | None = doc("Overrides limits.idle_timeout.", None, check=_positive)
    max_line_length: int | None = doc("Overrides limits.max_line_length.", None, check=_positive)
    trusted_networks: tuple[str, ...] = doc(
        "Client networks (CIDR) whose connections this listener treats as local.", (), check=_cidrs
    )
    proxy_protocol: bool = doc(
        "Every connection starts with a PROXY protocol header (v1 or v2, HAProxy send-proxy / send-proxy-v2) giving"
        " the client's address; the session (an HTTP request's remote address too) sees that address.",
        False,
    )
    proxy_trusted_networks: tuple[str, ...] = doc(
        "With proxy_protocol: the proxies' networks (CIDR); a connection from elsewhere is closed unanswered.",
        ("127.0.0.0/8", "::1/128"),
        check=_cidrs,
    )
    proxy_timeout: float = doc(
        "With proxy_protocol: seconds the proxy has to send the whole header before the connection is closed.",
        5.0,
        check=_positive,
    )

    def limit(self, limits: LimitsConfig, name: str) -> Any:
        """This listener's value of a limit, or the global default."""
        own = getattr(self, name)
        return getattr(limits, name) if own is None else own


@dataclass(frozen=True)
class DirectoryConfig:
    path: Path = doc("Directory database (SQLite, WAL), relative to server.data_dir.", Path("directory.sqlite3"))
    store_root: str = doc("Where new users' stores are placed, relative to server.data_dir.", "mail")
    recipient_delimiter: str = doc('Sub-address separator in local parts ("alice+tag"); "" turns it off.', "+")
    threads: int = doc("Threads per worker that run directory queries off the event loop.", 4, check=_positive)


@dataclass(frozen=True)
class AuthConfig:
    account_failures: int = doc("Failed logins for one account within lockout_window before it is locked.", 5, check=_positive)
    lockout_window: float = doc("Seconds over which failed logins are counted.", 900.0, check=_positive)
    lockout_time: float = doc("Seconds of the first account lock; each further lock doubles it.", 60.0, check=_positive)
    lockout_max: float = doc("Longest account lock in seconds.", 3600.0, check=_positive)
    ip_throttle_failures: int = doc("Failed logins from one IP within lockout_window before answers are delayed.", 10, check=_positive)
    ip_block_failures: int = doc("Failed logins from one IP within lockout_window before it is refused.", 30, check=_positive)
    ip_block_time: float = doc("Seconds an IP stays blocked.", 900.0, check=_positive)
    throttle_delay: float = doc("Seconds a failure answer is delayed for a throttled IP.", 2.0, check=_non_negative)
    allow_plaintext_loopback: bool = doc("Allow plain-text passwords without TLS from 127.0.0.0/8 and ::1.", False)
    argon2_time_cost: int = doc("argon2id iterations for new password hashes.", 2, check=_positive)
    argon2_memory_kib: int = doc("argon2id memory in KiB for new password hashes.", 19456, check=_positive)
    argon2_parallelism: int = doc("argon2id lanes for new password hashes.", 1, check=_positive)
    scram_iterations: int = doc("PBKDF2 iterations of new SCRAM-SHA-256 verifiers (RFC 7677: at least 4096).", 4096, check=_positive)
    hash_threads: int = doc("Threads per worker that verify password hashes off the event loop.", 2, check=_positive)


def _retry_schedule(v: tuple[float, ...]) -> str | None:
    if not v or any(x <= 0 for x in v):
        return "needs at least one delay, each greater than 0 seconds"
    return None


@dataclass(frozen=True)
class SmtpConfig:
    max_message_size: int = doc(
        "Largest message in bytes, announced in EHLO SIZE and enforced while reading (RFC 1870).",
        52428800,
        check=_positive,
    )
    max_recipients: int = doc(
        "Recipients per message; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 requires at least 100).",
        1000,
        check=_positive,
    )
    max_commands_before_auth: int = doc(
        "Commands a submission client may send before it authenticates.", 50, check=_positive
    )
    max_hops: int = doc(
        "Received header fields a message may carry (ours included) before it is refused as a mail loop with "
        "554 5.4.6 (RFC 5321 §6.3 asks for at least 100; Postfix's hopcount_limit is 50); also the bound of the "
        "queue and of JMAP submission.", 100, check=_positive
    )


def _smarthost(v: str) -> str | None:
    """``host:port``, ``[v6]:port`` or ``host`` (port 25); host is a name or an IP address."""
    if not v:
        return None
    host, port = v, "25"
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return f"{v!r} is not [IPv6]:port"
        port = rest[1:] or "25"
    elif v.count(":") == 1:
        host, port = v.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{v!r} is not host:port"
    return None


@dataclass(frozen=True)
class RouteConfig:
    smarthost: str = doc('Relay host for this destination, "host:port"; empty means MX lookup.', "",
                         check=_smarthost)
    tls: Literal["opportunistic", "required", "none", "implicit"] = doc(
        "STARTTLS policy toward the relay: opportunistic, required, none, or implicit (TLS on connect).",
        "opportunistic",
    )
    verify_cert: bool = doc("Verify the relay's certificate (off for opportunistic TLS to MX hosts).", False)
    username: str = doc("AUTH user name at the relay (empty: no AUTH).", "")
    password: str = doc("AUTH password at the relay.", "")
    auth_plaintext: bool = doc(
        "Allow AUTH over an unencrypted connection (tls = none, or opportunistic without STARTTLS); "
        "only for a relay on a trusted network.",
        False,
    )


@dataclass(frozen=True)
class QueueConfig:
    retry_schedule: tuple[float, ...] = doc(
        "Seconds between delivery attempts after a temporary failure; the last delay repeats.",
        (300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0),
        check=_retry_schedule,
    )
    lifetime: float = doc(
        "Seconds a message may stay queued before it bounces as undeliverable (default 5 days).",
        432000.0,
        check=_positive,
    )
    delay_notice_after: float = doc(
        "Seconds after which the sender gets one delay notice (0 disables).", 14400.0, check=_non_negative
    )
    max_deliveries: int = doc("Concurrent outbound deliveries of the queue runner.", 50, check=_positive)
    max_per_destination: int = doc("Concurrent connections to one destination host.", 4, check=_positive)
    connect_timeout: float = doc("Seconds to wait for an outbound connection and greeting.", 30.0, check=_positive)
    command_timeout: float = doc("Seconds to wait for each outbound SMTP reply.", 300.0, check=_positive)
    local_relay: str = doc(
        'Where the queue hands mail for local domains (bounces to local senders), "host:port"; '
        "empty means the first smtp listener.",
        "",
        check=lambda v: _binds((v,)) if v else None,
    )
    outcome_keep: float = doc(
        "Seconds the outcome of a finished message (per recipient: delivered, failed or expired, with the"
        " last reply) is kept for JMAP EmailSubmission deliveryStatus (default 7 days).",
        604800.0,
        check=_positive,
    )
    dkim_selector: str = doc("DKIM selector of the per-domain keys (keys live in data_dir/dkim).", "mail")
    dkim_sign: bool = doc("Sign outbound mail whose sender domain has a DKIM key.", True)
    route: dict[str, RouteConfig] = doc(
        'Routes by destination domain ("*" for every other domain): smarthost, TLS and AUTH.',
        factory=dict,
    )


@dataclass(frozen=True)
class StoreConfig:
    io_threads: int = doc("Threads per worker for blocking mail store file and index I/O.", 8, check=_positive)
    group_commit_delay: float = doc(
        "Seconds a group commit (a directory fsync, or the syncfs that makes deferred deliveries durable)"
        " waits for concurrent deliveries to join it, only after a round that served several (the first"
        " after idle starts at once); also the longest a sync waits for rounds still writing; 0 = none.",
        0.0005,
        check=_non_negative,
    )
    max_parse_size: int = doc(
        "Largest message in bytes whose MIME structure is parsed into the index at delivery.",
        64 * 1024 * 1024,
        check=_positive,
    )
    account_cache: int = doc(
        "Accounts a worker keeps open (least recently used beyond this are closed: index connection and caches).",
        1000,
        check=_positive,
    )
    sqlite_memory_mib: int = doc(
        "MiB of SQLite memory per process (SQLite's soft heap limit, over every index, directory and search"
        " connection) past which page caches recycle their least recently used pages instead of growing;"
        " 0 = unlimited. 256: the full default cache (~2 MB) of ~120 busy accounts; more open accounts share it.",
        256,
        check=_non_negative,
    )
    expunge_history: int = doc(
        "Expunged messages remembered per mailbox for QRESYNC VANISHED and JMAP /changes (older ones are"
        " forgotten: a client asking from before them resynchronises).",
        10000,
        check=_positive,
    )
    expunge_history_days: float = doc(
        "Days an expunge is remembered for QRESYNC VANISHED and JMAP /changes (at most expunge_history of them).",
        90.0,
        check=_positive,
    )
    deferred_index: bool = doc(
        "Acknowledge a local delivery once its file is durable in new/ and assign its UID in a background"
        " batch (group commit across deliveries); false: the UID is committed before the acknowledgement.",
        True,
    )
    index_delay: float = doc(
        "Seconds the background indexer waits for more deliveries to join a batch (deferred_index); IDLE"
        " clients see new mail before it (their refresh indexes it).",
        0.25,
        check=_non_negative,
    )
    index_delay_busy: float = doc(
        "Seconds the background indexer waits at most, in steps of index_delay, while delivery rounds"
        " of its worker keep running (larger, fewer index transactions under load: fewer bytes for"
        " the deliveries' syncs to write per message); at most index_delay when not above it.",
        1.0,
        check=_non_negative,
    )
    index_give_way: float = doc(
        "Seconds a background index batch (UIDs, and search indexing after delivery) waits at most, in"
        " slices, while delivery rounds of its worker run, so that a delivery does not wait behind it;"
        " 0: never waits.",
        0.02,
        check=_non_negative,
    )
    syncfs: bool = doc(
        "Make deferred deliveries durable with one syncfs(2) of the mail file system per group commit,"
        " and a new account's tree with one syncfs"
        " (Linux); false: an fsync of each file and new/ directory (better where the mail store shares"
        " its file system with heavy writers, whose dirty data a syncfs also waits for).",
        True,
    )
    journal: bool = doc(
        "Make deferred deliveries (syncfs, no quota limit) durable with a record in the worker's delivery"
        " journal (data_dir/journal) and one fdatasync of it per group commit; their maildir links are"
        " made durable by a syncfs every journal_interval (a checkpoint); a worker replays the journals"
        " of dead processes at start, and the master, whatever this setting is now (docs/store-api.md,"
        " Durability).",
        True,
    )
    journal_interval: float = doc(
        "Seconds between two checkpoints of the delivery journal while it holds records (one syncfs each).",
        0.2,
        check=_positive,
    )
    journal_size_mib: int = doc(
        "MiB of each of the two delivery journal files of a worker (written once at its start); a file"
        " half full is checkpointed at once, a full one sends deliveries to the syncfs path until then.",
        8,
        check=_positive,
    )
    journal_max_message: int = doc(
        "Largest message in bytes that goes through the delivery journal (larger ones are made durable"
        " by syncfs: the journal writes their bytes a second time).",
        64 * 1024,
        check=_non_negative,
    )


@dataclass(frozen=True)
class SearchConfig:
    enabled: bool = doc("Index messages for SEARCH/SORT/Email/query at delivery (false: index at first search).", True)
    max_text_bytes: int = doc(
        "Characters of decoded body text per message that are indexed and searchable.", 1 << 20, check=_positive
    )
    snapshot_every: int = doc(
        "Journal records after which a mailbox's search index is folded into a new snapshot "
        "(at least an eighth of its messages).",
        2000,
        check=_positive,
    )
    cache_mailboxes: int = doc(
        "Mailbox search indexes a worker keeps loaded in memory (least recently used; ~5 KB per message);"
        " indexing after delivery appends to the others without loading them.",
        16,
        check=_positive,
    )
    threads: int = doc("Threads per worker for search index I/O and evaluation.", 2, check=_positive)
    batch: int = doc("Messages indexed per step when a search finds unindexed messages, and per round after delivery"
                     " (all mailboxes together: one job).", 200, check=_positive)


@dataclass(frozen=True)
class JmapConfig:
    base_url: str = doc(
        'Absolute URL prefix clients reach JMAP at, e.g. "https://mail.example.com"; "" = from the request Host.', ""
    )
    max_size_request: int = doc("Largest API request body in bytes (RFC 8620 maxSizeRequest).", 10_000_000, check=_positive)
    max_calls_in_request: int = doc("Method calls in one API request (maxCallsInRequest).", 64, check=_positive)
    max_concurrent_requests: int = doc("API requests one user may have in flight (maxConcurrentRequests).", 8, check=_positive)
    max_objects_in_get: int = doc("Ids in one /get call (maxObjectsInGet).", 1000, check=_positive)
    max_objects_in_set: int = doc("Creates + updates + destroys in one /set call (maxObjectsInSet).", 1000, check=_positive)
    max_size_upload: int = doc("Largest upload in bytes (maxSizeUpload); uploads are streamed to disk.", 2 * 1024**3, check=_positive)
    max_concurrent_upload: int = doc("Uploads one user may run at once (maxConcurrentUpload).", 4, check=_positive)
    upload_dir: Path = doc("Where uploaded blobs are kept, relative to server.data_dir.", Path("jmap-upload"))
    upload_lifetime: float = doc("Seconds an unreferenced upload is kept (RFC 8620 §6.1 asks for at least one hour).", 86400.0, check=_positive)
    cors_origins: tuple[str, ...] = doc('Origins allowed by CORS; ["*"] allows any (credentials are never implied).', ("*",))
    access_token_lifetime: float = doc(
        "Seconds a URL access token (for browsers' EventSource, which cannot send Authorization) stays valid.",
        300.0,
        check=_positive,
    )
    push_ping_max: int = doc("Largest EventSource ping interval in seconds a client may ask for.", 300, check=_positive)
    max_delayed_send: int = doc(
        "Longest hold in seconds of an EmailSubmission's sendAt (RFC 8621 maxDelayedSend; the message waits in "
        "the outbound queue and can be cancelled until then); 0 = no delayed send.",
        7 * 86400,
        check=_non_negative,
    )


def _expire(v: str) -> str | None:
    if v in ("", "NEVER") or (v.isascii() and v.isdigit() and int(v) <= 24855):
        return None
    return 'must be "" (not announced), "NEVER", or a number of days (0: retrieved messages are deleted at QUIT)'


@dataclass(frozen=True)
class ImapConfig:
    append_limit: int = doc(
        "Largest message in bytes APPEND accepts (RFC 7889 APPENDLIMIT; larger gets NO [TOOBIG]).",
        64 * 1024 * 1024,
        check=_positive,
    )
    max_literal: int = doc("Largest literal in bytes outside APPEND (search strings, passwords).", 65536, check=_positive)
    idle_timeout: float = doc(
        "Seconds an IDLE command may last without DONE (RFC 2177 asks clients to re-issue it within 29 minutes).",
        1800.0,
        check=_positive,
    )
    max_unauth_commands: int = doc("Commands a connection may send before it authenticates.", 30, check=_positive)
    max_auth_failures: int = doc("Failed LOGIN/AUTHENTICATE attempts before the connection is closed.", 3, check=_positive)
    acl_anyone: bool = doc(
        'Let owners give folder rights to "anyone" / "authenticated" with SETACL (RFC 4314): every user of '
        "the owner's domain (docs/shared-mailboxes.md). Off: refused, and existing such entries give nothing "
        "(IMAP and JMAP).",
        False,
    )
    metadata_max_value: int = doc(
        "Largest METADATA value in bytes (RFC 5464 SETMETADATA; larger gets NO [METADATA MAXSIZE n]). "
        "A literal over max_literal is refused before.",
        64000,
        check=_positive,
    )
    metadata_max_entries: int = doc(
        "METADATA entries per mailbox: its shared ones, and each user's private ones (RFC 5464; more gets "
        "NO [METADATA TOOMANY]).",
        100,
        check=_positive,
    )
    shared_private_seen: bool = doc(
        "A grantee's \\Seen on another user's shared folders is their own (Dovecot's INDEXPVT, for \\Seen "
        "only): kept in private-seen.db in the grantee's maildir; the owner's \\Seen and the other flags are "
        "untouched by it (docs/shared-mailboxes.md). Off: \\Seen is the owner's, shared by every grantee.",
        True,
    )


@dataclass(frozen=True)
class Pop3Config:
    expire: str = doc(
        'RFC 2449 EXPIRE policy, announced in CAPA and enforced: "" (none), "NEVER", or a number of '
        "days after its first RETR that a message is deleted at the next login (\"0\": at QUIT).",
        "",
        check=_expire,
    )
    login_delay: int = doc(
        "RFC 2449 LOGIN-DELAY: least seconds between two logins of one user (0: not enforced).",
        0,
        check=_non_negative,
    )
    max_auth_failures: int = doc("Failed logins in one session before it is disconnected.", 3, check=_positive)
    no_flag_updates: bool = doc(
        "Leave flags alone (Dovecot's pop3_no_flag_updates): false marks what RETR sent \\Seen when the "
        "session ends (QUIT or not, RSET forgets the marks; TOP marks nothing) and the login takes \\Recent.",
        False,
    )


@dataclass(frozen=True)
class MimeConfig:
    """Bounds of the MIME parser (mailsrv.mime): beyond them a structure is cut short, never an error."""

    max_depth: int = doc(
        "Deepest nesting of multipart and message/rfc822 parts that is parsed; deeper ones stay unparsed leaves.",
        100,
        check=_positive,
    )
    max_parts: int = doc("Most MIME parts parsed in one message; the rest stays in the last part.", 5000, check=_positive)
    max_value: int = doc(
        "Bytes kept of one structural header field value (Subject, To, Content-Type...) in the index.",
        65536,
        check=_positive,
    )


@dataclass(frozen=True)
class DomainPolicyConfig:
    junk_score: float = doc("Spam score from which this domain's mail goes to Junk with X-Spam-* headers.", 5.0)
    reject_score: float = doc("Spam score from which this domain's mail is refused (550 5.7.1 at DATA).", 15.0)


def _nameservers(v: tuple[str, ...]) -> str | None:
    for spec in v:
        host, port = spec, "53"
        if spec.startswith("["):
            host, _, rest = spec[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else "53"
        elif spec.count(":") == 1:
            host, port = spec.split(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return f"{spec!r} is not an IP address with an optional :port"
        if not port.isdigit() or not 0 < int(port) < 65536:
            return f"{spec!r} has a bad port"
    return None


@dataclass(frozen=True)
class PolicyConfig:
    enabled: bool = doc("Run the inbound/outbound policy checks (SPF, DKIM, DMARC, DNSBL, scoring, viruses).", True)
    authserv_id: str = doc(
        "authserv-id of our Authentication-Results header (empty: server.hostname); copies claiming it are removed.",
        "",
    )
    nameservers: tuple[str, ...] = doc(
        'DNS servers for policy and outbound MX lookups, "ip" or "ip:port" (empty: /etc/resolv.conf). Tests point this '
        "at a local server.",
        (),
        check=_nameservers,
    )
    skip_networks: tuple[str, ...] = doc(
        "Client networks (CIDR) whose mail skips the inbound checks (local tools, the queue's own relay). "
        "Behind a proxy or load balancer on this host, set proxy_protocol on its listeners: without it every "
        "client would come from 127.0.0.1 and skip the checks.",
        ("127.0.0.0/8", "::1/128"),
        check=_cidrs,
    )
    dns_timeout: float = doc("Seconds a policy DNS lookup may take before it counts as a temporary error.", 5.0,
                             check=_positive)
    dns_cache_ttl: float = doc("Longest time in seconds a DNS answer is cached (its TTL is used when shorter).",
                               3600.0, check=_positive)
    spf: bool = doc("Check SPF (RFC 7208) for the MAIL FROM and HELO identities.", True)
    dkim: bool = doc("Verify DKIM signatures (RFC 6376) and ARC chains (RFC 8617).", True)
    dmarc: bool = doc("Apply DMARC (RFC 7489): reject or junk unaligned mail as the From domain's policy says.", True)
    arc_trusted_sealers: tuple[str, ...] = doc(
        "Domains whose valid ARC seal (mailing lists, forwarders) overrides a DMARC reject (RFC 8617 §7.2).", ()
    )
    max_scan_size: int = doc(
        "Largest message in bytes that is DKIM/ARC-verified, scored and virus-scanned (larger: headers only).",
        16 * 1024 * 1024, check=_positive,
    )
    dnsbl_zones: tuple[str, ...] = doc('DNS blocklist zones queried with the client IP, e.g. ["zen.spamhaus.org"].', ())
    dnsbl_reject: bool = doc("Refuse clients listed in a DNSBL at RCPT (554 5.7.1) instead of only scoring them.",
                             False)
    dnsbl_skip_networks: tuple[str, ...] = doc(
        "Client networks (CIDR) never looked up in a DNSBL (RFC 5782 zones list public addresses only).",
        ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
         "100.64.0.0/10", "fc00::/7", "fe80::/10"),
        check=_cidrs,
    )
    require_fcrdns: bool = doc("Refuse clients without forward-confirmed reverse DNS (otherwise only scored).", False)
    greet_pause: float = doc(
        "Seconds to wait before the greeting; a client that talks first is refused (0: no check).", 0.0,
        check=_non_negative,
    )
    greylist: bool = doc("Greylist new (client /24, sender, recipient) triplets with 451 4.7.1.", False)
    greylist_delay: float = doc("Seconds a new triplet is deferred before a retry is accepted.", 300.0,
                                check=_non_negative)
    greylist_expire: float = doc("Seconds an unconfirmed triplet is remembered (a retry after that starts over).",
                                 86400.0, check=_positive)
    greylist_pass_ttl: float = doc("Seconds a confirmed triplet stays accepted without delay.", 36 * 86400.0,
                                   check=_positive)
    greylist_whitelist: tuple[str, ...] = doc(
        "Client networks (CIDR) and sender domains that are never greylisted.", ()
    )
    junk_score: float = doc("Default spam score from which mail goes to Junk with X-Spam-* headers.", 5.0)
    reject_score: float = doc("Default spam score from which mail is refused with 550 5.7.1 at DATA.", 15.0)
    rspamd_url: str = doc('rspamd controller/normal worker URL, e.g. "http://127.0.0.1:11333" (empty: built-in scorer).', "")
    rspamd_controller_url: str = doc(
        'rspamd controller URL that learns from Junk moves (/learnspam, /learnham), e.g. "http://127.0.0.1:11334" '
        "(empty: training stays with the built-in learner).", "")
    rspamd_password: str = doc("Password sent to the rspamd controller when learning (empty: none).", "")
    bayes: bool = doc("Learn spam and ham from Junk moves and `mailsrv policy learn`; score with the learner.", True)
    bayes_per_user: bool = doc("Also learn per user; a message to one recipient is scored with that user's counts added to the server's and the domain's.",
                               False)
    bayes_min_spam: int = doc("Spam messages a learner must have seen before it scores.", 100, check=_positive)
    bayes_min_ham: int = doc("Ham messages a learner must have seen before it scores.", 100, check=_positive)
    bayes_spam_points: float = doc("Points the learner adds in the spam zone (in the unsure zone scaled down to 0 at 0.5).", 4.0,
                                   check=_non_negative)
    bayes_ham_points: float = doc("Points the learner removes in the ham zone (in the unsure zone scaled down to 0 at 0.5).", 2.0,
                                  check=_non_negative)
    bayes_spam_cutoff: float = doc("Spam probability from which the learner is sure (SpamBayes' spam zone): it then "
                                   "adds all of bayes_spam_points.", 0.9, check=_probability)
    bayes_ham_cutoff: float = doc("Spam probability up to which the learner is sure of ham (SpamBayes' ham zone): it "
                                  "then removes all of bayes_ham_points; in between, points in proportion.", 0.2,
                                  check=_probability)
    bayes_sure_points: float = doc("Points the learner adds on top of bayes_spam_points when it is all but certain "
                                   "(spam probability bayes_sure_cutoff or more).", 1.0,
                                   check=_non_negative)
    bayes_sure_cutoff: float = doc("Spam probability from which the learner adds bayes_sure_points too (chosen by "
                                   "cross-validation on the development half of the SpamAssassin public corpus).",
                                   0.95, check=_probability)
    bayes_sure_ham_cutoff: float = doc("Spam probability up to which the learner is sure of ham: the content rules' "
                                       "points then count at bayes_sure_ham_rules of themselves.", 0.01,
                                       check=_probability)
    bayes_sure_ham_rules: float = doc("Weight of the content rules' points when the learner is sure of ham (1: full "
                                      "points; connection signals and GTUBE always count in full).", 0.5,
                                      check=_probability)
    bayes_train_batch: int = doc("Junk moves learned per write transaction by a worker's background trainer.", 100,
                                 check=_positive)
    bayes_train_queue: int = doc("Junk moves a worker's trainer holds before a move command waits for room.", 20000,
                                 check=_positive)
    bayes_max_tokens: int = doc(
        "Tokens a learner keeps per scope; beyond, the ones learned longest ago are forgotten (as SpamAssassin "
        "expires its Bayes database).", 300000, check=_positive)
    clamd_socket: str = doc('clamd socket: a path (unix) or "host:port" (empty: no virus scanning).', "")
    clamd_timeout: float = doc("Seconds a clamd scan may take.", 30.0, check=_positive)
    virus_action: Literal["reject", "quarantine", "strip"] = doc(
        "What to do with infected mail: reject (554 5.7.1), quarantine (deliver into Junk, flagged), "
        "or strip (replace the infected attachments with a notice).",
        "reject",
    )
    clamd_failure: Literal["tempfail", "accept"] = doc(
        "When clamd cannot be reached: tempfail (451 4.7.1, fail closed) or accept unscanned (fail open).",
        "tempfail",
    )
    max_messages_per_hour: int = doc("Messages one authenticated user may submit per hour (0: unlimited).", 200,
                                     check=_non_negative)
    max_outside_recipients_per_day: int = doc(
        "Distinct outside recipients one user may write to per rolling day, for a small organisation "
        "(0: unlimited). The limit is min(cap, max(this, per_seat x users of the sender's domain)).", 1500,
        check=_non_negative,
    )
    outside_recipients_per_seat: int = doc(
        "Growth of the daily outside-recipient limit per user of the sender's domain (0: no growth).", 5,
        check=_non_negative,
    )
    outside_recipients_cap: int = doc(
        "Highest daily outside-recipient limit however large the domain (0: no cap).", 20000,
        check=_non_negative,
    )
    # (a table of tables: keep it last, so the sample documents it after the plain keys)
    domain: dict[str, DomainPolicyConfig] = doc("Per recipient domain thresholds (junk_score, reject_score).",
                                                factory=dict)


@dataclass(frozen=True)
class RecallConfig:
    enabled: bool = doc("Let senders (mailsrv recall, the admin API, JMAP Email/recall) take back unread local "
                        "copies of a message they sent.", True)
    window: float = doc("Seconds after its delivery during which a copy can still be recalled.", 86400.0,
                        check=_positive)
    notice: bool = doc('Deliver a short notice ("<sender> recalled the message ...") into the INBOX of each '
                       "recipient whose copy was removed.", True)
    max_accounts: int = doc("Accounts one recall looks through at most (its cost is about one index lookup per "
                            "account); a larger organisation raises it.", 100000, check=_positive)


def _archive_match(v: tuple[str, ...]) -> str | None:
    if not v:
        return "needs at least one address, group address or @domain"
    bad = [m for m in v if not m.rpartition("@")[2] or m.strip() != m]
    return f"{bad[0]!r} is neither an address nor @domain" if bad else None


def _archive_to(v: str) -> str | None:
    local, sep, domain = v.rpartition("@")
    return None if sep and local and domain else f"{v!r} is not an address (the archive account)"


@dataclass(frozen=True)
class ArchiveRuleConfig:
    match: tuple[str, ...] = doc('Whose mail is archived: addresses (users, aliases), group or department addresses '
                                 '(their current members), "@domain"s.', (), check=_archive_match)
    direction: Literal["in", "out", "both"] = doc('"in": mail received by a match, "out": mail sent by one, '
                                                  '"both".', "both")
    to: str = doc("The archive: a local account (it must exist) that receives one copy per message.", "",
                  check=_archive_to)
    folder: str = doc('Folder of the archive account the copies go to (created when missing).', "INBOX")
    retention_days: int = doc("Days an archived copy is kept (by its internal date), then expunged; 0 keeps it "
                              "for ever.", 0, check=_non_negative)


@dataclass(frozen=True)
class ArchiveConfig:
    rule: dict[str, ArchiveRuleConfig] = doc("Archiving rules by name ([archive.rule.NAME]); none: nothing is "
                                             "archived.", factory=dict)
    sweep_interval: float = doc("Seconds between two retention sweeps (one process sweeps).", 3600.0,
                                check=_positive)
    sweep_batch: int = doc("Copies one expunge of the retention sweep removes at most.", 200, check=_positive)


@dataclass(frozen=True)
class FilesConfig:
    enabled: bool = doc("Big attachments through links: users upload a file (PUT /files/NAME on the JMAP listener, "
                        "JMAP FileLink/set) and mail a download link instead of the octets (docs/files.md).", True)
    max_size: int = doc("Largest file in bytes (streamed to disk, never held in memory).", 2 * 1024**3,
                        check=_positive)
    quota: int = doc("Bytes one user may keep in live links (0 = unlimited).", 10 * 1024**3, check=_non_negative)
    retention_days: int = doc("Days a link stays valid (and its file kept) after the upload; then the link "
                              "answers 410 Gone and the file is deleted.", 30, check=_positive)
    public_url: str = doc('Absolute URL prefix of download links, e.g. "https://files.example.com"; "" = jmap.base_url, '
                          "else the request's Host.", "")
    sweep_interval: float = doc("Seconds between two sweeps of expired links (one process sweeps).", 3600.0,
                                check=_positive)
    convert_over: int = doc("On authenticated submission (SMTP AUTH, JMAP EmailSubmission), an attachment larger "
                            "than this many bytes (encoded) is stored as a link of the sender's and replaced in the "
                            "message, for every recipient, by a short text part with the link; over the sender's "
                            "quota the message goes as written; 0 = never (docs/files.md). A domain's or user's own "
                            "threshold overrides it: `mailsrv files convert SCOPE N|off|default`.", 0,
                            check=_non_negative)
    download_rate_per_ip: int = doc("Public downloads (GET/HEAD /f/TOKEN) one client address (an IPv6 /64) may "
                                    "request per minute, per worker, in bursts of as many; more are answered 429 "
                                    "with Retry-After; 0 = unlimited.", 60, check=_non_negative)
    download_concurrent_per_ip: int = doc("Downloads one client address (an IPv6 /64) may run at once, per "
                                          "worker (429 beyond); 0 = unlimited.", 4, check=_non_negative)
    download_concurrent_per_link: int = doc("Downloads of one link that may run at once, per worker (429 beyond; "
                                            "a link sent to a large list is fetched by many); 0 = unlimited.", 32,
                                            check=_non_negative)
    download_bytes_per_second_per_ip: int = doc("Octets per second sent to one client address (an IPv6 /64), all "
                                                "its downloads together, per worker: paced, not refused; "
                                                "0 = unlimited.", 0, check=_non_negative)


@dataclass(frozen=True)
class SieveConfig:
    # the language and its actions at delivery (mailsrv.sieve, mailsrv.delivery.sieve)
    enabled: bool = doc("Run each recipient's active Sieve script at local delivery: file into folders, flag, "
                        "redirect, discard, vacation replies (docs/sieve.md).", True)
    max_script_size: int = doc("Largest Sieve script in bytes (larger ones do not compile).", 64 * 1024,
                               check=_positive)
    max_redirects: int = doc("Redirects one script may make for one message (more is a runtime error: the "
                             "message is kept), as Dovecot's sieve_max_redirects.", 4, check=_non_negative)
    global_dir: Path = doc('Directory of the global scripts that `include :global "NAME"` runs (NAME.sieve), '
                           "relative to server.data_dir; written by the administrator.", Path("sieve-global"))
    notify_per_hour: int = doc("Sieve notifications (enotify, mailto) one account may send per hour; more are "
                               "dropped (sieve.notify_skipped reason=rate).", 30, check=_non_negative)
    spamtest_max_score: float = doc("X-Spam-Score (of our policy) at and above which Sieve spamtest (RFC 5235) is "
                                    '"10" and spamtest :percent "100"; a score of 0 or less is "1" and "0", linear '
                                    "between (as Pigeonhole's sieve_spamtest_max_value).", 10.0, check=_positive)
    # script storage and ManageSieve (mailsrv.sieve.scripts, mailsrv.managesieve)
    max_scripts: int = doc("Sieve scripts one account may keep (ManageSieve answers NO (QUOTA/MAXSCRIPTS) "
                           "beyond).", 16, check=_positive)


@dataclass(frozen=True)
class Config:
    """The whole configuration file."""

    server: ServerConfig = doc("Process model and paths.", factory=ServerConfig)
    tls: TlsConfig = doc("Certificate and TLS policy shared by every listener.", factory=TlsConfig)
    limits: LimitsConfig = doc("Default per-listener limits.", factory=LimitsConfig)
    listener: dict[str, ListenerConfig] = doc("Listeners by name.", factory=dict)
    smtp: SmtpConfig = doc("SMTP inbound and submission limits.", factory=SmtpConfig)
    queue: QueueConfig = doc("Outbound queue: retries, lifetime, routes, DKIM.", factory=QueueConfig)
    directory: DirectoryConfig = doc("The user directory database.", factory=DirectoryConfig)
    auth: AuthConfig = doc("Authentication, lockout and password hashing.", factory=AuthConfig)
    store: StoreConfig = doc("The mail store: I/O threads and group commit.", factory=StoreConfig)
    search: SearchConfig = doc("The search index: what is indexed, snapshots, caching.", factory=SearchConfig)
    imap: ImapConfig = doc("IMAP: APPEND and literal limits, IDLE duration, pre-login limits.", factory=ImapConfig)
    pop3: Pop3Config = doc("POP3: EXPIRE and LOGIN-DELAY policy, login failures per session.", factory=Pop3Config)
    jmap: JmapConfig = doc("JMAP: request limits, uploads, CORS, push.", factory=JmapConfig)
    mime: MimeConfig = doc("MIME parser bounds: nesting depth, part count, header value size.", factory=MimeConfig)
    policy: PolicyConfig = doc("Inbound mail security and outbound limits (issue 12).", factory=PolicyConfig)
    recall: RecallConfig = doc("Recall of internal mail: window and notice.", factory=RecallConfig)
    archive: ArchiveConfig = doc("Archiving rules (journaling) and their retention.", factory=ArchiveConfig)
    files: FilesConfig = doc("Big attachments through links: size, quota, retention.", factory=FilesConfig)
    sieve: SieveConfig = doc("Sieve mail filters: scripts run at delivery, ManageSieve.", factory=SieveConfig)
    source: str = field(default="<defaults>", compare=False, metadata={"internal": True})


# --- loading -------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "nothing"
    if is_dataclass(tp):
        return "table"
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path string"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, src: str, key: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in get_args(tp):
            if alt is type(None):
                continue
            try:
                return _convert(alt, value, src, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(src, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(src, key, f"expected one of {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(src, key, f"expected a {_type_name(tp)}, got {value!r}")
        item_tp = get_args(tp)[0]
        return tuple(_convert(item_tp, v, src, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(src, key, f"expected a table, got {value!r}")
        val_tp = get_args(tp)[1]
        return {k: _convert(val_tp, v, src, f"{key}.{k}") for k, v in value.items()}
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(src, key, f"expected a table, got {value!r}")
        return build(typing.cast(type, tp), value, src, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
    raise ConfigError(src, key, f"expected {_type_name(tp)}, got {value!r}")


def build(cls: type[T], data: dict[str, Any], src: str = "<config>", prefix: str = "") -> T:
    """Validate ``data`` (parsed TOML) into the frozen dataclass ``cls``."""
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}  # type: ignore[arg-type]
    for key in data:
        if key not in known:
            dotted = f"{prefix}.{key}" if prefix else key
            choices = ", ".join(sorted(known))
            raise ConfigError(src, dotted, f"unknown key (known keys here: {choices})")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _convert(hints[name], data[name], src, dotted)
            check = f.metadata.get("check")
            if check is not None and value is not None:
                problem = check(value)
                if problem:
                    raise ConfigError(src, dotted, problem)
            kwargs[name] = value
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(src, dotted, f"missing required key ({_type_name(hints[name])})")
    return cls(**kwargs)


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a configuration file. Raises :class:`ConfigError`."""
    src = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(src, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(src, "", f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(src, "", f"not valid TOML: {exc}") from None
    cfg = build(Config, data, src)
    base = Path(src).resolve().parent
    server = cfg.server
    # Relative paths are relative to the config file, so a setup directory can move.
    if not server.data_dir.is_absolute():
        server = _replace(server, data_dir=base / server.data_dir)
    tls = cfg.tls
    if not tls.cert.is_absolute() or not tls.key.is_absolute():
        tls = _replace(tls, cert=base / tls.cert, key=base / tls.key)
    cfg = _replace(cfg, server=server, tls=tls, source=src)
    _check_listeners(cfg)
    for name, rule in cfg.archive.rule.items():
        if not rule.to or not rule.match:
            key = "to" if not rule.to else "match"
            raise ConfigError(src, f"archive.rule.{name}.{key}", "missing (every rule needs match and to)")
    return cfg


def _check_listeners(cfg: Config) -> None:
    seen: dict[tuple[str, int], str] = {}
    for name, lst in cfg.listener.items():
        for item in lst.bind:
            host, port = parse_bind(item)
            if port and (host, port) in seen:
                raise ConfigError(
                    cfg.source, f"listener.{name}.bind", f"{item} is also bound by listener.{seen[(host, port)]}"
                )
            seen[(host, port)] = name
        if lst.protocol == "jmap" and lst.tls == "starttls":
            raise ConfigError(cfg.source, f"listener.{name}.tls", "HTTP has no STARTTLS; use none or implicit")


def _replace(obj: T, **changes: Any) -> T:
    import dataclasses

    return dataclasses.replace(obj, **changes)  # type: ignore[type-var]


def default_path() -> str:
    """The config file named by ``MAILSRV_CONFIG``, else the system default."""
    return os.environ.get("MAILSRV_CONFIG") or "/etc/mailsrv/mailsrv.toml"


def iter_keys(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """Yield (dotted key, field) for every documented key of a schema class.

    Used by the test that keeps conf/mailsrv.toml in step with the schema.
    """
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if is_dataclass(tp):
            yield from iter_keys(typing.cast(type, tp), dotted)
        elif get_origin(tp) is dict and is_dataclass(get_args(tp)[1]):
            yield from iter_keys(get_args(tp)[1], f"{dotted}.*")
        else:
            yield dotted, f
