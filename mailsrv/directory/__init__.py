"""The directory: domains, users, aliases, groups, departments, administrators (docs/directory-api.md).

Reached only through :class:`Directory` (async, workers) and
:class:`SyncDirectory` (CLI, admin operations); SQL never leaves this package.
"""

from __future__ import annotations

from pathlib import Path

from mailsrv.config import DirectoryConfig
from mailsrv.directory.aio import Directory
from mailsrv.directory.manage import SyncDirectory, account_dict
from mailsrv.directory.types import (
    Account,
    AdminScope,
    Conflict,
    Credentials,
    DirectoryError,
    FailureState,
    FolderRights,
    Grant,
    Kind,
    LoginStamp,
    Member,
    NotFound,
    PermissionDenied,
    Resolution,
    Token,
)

__all__ = [
    "Account", "AdminScope", "Conflict", "Credentials", "Directory", "DirectoryError", "FailureState",
    "FolderRights", "Grant", "Kind", "LoginStamp", "Member", "NotFound", "PermissionDenied", "Resolution", "SyncDirectory", "Token",
    "account_dict", "db_path", "open_directory", "open_sync",
]


def db_path(cfg: DirectoryConfig, data_dir: Path) -> Path:
    return cfg.path if cfg.path.is_absolute() else data_dir / cfg.path


def open_directory(cfg: DirectoryConfig, data_dir: Path) -> Directory:
    """The async directory of a worker (creates the database when missing)."""
    return Directory(db_path(cfg, data_dir), store_root=cfg.store_root,
                     recipient_delimiter=cfg.recipient_delimiter, threads=cfg.threads)


def open_sync(cfg: DirectoryConfig, data_dir: Path) -> SyncDirectory:
    """A blocking directory for one thread (CLI, tools, tests)."""
    return SyncDirectory(db_path(cfg, data_dir), store_root=cfg.store_root,
                         recipient_delimiter=cfg.recipient_delimiter)
