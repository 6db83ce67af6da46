"""SQLite schema of the directory, and its version (bump and migrate, never edit in place)."""

from __future__ import annotations

VERSION = 4  # 2: policy_lists (issue 12; additive, created by re-running the DDL)
#             3: grants and credential_generations (issue 8; additive)
#             4: folder_rights, folder_rights_anyone (per-folder RFC 4314 ACLs; additive: account
#                grants stay as they are)

# One namespace for every address that receives mail: users, aliases, groups
# and department addresses. A lookup at RCPT time is one primary-key probe.
DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS domains (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    max_users INTEGER,
    max_storage INTEGER,
    networks TEXT NOT NULL DEFAULT '',
    catchall INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS domain_aliases (
    name TEXT PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    address TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('group', 'dept')),
    parent_id INTEGER REFERENCES groups(id) ON DELETE RESTRICT,
    path TEXT NOT NULL DEFAULT '',
    post_policy TEXT NOT NULL DEFAULT 'anyone'
        CHECK (post_policy IN ('anyone', 'members', 'listed', 'domain'))
);
CREATE INDEX IF NOT EXISTS groups_parent ON groups(parent_id);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE RESTRICT,
    address TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    dept_id INTEGER REFERENCES groups(id) ON DELETE SET NULL,
    title TEXT NOT NULL DEFAULT '',
    phone TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'suspended')),
    quota_bytes INTEGER,
    quota_messages INTEGER,
    may_send_outside INTEGER NOT NULL DEFAULT 1,
    networks TEXT NOT NULL DEFAULT '',
    store TEXT NOT NULL,
    backend TEXT NOT NULL DEFAULT 'local',
    password_hash TEXT NOT NULL DEFAULT '',
    scram TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS users_dept ON users(dept_id);
CREATE INDEX IF NOT EXISTS users_domain ON users(domain_id);
CREATE TABLE IF NOT EXISTS aliases (
    address TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS aliases_user ON aliases(user_id);
CREATE TABLE IF NOT EXISTS group_members (
    group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    member_group_id INTEGER REFERENCES groups(id) ON DELETE CASCADE,
    external TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS gm_user ON group_members(group_id, user_id) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS gm_group ON group_members(group_id, member_group_id) WHERE member_group_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS gm_ext ON group_members(group_id, external) WHERE external IS NOT NULL;
CREATE INDEX IF NOT EXISTS gm_user_rev ON group_members(user_id);
CREATE TABLE IF NOT EXISTS group_senders (
    group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    PRIMARY KEY (group_id, address)
);
CREATE TABLE IF NOT EXISTS group_send_as (
    group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE TABLE IF NOT EXISTS admins (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    scope TEXT NOT NULL CHECK (scope IN ('super', 'domain', 'dept')),
    domain_id INTEGER REFERENCES domains(id) ON DELETE CASCADE,
    dept_id INTEGER REFERENCES groups(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    scopes TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    expires REAL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS policy_lists (
    scope TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('block', 'allow')),
    entry TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (scope, kind, entry)
);
-- shared access (JMAP shared accounts): the grantee may read (or read and write) the owner's mail
CREATE TABLE IF NOT EXISTS grants (
    owner_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    grantee_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    rights TEXT NOT NULL CHECK (rights IN ('read', 'write')),
    created REAL NOT NULL,
    PRIMARY KEY (owner_id, grantee_id),
    CHECK (owner_id != grantee_id)
);
CREATE INDEX IF NOT EXISTS grants_grantee ON grants(grantee_id);
-- per-folder ACL (RFC 4314): the grantee's rights on one of the owner's folders, by name (moved by a
-- RENAME, dropped by a DELETE). A row overrides the account grant above for that folder: '' = none there.
CREATE TABLE IF NOT EXISTS folder_rights (
    owner_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    mailbox TEXT NOT NULL,
    grantee_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    rights TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (owner_id, mailbox, grantee_id),
    CHECK (owner_id != grantee_id)
);
CREATE INDEX IF NOT EXISTS folder_rights_grantee ON folder_rights(grantee_id);
-- RFC 4314 "anyone" / "authenticated" on a folder: every user of the owner's domain ([imap] acl_anyone);
-- a user's own entry or account grant overrides it
CREATE TABLE IF NOT EXISTS folder_rights_anyone (
    owner_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    mailbox TEXT NOT NULL,
    identifier TEXT NOT NULL CHECK (identifier IN ('anyone', 'authenticated')),
    rights TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (owner_id, mailbox, identifier)
);
-- bumped at every change of a user's login data (password, state, networks): cached logins compare it
CREATE TABLE IF NOT EXISTS credential_generations (
    user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_failures (
    key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    window_start REAL NOT NULL,
    locked_until REAL NOT NULL DEFAULT 0,
    level INTEGER NOT NULL DEFAULT 0
);
"""
