"""Where an account's Sieve scripts live and which one is active (blocking file calls).

Layout, as Dovecot/Pigeonhole lays it out under the account's maildir root
(``mailsrv.store.account_root``)::

    <root>/sieve/<name>.sieve     one UTF-8 file per script
    <root>/sieve/.active          a symlink -> "<name>.sieve" while a script is active
    <root>/sieve/.lock            flock(2) serialising changes (readers never take it)

Invariants: every change is durable before a function returns (temp file -> fsync -> rename ->
fsync the directory); the active marker is switched by renaming a new symlink over it, so a reader
sees the old or the new active script, never none in between; the active script is never deleted
(RFC 5804 §2.10 ACTIVE). Scripts count against nothing but their own limits (``[sieve]
max_scripts``, ``max_script_size``, default ``mailsrv.sieve.MAX_SCRIPT_SIZE``). Callers on an event loop run these in the store's I/O pool.
"""

from __future__ import annotations

import fcntl
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailsrv.sieve import MAX_SCRIPT_SIZE, SieveError, compile
from mailsrv.util.fsio import durable_write, fsync_dir, unique_name

#: scripts one account may keep (Dovecot's sieve_quota_max_scripts; [sieve] max_scripts)
MAX_SCRIPTS = 16
#: characters of a script name (RFC 5804 §1.6 asks servers to allow at least 128; we allow exactly
#: that, so "<name>.sieve" stays under NAME_MAX = 255 bytes even with 3-byte UTF-8 characters)
MAX_NAME = 128

DIRNAME = "sieve"
SUFFIX = ".sieve"
ACTIVE = ".active"
_LOCK = ".lock"


class ScriptError(Exception):
    """A refused script operation; ``code`` is the RFC 5804 response code (or "")."""

    code = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadName(ScriptError):
    """The name breaks RFC 5804 §1.6 (control characters, "/", too long, not NFC, empty)."""


class NoSuchScript(ScriptError):
    code = "NONEXISTENT"


class ScriptActive(ScriptError):
    code = "ACTIVE"


class ScriptExists(ScriptError):
    code = "ALREADYEXISTS"


class TooManyScripts(ScriptError):
    code = "QUOTA/MAXSCRIPTS"


class ScriptTooBig(ScriptError):
    code = "QUOTA/MAXSIZE"


class InvalidScript(ScriptError):
    """The script does not compile: ``line`` (1-based, 0 if unknown) and the compiler's message."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.reason = message


# RFC 5804 §1.6: sieve-name = 1*1024(unicode-character) excluding CTL (%x00-1F / %x7F),
# LINE SEPARATOR (U+2028) and PARAGRAPH SEPARATOR (U+2029); "/" is ours (a file name).
_FORBIDDEN = frozenset(chr(c) for c in range(0x20)) | {"\x7f", "\u2028", "\u2029", "/"}


def check_name(name: str) -> str:
    """Return ``name`` if it is an acceptable script name, else raise :class:`BadName`."""
    if not name:
        raise BadName("empty script name")
    if len(name) > MAX_NAME:
        raise BadName(f"script name longer than {MAX_NAME} characters")
    if any(ch in _FORBIDDEN or 0x80 <= ord(ch) < 0xA0 for ch in name):
        raise BadName("control character or '/' in script name")
    if any(0xD800 <= ord(ch) < 0xE000 for ch in name):
        raise BadName("surrogate in script name")
    if unicodedata.normalize("NFC", name) != name:
        raise BadName("script name is not in Unicode NFC")
    return name


def validate(text: str, max_size: int = MAX_SCRIPT_SIZE) -> None:
    """Raise :class:`ScriptTooBig` or :class:`InvalidScript` unless ``text`` is a storable script.

    Compiles with ``mailsrv.sieve.compile`` (the language's own bounds apply too).
    """
    if len(text.encode("utf-8", "surrogatepass")) > max_size:
        raise ScriptTooBig(f"script larger than {max_size} bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidScript("script is not valid UTF-8") from None
    _compile(text, max_size)


def _compile(text: str, max_size: int) -> None:
    try:
        compile(text, max_size)
    except SieveError as e:
        raise InvalidScript(e.message, e.line) from None


def _dir(root: Path | str) -> Path:
    return Path(root) / DIRNAME


def _path(root: Path | str, name: str) -> Path:
    return _dir(root) / (check_name(name) + SUFFIX)


def _active_name(d: Path) -> str | None:
    try:
        target = os.readlink(d / ACTIVE)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # not a symlink (someone wrote a file there): nothing is active
        return None
    if "/" in target or not target.endswith(SUFFIX):
        return None
    return target[: -len(SUFFIX)]


@contextmanager
def _locked(root: Path | str) -> Iterator[Path]:
    """The account's script directory (created), with its change lock held."""
    d = _dir(root)
    if not d.is_dir():
        # an account without mail yet has no maildir: make it (the store adopts an existing root)
        made = [p for p in (d.parent, d) if not p.is_dir()]
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for p in made:  # each new directory's entry durable in its parent
            fsync_dir(p.parent)
    fd = os.open(d / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _names(d: Path) -> list[str]:
    try:
        with os.scandir(d) as it:
            return sorted(e.name[: -len(SUFFIX)] for e in it
                          if e.name.endswith(SUFFIX) and e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return []


def active_path(root: Path | str) -> Path | None:
    """The file of the active script, or None: one readlink(2) (callers cache by its stat)."""
    d = _dir(root)
    name = _active_name(d)
    return None if name is None else d / (name + SUFFIX)


def active_script(root: Path | str) -> tuple[str, str] | None:
    """(name, text) of the account's active script, or None when none is (or its file is gone)."""
    d = _dir(root)
    name = _active_name(d)
    if name is None:
        return None
    try:
        return name, (d / (name + SUFFIX)).read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def list_scripts(root: Path | str) -> list[tuple[str, bool]]:
    """Every script's name (sorted) and whether it is the active one."""
    d = _dir(root)
    active = _active_name(d)
    return [(n, n == active) for n in _names(d)]


def get_script(root: Path | str, name: str) -> str:
    """The text of script ``name``; raises :class:`NoSuchScript`, :class:`BadName`."""
    try:
        return _path(root, name).read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        raise NoSuchScript(f"no script named {name!r}") from None


def check_space(root: Path | str, name: str, size: int, *, max_size: int = MAX_SCRIPT_SIZE,
                max_scripts: int = MAX_SCRIPTS) -> None:
    """Would a script of ``size`` bytes named ``name`` fit (RFC 5804 §2.5 HAVESPACE)?

    Raises :class:`ScriptTooBig`, :class:`TooManyScripts`, :class:`BadName`.
    """
    check_name(name)
    if size > max_size:
        raise ScriptTooBig(f"script larger than {max_size} bytes")
    names = _names(_dir(root))
    if name not in names and len(names) >= max_scripts:
        raise TooManyScripts(f"at most {max_scripts} scripts")


def put_script(root: Path | str, name: str, text: str, *, max_size: int = MAX_SCRIPT_SIZE,
               max_scripts: int = MAX_SCRIPTS) -> None:
    """Store (create or replace) script ``name`` durably after validating it (RFC 5804 §2.6).

    Replacing the active script changes what delivery runs at once (one rename). Raises
    :class:`BadName`, :class:`ScriptTooBig`, :class:`TooManyScripts`, :class:`InvalidScript`,
    OSError.
    """
    check_name(name)
    validate(text, max_size)
    data = text.encode("utf-8")
    with _locked(root) as d:
        check_space(root, name, len(data), max_size=max_size, max_scripts=max_scripts)
        durable_write(d / (name + SUFFIX), data)


def create_script(root: Path | str, name: str, text: str, *, max_size: int = MAX_SCRIPT_SIZE,
                  max_scripts: int = MAX_SCRIPTS) -> None:
    """As :func:`put_script`, but never replaces: raises :class:`ScriptExists` when ``name`` is taken,
    checked under the lock (JMAP's SieveScript/set create, RFC 9661 §2.2 alreadyExists)."""
    check_name(name)
    validate(text, max_size)
    data = text.encode("utf-8")
    with _locked(root) as d:
        if (d / (name + SUFFIX)).is_file():
            raise ScriptExists(f"a script named {name!r} exists")
        check_space(root, name, len(data), max_size=max_size, max_scripts=max_scripts)
        durable_write(d / (name + SUFFIX), data)


def set_active(root: Path | str, name: str | None) -> None:
    """Make ``name`` the active script, or none with None (RFC 5804 §2.8); atomic and durable.

    Raises :class:`NoSuchScript`, :class:`BadName`.
    """
    if name is not None:
        check_name(name)
    with _locked(root) as d:
        if name is None:
            try:
                os.unlink(d / ACTIVE)
            except FileNotFoundError:
                return
            fsync_dir(d)
            return
        if not (d / (name + SUFFIX)).is_file():
            raise NoSuchScript(f"no script named {name!r}")
        _point(d, name)


def _point(d: Path, name: str) -> None:
    """Switch the active marker to ``name`` (the caller holds the lock): a new symlink renamed over."""
    tmp = d / f".active.{unique_name()}.tmp"
    os.symlink(name + SUFFIX, tmp)
    try:
        os.replace(tmp, d / ACTIVE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(d)


def delete_script(root: Path | str, name: str) -> None:
    """Delete script ``name`` (RFC 5804 §2.10). Raises :class:`ScriptActive` for the active one,
    :class:`NoSuchScript`, :class:`BadName`."""
    check_name(name)
    with _locked(root) as d:
        if _active_name(d) == name:
            raise ScriptActive("the active script cannot be deleted")
        try:
            os.unlink(d / (name + SUFFIX))
        except FileNotFoundError:
            raise NoSuchScript(f"no script named {name!r}") from None
        fsync_dir(d)


def rename_script(root: Path | str, old: str, new: str) -> None:
    """Rename script ``old`` to ``new``, keeping it active if it was (RFC 5804 §2.11.1).

    Crash-safe: the new name is linked first, then the marker moves, then the old name goes (a
    crash leaves both names, never an active marker pointing at nothing). Raises
    :class:`NoSuchScript`, :class:`ScriptExists`, :class:`BadName`.
    """
    check_name(old)
    check_name(new)
    with _locked(root) as d:
        src, dst = d / (old + SUFFIX), d / (new + SUFFIX)
        if not src.is_file():
            raise NoSuchScript(f"no script named {old!r}")
        if old == new:
            return
        try:
            os.link(src, dst)
        except FileExistsError:
            raise ScriptExists(f"a script named {new!r} exists") from None
        fsync_dir(d)
        if _active_name(d) == old:
            _point(d, new)
        os.unlink(src)
        fsync_dir(d)
