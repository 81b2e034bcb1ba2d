"""The embedded backend: one SQLite file in WAL mode, through aiosqlite.

Two connections are kept. The writer runs every change inside an explicit
``BEGIN IMMEDIATE`` transaction guarded by an asyncio lock: the lock keeps
coroutines of this process from interleaving statements on the shared
connection, and the immediate transaction keeps other processes using the same
file out while counters are read and bumped. The reader serves queries without
waiting for writes, which WAL allows. ``synchronous=FULL`` makes a commit
durable before it is acknowledged.

Times are stored as integer milliseconds since the epoch so that they sort and
compare in SQL; JSON columns hold lists and small documents.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from merganser.storage.base import (
    Address,
    ApplicationPassword,
    AuthLogEntry,
    DuplicateKeyError,
    JournalEntry,
    JournalEvent,
    Mailbox,
    MailboxCounters,
    PageQuery,
    Slice,
    Storage,
    User,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        unameview TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        address TEXT NOT NULL,
        language TEXT NOT NULL,
        quota INTEGER NOT NULL,
        retention INTEGER NOT NULL,
        recipients INTEGER NOT NULL,
        forwards INTEGER NOT NULL,
        forward TEXT,
        target_url TEXT,
        storage_used INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        activated INTEGER NOT NULL DEFAULT 1,
        twofa_enabled INTEGER NOT NULL DEFAULT 0,
        twofa_seed TEXT,
        twofa_pending_seed TEXT,
        twofa_last_step INTEGER NOT NULL DEFAULT 0,
        journal_seq INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    );
    CREATE TABLE addresses (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        address TEXT NOT NULL,
        addrview TEXT NOT NULL UNIQUE,
        created INTEGER NOT NULL
    );
    CREATE INDEX addresses_user ON addresses (user);
    CREATE TABLE asps (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        description TEXT NOT NULL,
        scopes TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE INDEX asps_user ON asps (user);
    CREATE TABLE authlog (
        id TEXT PRIMARY KEY,
        user TEXT,
        action TEXT NOT NULL,
        result TEXT NOT NULL,
        ip TEXT,
        protocol TEXT,
        scope TEXT,
        asp TEXT,
        username TEXT,
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE INDEX authlog_user ON authlog (user, id);
    CREATE INDEX authlog_expires ON authlog (expires);
    CREATE TABLE counters (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE INDEX counters_expires ON counters (expires);
    CREATE TABLE mailboxes (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        path TEXT NOT NULL,
        special_use TEXT,
        subscribed INTEGER NOT NULL,
        retention INTEGER NOT NULL,
        uid_validity INTEGER NOT NULL,
        uid_next INTEGER NOT NULL,
        modify_index INTEGER NOT NULL,
        created INTEGER NOT NULL,
        UNIQUE (user, path)
    );
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        uid INTEGER NOT NULL,
        thread TEXT NOT NULL,
        size INTEGER NOT NULL,
        idate INTEGER NOT NULL,
        flags TEXT NOT NULL,
        seen INTEGER NOT NULL,
        expires INTEGER,
        meta TEXT NOT NULL,
        UNIQUE (mailbox, uid)
    );
    CREATE INDEX messages_user ON messages (user, mailbox);
    CREATE TABLE journal (
        user TEXT NOT NULL,
        seq INTEGER NOT NULL,
        command TEXT NOT NULL,
        mailbox TEXT,
        message TEXT,
        uid INTEGER,
        modseq INTEGER,
        data TEXT NOT NULL,
        created INTEGER NOT NULL,
        PRIMARY KEY (user, seq)
    ) WITHOUT ROWID;
    """,
)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _dt(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _now_ms() -> int:
    return int(time.time() * 1000)


USER_COLUMNS = (
    "id, username, name, password_hash, address, language, quota, retention, recipients, forwards, "
    "forward, target_url, storage_used, disabled, activated, twofa_enabled, twofa_seed, "
    "twofa_pending_seed, twofa_last_step, created"
)
MAILBOX_COLUMNS = "id, user, path, special_use, subscribed, retention, uid_validity, uid_next, modify_index, created"
BOOLEAN_USER_FIELDS = frozenset({"disabled", "activated", "twofa_enabled"})
WRITABLE_USER_FIELDS = frozenset(USER_COLUMNS.replace(" ", "").split(",")) - {"id", "created"}
WRITABLE_MAILBOX_FIELDS = frozenset({"retention", "subscribed"})


def _user(row: aiosqlite.Row) -> User:
    values = dict(row)
    for name in BOOLEAN_USER_FIELDS:
        values[name] = bool(values[name])
    values["created"] = _dt(values["created"])
    return User(**values)


def _address(row: aiosqlite.Row) -> Address:
    return Address(row["id"], row["user"], row["address"], row["addrview"], _dt(row["created"]))


def _asp(row: aiosqlite.Row) -> ApplicationPassword:
    return ApplicationPassword(
        row["id"], row["user"], row["description"], json.loads(row["scopes"]), row["password_hash"], _dt(row["created"])
    )


def _authlog(row: aiosqlite.Row) -> AuthLogEntry:
    values = dict(row)
    values["created"] = _dt(values["created"])
    values["expires"] = _dt(values["expires"])
    return AuthLogEntry(**values)


def _mailbox(row: aiosqlite.Row) -> Mailbox:
    values = dict(row)
    values["subscribed"] = bool(values["subscribed"])
    values["created"] = _dt(values["created"])
    return Mailbox(**values)


def _journal(row: aiosqlite.Row) -> JournalEntry:
    return JournalEntry(
        id=row["seq"],
        user=row["user"],
        command=row["command"],
        created=_dt(row["created"]),
        mailbox=row["mailbox"],
        message=row["message"],
        uid=row["uid"],
        modseq=row["modseq"],
        data=json.loads(row["data"]),
    )


def _duplicate_key(error: aiosqlite.IntegrityError) -> DuplicateKeyError:
    """Name the unique key an IntegrityError reports, e.g. 'users.unameview'."""
    message = str(error)
    if "users.unameview" in message:
        return DuplicateKeyError("username")
    if "addresses.addrview" in message:
        return DuplicateKeyError("address")
    if "mailboxes.user, mailboxes.path" in message:
        return DuplicateKeyError("path")
    raise error


class SQLiteStorage(Storage):
    """Storage in a single SQLite database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._migrate(self._writer)
        self._reader = await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout = 10000")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        return db

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        """Bring the schema up to date, one numbered step at a time."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = (await db.execute_fetchall("PRAGMA user_version"))[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {number}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    @property
    def _read(self) -> aiosqlite.Connection:
        assert self._reader is not None, "storage is not open"
        return self._reader

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run the block as one atomic, durable write transaction."""
        assert self._writer is not None, "storage is not open"
        db = self._writer
        async with self._lock:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

    async def _one(self, sql: str, params: Sequence[Any]) -> aiosqlite.Row | None:
        rows = await self._read.execute_fetchall(sql, params)
        return next(iter(rows), None)

    async def _page(
        self, table: str, columns: str, where: str, params: Sequence[Any], page: PageQuery
    ) -> tuple[list[aiosqlite.Row], bool, int]:
        """Keyset paging by id shared by every paged listing."""
        ((total,),) = await self._read.execute_fetchall(f"SELECT COUNT(*) FROM {table} WHERE {where}", params)
        backward = page.before is not None
        key = page.before if backward else page.after
        ascending = page.descending == backward
        op, order = (">", "ASC") if ascending else ("<", "DESC")
        condition, values = where, list(params)
        if key is not None:
            condition += f" AND id {op} ?"
            values.append(key)
        rows = list(
            await self._read.execute_fetchall(
                f"SELECT {columns} FROM {table} WHERE {condition} ORDER BY id {order} LIMIT ?",
                [*values, page.limit + 1],
            )
        )
        more = len(rows) > page.limit
        rows = rows[: page.limit]
        if backward:
            rows.reverse()
        return rows, more, total

    # Users

    async def create_user(self, user: User, address: Address, mailboxes: list[Mailbox]) -> None:
        try:
            async with self._transaction() as db:
                await db.execute(
                    f"INSERT INTO users ({USER_COLUMNS}, unameview) VALUES ({', '.join('?' * 21)})",
                    [*self._user_values(user), user.username.lower()],
                )
                await self._insert_address(db, address)
                await db.executemany(
                    f"INSERT INTO mailboxes ({MAILBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [self._mailbox_values(mailbox) for mailbox in mailboxes],
                )
        except aiosqlite.IntegrityError as error:
            raise _duplicate_key(error) from None

    @staticmethod
    def _user_values(user: User) -> list[Any]:
        return [
            user.id,
            user.username,
            user.name,
            user.password_hash,
            user.address,
            user.language,
            user.quota,
            user.retention,
            user.recipients,
            user.forwards,
            user.forward,
            user.target_url,
            user.storage_used,
            int(user.disabled),
            int(user.activated),
            int(user.twofa_enabled),
            user.twofa_seed,
            user.twofa_pending_seed,
            user.twofa_last_step,
            _ms(user.created),
        ]

    async def get_user(self, user_id: str) -> User | None:
        row = await self._one(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", [user_id])
        return _user(row) if row else None

    async def find_user_by_username(self, username: str) -> User | None:
        row = await self._one(f"SELECT {USER_COLUMNS} FROM users WHERE unameview = ?", [username.lower()])
        return _user(row) if row else None

    async def list_users(self, query: str | None, page: PageQuery) -> Slice[User]:
        where, params = ("instr(unameview, ?) > 0", [query.lower()]) if query else ("1", [])
        rows, more, total = await self._page("users", USER_COLUMNS, where, params, page)
        return Slice([_user(row) for row in rows], more, total)

    async def update_user(self, user_id: str, changes: dict[str, Any]) -> bool:
        unknown = set(changes) - WRITABLE_USER_FIELDS
        if unknown:
            raise ValueError(f"not writable user fields: {sorted(unknown)}")
        values = {name: int(value) if name in BOOLEAN_USER_FIELDS else value for name, value in changes.items()}
        if "username" in values:
            values["unameview"] = values["username"].lower()
        assignments = ", ".join(f"{name} = ?" for name in values)
        try:
            async with self._transaction() as db:
                cursor = await db.execute(f"UPDATE users SET {assignments} WHERE id = ?", [*values.values(), user_id])
                return cursor.rowcount > 0
        except aiosqlite.IntegrityError as error:
            raise _duplicate_key(error) from None

    async def claim_twofa_step(self, user_id: str, step: int) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE users SET twofa_last_step = ? WHERE id = ? AND twofa_last_step < ?", [step, user_id, step]
            )
            return cursor.rowcount > 0

    async def recalculate_storage(self, user_id: str) -> int:
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                "UPDATE users SET storage_used = (SELECT COALESCE(SUM(size), 0) FROM messages WHERE user = ?) "
                "WHERE id = ? RETURNING storage_used",
                [user_id, user_id],
            )
        return next((row[0] for row in rows), 0)

    # Addresses

    @staticmethod
    async def _insert_address(db: aiosqlite.Connection, address: Address) -> None:
        await db.execute(
            "INSERT INTO addresses (id, user, address, addrview, created) VALUES (?, ?, ?, ?, ?)",
            [address.id, address.user, address.address, address.addrview, _ms(address.created)],
        )

    async def add_address(self, address: Address) -> None:
        try:
            async with self._transaction() as db:
                await self._insert_address(db, address)
        except aiosqlite.IntegrityError as error:
            raise _duplicate_key(error) from None

    async def get_address(self, address_id: str) -> Address | None:
        row = await self._one("SELECT * FROM addresses WHERE id = ?", [address_id])
        return _address(row) if row else None

    async def find_address(self, addrview: str) -> Address | None:
        row = await self._one("SELECT * FROM addresses WHERE addrview = ?", [addrview])
        return _address(row) if row else None

    async def list_user_addresses(self, user_id: str) -> list[Address]:
        rows = await self._read.execute_fetchall("SELECT * FROM addresses WHERE user = ? ORDER BY id", [user_id])
        return [_address(row) for row in rows]

    async def search_addresses(self, query: str | None, page: PageQuery) -> Slice[Address]:
        where, params = ("instr(addrview, ?) > 0", [query.lower()]) if query else ("1", [])
        rows, more, total = await self._page("addresses", "*", where, params, page)
        return Slice([_address(row) for row in rows], more, total)

    async def delete_address(self, user_id: str, address_id: str) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM addresses WHERE id = ? AND user = ?", [address_id, user_id])
            return cursor.rowcount > 0

    # Application-specific passwords

    async def add_asp(self, asp: ApplicationPassword) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO asps (id, user, description, scopes, password_hash, created) VALUES (?, ?, ?, ?, ?, ?)",
                [asp.id, asp.user, asp.description, json.dumps(asp.scopes), asp.password_hash, _ms(asp.created)],
            )

    async def list_asps(self, user_id: str) -> list[ApplicationPassword]:
        rows = await self._read.execute_fetchall("SELECT * FROM asps WHERE user = ? ORDER BY id", [user_id])
        return [_asp(row) for row in rows]

    async def delete_asp(self, user_id: str, asp_id: str) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM asps WHERE id = ? AND user = ?", [asp_id, user_id])
            return cursor.rowcount > 0

    # Authentication log

    async def add_authlog(self, entry: AuthLogEntry) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO authlog (id, user, action, result, ip, protocol, scope, asp, username, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    entry.id,
                    entry.user,
                    entry.action,
                    entry.result,
                    entry.ip,
                    entry.protocol,
                    entry.scope,
                    entry.asp,
                    entry.username,
                    _ms(entry.created),
                    _ms(entry.expires),
                ],
            )

    async def list_authlog(self, user_id: str, now: datetime, page: PageQuery) -> Slice[AuthLogEntry]:
        rows, more, total = await self._page("authlog", "*", "user = ? AND expires > ?", [user_id, _ms(now)], page)
        return Slice([_authlog(row) for row in rows], more, total)

    async def purge_authlog(self, now: datetime) -> int:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM authlog WHERE expires <= ?", [_ms(now)])
            return cursor.rowcount

    # Failure counters

    async def increment_counter(self, key: str, expires: datetime) -> int:
        async with self._transaction() as db:
            rows = await db.execute_fetchall(
                "INSERT INTO counters (key, value, expires) VALUES (:key, 1, :expires) "
                "ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN counters.expires <= :now THEN 1 ELSE counters.value + 1 END, "
                "expires = CASE WHEN counters.expires <= :now THEN excluded.expires ELSE counters.expires END "
                "RETURNING value",
                {"key": key, "expires": _ms(expires), "now": _now_ms()},
            )
        return rows[0][0]

    async def get_counter(self, key: str, now: datetime) -> int:
        row = await self._one("SELECT value FROM counters WHERE key = ? AND expires > ?", [key, _ms(now)])
        return row[0] if row else 0

    async def purge_counters(self, now: datetime) -> int:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM counters WHERE expires <= ?", [_ms(now)])
            return cursor.rowcount

    # Mailboxes

    @staticmethod
    def _mailbox_values(mailbox: Mailbox) -> list[Any]:
        return [
            mailbox.id,
            mailbox.user,
            mailbox.path,
            mailbox.special_use,
            int(mailbox.subscribed),
            mailbox.retention,
            mailbox.uid_validity,
            mailbox.uid_next,
            mailbox.modify_index,
            _ms(mailbox.created),
        ]

    async def list_mailboxes(self, user_id: str) -> list[Mailbox]:
        rows = await self._read.execute_fetchall(
            f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE user = ? ORDER BY path", [user_id]
        )
        return [_mailbox(row) for row in rows]

    async def get_mailbox(self, user_id: str, mailbox_id: str) -> Mailbox | None:
        row = await self._one(
            f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ? AND user = ?", [mailbox_id, user_id]
        )
        return _mailbox(row) if row else None

    @staticmethod
    async def _append_journal(db: aiosqlite.Connection, user_id: str, events: Iterable[JournalEvent]) -> None:
        """Append events with ids from the user's counter, inside the caller's transaction."""
        now = _now_ms()
        for event in events:
            rows = await db.execute_fetchall(
                "UPDATE users SET journal_seq = journal_seq + 1 WHERE id = ? RETURNING journal_seq", [user_id]
            )
            await db.execute(
                "INSERT INTO journal (user, seq, command, mailbox, message, uid, modseq, data, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    user_id,
                    rows[0][0],
                    event.command,
                    event.mailbox,
                    event.message,
                    event.uid,
                    event.modseq,
                    json.dumps(event.data),
                    now,
                ],
            )

    async def create_mailbox(self, mailbox: Mailbox, event: JournalEvent) -> None:
        try:
            async with self._transaction() as db:
                await db.execute(
                    f"INSERT INTO mailboxes ({MAILBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    self._mailbox_values(mailbox),
                )
                await self._append_journal(db, mailbox.user, [event])
        except aiosqlite.IntegrityError as error:
            raise _duplicate_key(error) from None

    async def rename_mailboxes(self, user_id: str, renames: list[tuple[str, str]], events: list[JournalEvent]) -> None:
        try:
            async with self._transaction() as db:
                # Park every renamed mailbox on a path no client can create first, so
                # that swapping names within one call cannot trip the unique index.
                await db.executemany(
                    "UPDATE mailboxes SET path = char(0) || id WHERE id = ? AND user = ?",
                    [(mailbox_id, user_id) for mailbox_id, _ in renames],
                )
                await db.executemany(
                    "UPDATE mailboxes SET path = ? WHERE id = ? AND user = ?",
                    [(path, mailbox_id, user_id) for mailbox_id, path in renames],
                )
                await self._append_journal(db, user_id, events)
        except aiosqlite.IntegrityError as error:
            raise _duplicate_key(error) from None

    async def update_mailbox(self, user_id: str, mailbox_id: str, changes: dict[str, Any]) -> bool:
        unknown = set(changes) - WRITABLE_MAILBOX_FIELDS
        if unknown:
            raise ValueError(f"not writable mailbox fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values = [int(value) if isinstance(value, bool) else value for value in changes.values()]
        async with self._transaction() as db:
            cursor = await db.execute(
                f"UPDATE mailboxes SET {assignments} WHERE id = ? AND user = ?", [*values, mailbox_id, user_id]
            )
            return cursor.rowcount > 0

    async def delete_mailbox(self, user_id: str, mailbox_id: str, event: JournalEvent) -> int:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM mailboxes WHERE id = ? AND user = ?", [mailbox_id, user_id])
            if cursor.rowcount == 0:
                return -1
            rows = await db.execute_fetchall(
                "DELETE FROM messages WHERE mailbox = ? AND user = ? RETURNING size", [mailbox_id, user_id]
            )
            freed = sum(row[0] for row in rows)
            if freed:
                await db.execute("UPDATE users SET storage_used = storage_used - ? WHERE id = ?", [freed, user_id])
            await self._append_journal(db, user_id, [event])
        return freed

    async def mailbox_counters(self, user_id: str, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        counters = {mailbox_id: MailboxCounters() for mailbox_id in mailbox_ids}
        if not mailbox_ids:
            return counters
        rows = await self._read.execute_fetchall(
            "SELECT mailbox, COUNT(*), COUNT(*) - SUM(seen) FROM messages "
            f"WHERE user = ? AND mailbox IN ({', '.join('?' * len(mailbox_ids))}) GROUP BY mailbox",
            [user_id, *mailbox_ids],
        )
        for mailbox_id, total, unseen in rows:
            counters[mailbox_id] = MailboxCounters(total, unseen)
        return counters

    # Journal

    async def read_journal(self, user_id: str, after: int, limit: int) -> list[JournalEntry]:
        rows = await self._read.execute_fetchall(
            "SELECT * FROM journal WHERE user = ? AND seq > ? ORDER BY seq LIMIT ?", [user_id, after, limit]
        )
        return [_journal(row) for row in rows]
