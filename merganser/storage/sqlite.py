"""The embedded backend: one SQLite file in WAL mode.

Every change goes through one writer thread, which owns the only connection
that writes and commits in groups: changes queued while a commit is under way
are applied together in the next ``BEGIN IMMEDIATE`` transaction, each inside
its own savepoint so that one failing change does not undo the others. A whole
group is one call into that thread, not a round trip per statement, so the
event loop only queues work and reads answers. A commit with
``synchronous=FULL`` is durable before any change in it is acknowledged, and
grouping spreads the cost of that disk flush over many concurrent writers
(deliveries over several LMTP connections, say). The immediate transaction
also keeps other processes using the same file out while counters are read and
bumped, so allocation stays atomic across processes. A reader connection
(through aiosqlite) serves queries without waiting for writes, which WAL
allows.

Lookups by key (a user by id, an address, a mailbox) run on the event loop
itself, through a third, read-only connection: under WAL they never wait for a
writer and take a few microseconds, an order of magnitude less than handing
them to another thread and back. Should SQLite ever answer such a lookup
with "busy" (during recovery, say), it is retried through the reader instead
of blocking the loop. Anything that may read much (listings, search, message
sources) goes through the reader.

Times are stored as integer milliseconds since the epoch so that they sort and
compare in SQL; JSON columns hold lists and small documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

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
    Message,
    OverQuotaError,
    PageQuery,
    SearchQuery,
    SearchText,
    Slice,
    Storage,
    User,
)

T = TypeVar("T")
# A change, run in the writer thread inside the group's transaction.
Work = Callable[[sqlite3.Connection], T]
# What a group hands back to the event loop: each change's result or error, and
# the users whose journals grew.
GroupOutcome = tuple[list[tuple[Any, Exception | None]], list[str]]
SEARCH_INSERT = "INSERT INTO message_search (rowid, subject, contacts, body) VALUES (?, ?, ?, ?)"

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
        total INTEGER NOT NULL DEFAULT 0,
        unseen INTEGER NOT NULL DEFAULT 0,
        UNIQUE (user, path)
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        user TEXT NOT NULL,
        mailbox TEXT NOT NULL,
        uid INTEGER NOT NULL,
        modseq INTEGER NOT NULL,
        thread TEXT NOT NULL,
        msgid TEXT,
        subject_key TEXT NOT NULL,
        size INTEGER NOT NULL,
        idate INTEGER NOT NULL,
        flags TEXT NOT NULL,
        seen INTEGER NOT NULL,
        expires INTEGER,
        summary TEXT NOT NULL,
        UNIQUE (mailbox, uid)
    );
    CREATE INDEX messages_user ON messages (user, id);
    CREATE INDEX messages_msgid ON messages (user, msgid) WHERE msgid IS NOT NULL;
    CREATE INDEX messages_subject ON messages (user, subject_key, idate);
    CREATE INDEX messages_expires ON messages (expires) WHERE expires IS NOT NULL;
    CREATE TABLE message_sources (
        seq INTEGER PRIMARY KEY,
        raw BLOB NOT NULL
    );
    CREATE VIRTUAL TABLE message_search USING fts5 (
        subject, contacts, body, tokenize = 'unicode61 remove_diacritics 2'
    );
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
    # A thread's messages in id order (thread_messages), without reading the user's other messages.
    """
    CREATE INDEX messages_thread ON messages (user, thread, id);
    """,
)


# Every connection that writes or reads through a thread: WAL, durable commits, and
# waiting for other processes' locks rather than failing at once.
PRAGMAS = ("PRAGMA busy_timeout = 10000", "PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL")


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
MAILBOX_INSERT = f"INSERT INTO mailboxes ({MAILBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
BOOLEAN_USER_FIELDS = frozenset({"disabled", "activated", "twofa_enabled"})
USER_FIELDS = tuple(USER_COLUMNS.replace(" ", "").split(","))
WRITABLE_USER_FIELDS = frozenset(USER_FIELDS) - {"id", "created"}
WRITABLE_MAILBOX_FIELDS = frozenset({"retention", "subscribed"})


def _user(row: sqlite3.Row) -> User:
    # Positional: looking columns up by name in a Row is measurably slower,
    # and this runs on every authenticated request.
    values = dict(zip(USER_FIELDS, row, strict=True))
    for name in BOOLEAN_USER_FIELDS:
        values[name] = bool(values[name])
    values["created"] = _dt(values["created"])
    return User(**values)


def _address(row: sqlite3.Row) -> Address:
    return Address(row["id"], row["user"], row["address"], row["addrview"], _dt(row["created"]))


def _asp(row: sqlite3.Row) -> ApplicationPassword:
    return ApplicationPassword(
        row["id"], row["user"], row["description"], json.loads(row["scopes"]), row["password_hash"], _dt(row["created"])
    )


def _authlog(row: sqlite3.Row) -> AuthLogEntry:
    values = dict(row)
    values["created"] = _dt(values["created"])
    values["expires"] = _dt(values["expires"])
    return AuthLogEntry(**values)


def _mailbox(row: sqlite3.Row) -> Mailbox:
    values = dict(row)
    values["subscribed"] = bool(values["subscribed"])
    values["created"] = _dt(values["created"])
    return Mailbox(**values)


MESSAGE_COLUMNS = "id, user, mailbox, uid, modseq, thread, size, idate, flags, summary, msgid, subject_key, expires"
MESSAGE_FIELDS = tuple(MESSAGE_COLUMNS.replace(" ", "").split(","))


def _message(row: sqlite3.Row) -> Message:
    values = {name: row[name] for name in MESSAGE_FIELDS}
    values["idate"] = _dt(values["idate"])
    values["flags"] = json.loads(values["flags"])
    values["summary"] = json.loads(values["summary"])
    values["expires"] = _dt(values["expires"]) if values["expires"] is not None else None
    return Message(**values)


def _fetchall(db: sqlite3.Connection, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[sqlite3.Row]:
    return db.execute(sql, params).fetchall()


def _fts_query(terms: list[str]) -> str:
    """An FTS5 query matching every term as a phrase (terms are word tokens)."""
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _journal(row: sqlite3.Row) -> JournalEntry:
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


def _duplicate_key(error: sqlite3.IntegrityError) -> DuplicateKeyError:
    """Name the unique key an IntegrityError reports, e.g. 'users.unameview'."""
    message = str(error)
    if "users.unameview" in message:
        return DuplicateKeyError("username")
    if "addresses.addrview" in message:
        return DuplicateKeyError("address")
    if "mailboxes.user, mailboxes.path" in message:
        return DuplicateKeyError("path")
    raise error


class _MailboxGone(Exception):
    """Raised inside a write to undo it when its mailbox was deleted meanwhile."""


class SQLiteStorage(Storage):
    """Storage in a single SQLite database file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        # One thread, so the writing connection is only ever used from it.
        self._writer: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lookups: sqlite3.Connection | None = None
        self._pending: list[tuple[Work[Any], bool, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Users whose journals the group under way appended to (writer thread only).
        self._journaled: set[str] = set()
        # Search index rows of the group under way, not written yet (writer thread only).
        self._search_rows: list[tuple[int, str, str, str]] = []

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merganser-sqlite-writer")
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._writer, self._open_writer)
            self._reader = await self._connect()
        except BaseException:
            await self._close_writer()
            raise
        # timeout=0: report "busy" at once rather than block the event loop.
        self._lookups = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        self._lookups.row_factory = sqlite3.Row
        self._lookups.execute("PRAGMA query_only = ON")

    def _open_writer(self) -> sqlite3.Connection:
        """Connect and migrate, in the writer thread that will use the connection from now on."""
        db = sqlite3.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            for pragma in PRAGMAS:
                db.execute(pragma)
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        for pragma in PRAGMAS:
            await db.execute(pragma)
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring the schema up to date, one numbered step at a time."""
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        if self._lookups is not None:
            self._lookups.close()
        if self._reader is not None:
            await self._reader.close()
        await self._close_writer()
        self._reader = self._lookups = None

    async def _close_writer(self) -> None:
        """Close the writing connection in its thread, then end the thread (after any group still running)."""
        if self._writer is None:
            return
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._db.close)
        self._writer.shutdown()
        self._writer = self._db = None

    @property
    def _read(self) -> aiosqlite.Connection:
        assert self._reader is not None, "storage is not open"
        return self._reader

    # Group commit

    async def _write(self, work: Work[T], *, defers_search: bool = False) -> T:
        """Run ``work`` in the next group transaction; return once it is durable.

        A work that ``defers_search`` leaves its search index rows in
        ``_search_rows`` for the group to write (see ``_run_group``).
        """
        assert self._writer is not None, "storage is not open"
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((work, defers_search, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Commit queued work in groups until the queue is empty."""
        while self._pending:
            batch = [entry for entry in self._pending if not entry[2].cancelled()]
            self._pending = []
            if batch:
                await self._commit_group(batch)

    async def _commit_group(self, batch: list[tuple[Work[Any], bool, asyncio.Future[Any]]]) -> None:
        """Apply a group in one call to the writer thread; every waiting writer gets an answer.

        The answers come from the group's own completion, not from this task:
        if the flusher is cancelled while the thread works, the group still
        finishes (it cannot be interrupted half-way) and its writers still
        learn what became of their changes.
        """
        assert self._writer is not None
        futures = [future for _, _, future in batch]
        works = [(work, defers_search) for work, defers_search, _ in batch]
        group = asyncio.wrap_future(self._writer.submit(self._run_group, works))
        group.add_done_callback(partial(self._answer, futures))
        # A failed group is reported to its writers by _answer; the flusher goes on with the next one.
        with contextlib.suppress(Exception):
            await asyncio.shield(group)

    def _run_group(self, works: list[tuple[Work[Any], bool]]) -> GroupOutcome:
        """In the writer thread: apply every change in one transaction and commit it.

        FTS5 writes what it has indexed so far to disk at every savepoint,
        which would cost as much again as storing a message; so new messages'
        search rows are written together once their savepoints are over,
        just before the commit. Any other change may read or delete index
        rows, so the rows deferred so far are written before it starts.

        If the group cannot commit, it is rolled back and the error fails
        every change in it.
        """
        assert self._db is not None
        db = self._db
        self._journaled.clear()
        self._search_rows.clear()
        results: list[tuple[Any, Exception | None]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for work, defers_search in works:
                if not defers_search:
                    self._write_search_rows(db)
                results.append(self._apply(db, work, savepoint=len(works) > 1))
            self._write_search_rows(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # A piece rolled back to its savepoint may have named a user too; a
        # listener told of a change that is not there just finds nothing new.
        return results, list(self._journaled)

    def _write_search_rows(self, db: sqlite3.Connection) -> None:
        if self._search_rows:
            db.executemany(SEARCH_INSERT, self._search_rows)
            self._search_rows.clear()

    def _apply(self, db: sqlite3.Connection, work: Work[Any], savepoint: bool) -> tuple[Any, Exception | None]:
        """Run one piece of work; in a group, undo just that piece (and drop its search rows) if it fails."""
        if not savepoint:
            return work(db), None
        deferred = len(self._search_rows)
        db.execute("SAVEPOINT work")
        try:
            result = work(db)
        except Exception as error:
            db.execute("ROLLBACK TO work")
            db.execute("RELEASE work")
            del self._search_rows[deferred:]
            return None, error
        db.execute("RELEASE work")
        return result, None

    def _answer(self, futures: list[asyncio.Future[Any]], group: asyncio.Future[GroupOutcome]) -> None:
        """On the event loop, once a group is over: tell journal listeners of a commit, then each writer."""
        if group.cancelled():
            outcomes: list[tuple[Any, BaseException | None]] = [(None, RuntimeError("storage is shutting down"))]
            outcomes *= len(futures)
        elif (error := group.exception()) is not None:
            outcomes = [(None, error)] * len(futures)
        else:
            results, journaled = group.result()
            for user_id in journaled:
                self._journal_grew(user_id)
            outcomes = list(results)
        for future, (result, failure) in zip(futures, outcomes, strict=True):
            if future.done():
                continue
            if failure is None:
                future.set_result(result)
            else:
                future.set_exception(failure)

    async def _write_unique(self, work: Work[T]) -> T:
        """Like _write, reporting a clash on a unique key as DuplicateKeyError."""
        try:
            return await self._write(work)
        except sqlite3.IntegrityError as error:
            raise _duplicate_key(error) from None

    async def _execute(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> int:
        """A single-statement write; returns the number of rows it changed."""
        return await self._write(lambda db: db.execute(sql, params).rowcount)

    # Reading helpers

    async def _few(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        """Rows found by key, read on the event loop (see the module docstring).

        Only for reads bounded by one user's small sets: a user's mailboxes,
        addresses or application passwords, or a single record.
        """
        assert self._lookups is not None, "storage is not open"
        try:
            return self._lookups.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return list(await self._read.execute_fetchall(sql, params))

    async def _one(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        return next(iter(await self._few(sql, params)), None)

    async def _page(
        self,
        sql: str,
        params: Sequence[Any],
        page: PageQuery,
        key: str = "id",
        total: int | None = None,
        count_sql: str | None = None,
    ) -> tuple[list[sqlite3.Row], bool, int]:
        """Keyset paging shared by every paged listing.

        ``sql`` is a SELECT ending in its WHERE clause; the key condition,
        order and limit are appended here. ``total`` is counted with
        ``count_sql`` unless the caller already knows it.
        """
        if total is None:
            ((total,),) = await self._read.execute_fetchall(count_sql or "", params)
        clause, values, _ = _keyset(key, page)
        rows, more = _trim(list(await self._read.execute_fetchall(f"{sql}{clause}", [*params, *values])), page)
        return rows, more, total

    async def _listing(
        self, table: str, columns: str, where: str, params: Sequence[Any], page: PageQuery
    ) -> tuple[list[sqlite3.Row], bool, int]:
        return await self._page(
            f"SELECT {columns} FROM {table} WHERE {where}",
            params,
            page,
            count_sql=f"SELECT COUNT(*) FROM {table} WHERE {where}",
        )

    # Users

    async def create_user(self, user: User, address: Address, mailboxes: list[Mailbox]) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO users ({USER_COLUMNS}, unameview) VALUES ({', '.join('?' * 21)})",
                [*self._user_values(user), user.username.lower()],
            )
            self._insert_address(db, address)
            db.executemany(MAILBOX_INSERT, [self._mailbox_values(mailbox) for mailbox in mailboxes])

        await self._write_unique(work)

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
        rows, more, total = await self._listing("users", USER_COLUMNS, where, params, page)
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
            changed = await self._execute(f"UPDATE users SET {assignments} WHERE id = ?", [*values.values(), user_id])
        except sqlite3.IntegrityError as error:
            raise _duplicate_key(error) from None
        return changed > 0

    async def claim_twofa_step(self, user_id: str, step: int) -> bool:
        changed = await self._execute(
            "UPDATE users SET twofa_last_step = ? WHERE id = ? AND twofa_last_step < ?", [step, user_id, step]
        )
        return changed > 0

    async def recalculate_storage(self, user_id: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            rows = _fetchall(
                db,
                "UPDATE users SET storage_used = (SELECT COALESCE(SUM(size), 0) FROM messages WHERE user = ?) "
                "WHERE id = ? RETURNING storage_used",
                [user_id, user_id],
            )
            return next((row[0] for row in rows), 0)

        return await self._write(work)

    # Addresses

    @staticmethod
    def _insert_address(db: sqlite3.Connection, address: Address) -> None:
        db.execute(
            "INSERT INTO addresses (id, user, address, addrview, created) VALUES (?, ?, ?, ?, ?)",
            [address.id, address.user, address.address, address.addrview, _ms(address.created)],
        )

    async def add_address(self, address: Address) -> None:
        await self._write_unique(lambda db: self._insert_address(db, address))

    async def get_address(self, address_id: str) -> Address | None:
        row = await self._one("SELECT * FROM addresses WHERE id = ?", [address_id])
        return _address(row) if row else None

    async def find_address(self, addrview: str) -> Address | None:
        row = await self._one("SELECT * FROM addresses WHERE addrview = ?", [addrview])
        return _address(row) if row else None

    async def list_user_addresses(self, user_id: str) -> list[Address]:
        rows = await self._few("SELECT * FROM addresses WHERE user = ? ORDER BY id", [user_id])
        return [_address(row) for row in rows]

    async def search_addresses(self, query: str | None, page: PageQuery) -> Slice[Address]:
        where, params = ("instr(addrview, ?) > 0", [query.lower()]) if query else ("1", [])
        rows, more, total = await self._listing("addresses", "*", where, params, page)
        return Slice([_address(row) for row in rows], more, total)

    async def delete_address(self, user_id: str, address_id: str) -> bool:
        return await self._execute("DELETE FROM addresses WHERE id = ? AND user = ?", [address_id, user_id]) > 0

    # Application-specific passwords

    async def add_asp(self, asp: ApplicationPassword) -> None:
        await self._execute(
            "INSERT INTO asps (id, user, description, scopes, password_hash, created) VALUES (?, ?, ?, ?, ?, ?)",
            [asp.id, asp.user, asp.description, json.dumps(asp.scopes), asp.password_hash, _ms(asp.created)],
        )

    async def list_asps(self, user_id: str) -> list[ApplicationPassword]:
        rows = await self._few("SELECT * FROM asps WHERE user = ? ORDER BY id", [user_id])
        return [_asp(row) for row in rows]

    async def delete_asp(self, user_id: str, asp_id: str) -> bool:
        return await self._execute("DELETE FROM asps WHERE id = ? AND user = ?", [asp_id, user_id]) > 0

    # Authentication log

    async def add_authlog(self, entry: AuthLogEntry) -> None:
        await self._execute(
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
        rows, more, total = await self._listing("authlog", "*", "user = ? AND expires > ?", [user_id, _ms(now)], page)
        return Slice([_authlog(row) for row in rows], more, total)

    async def purge_authlog(self, now: datetime) -> int:
        return await self._execute("DELETE FROM authlog WHERE expires <= ?", [_ms(now)])

    # Failure counters

    async def increment_counter(self, key: str, expires: datetime) -> int:
        def work(db: sqlite3.Connection) -> int:
            rows = _fetchall(
                db,
                "INSERT INTO counters (key, value, expires) VALUES (:key, 1, :expires) "
                "ON CONFLICT (key) DO UPDATE SET "
                "value = CASE WHEN counters.expires <= :now THEN 1 ELSE counters.value + 1 END, "
                "expires = CASE WHEN counters.expires <= :now THEN excluded.expires ELSE counters.expires END "
                "RETURNING value",
                {"key": key, "expires": _ms(expires), "now": _now_ms()},
            )
            return rows[0][0]

        return await self._write(work)

    async def get_counter(self, key: str, now: datetime) -> int:
        row = await self._one("SELECT value FROM counters WHERE key = ? AND expires > ?", [key, _ms(now)])
        return row[0] if row else 0

    async def purge_counters(self, now: datetime) -> int:
        return await self._execute("DELETE FROM counters WHERE expires <= ?", [_ms(now)])

    # Journal

    @staticmethod
    def _journal_ids(db: sqlite3.Connection, user_id: str, count: int) -> list[int]:
        """Allocate ``count`` consecutive journal ids of a user."""
        rows = _fetchall(
            db, "UPDATE users SET journal_seq = journal_seq + ? WHERE id = ? RETURNING journal_seq", [count, user_id]
        )
        last = rows[0][0]
        return list(range(last - count + 1, last + 1))

    def _journal(self, db: sqlite3.Connection, user_id: str, events: list[JournalEvent]) -> list[int]:
        """Append events inside the caller's transaction; return their ids."""
        if not events:
            return []
        ids = self._journal_ids(db, user_id, len(events))
        self._append_journal(db, user_id, ids, events)
        return ids

    def _append_journal(self, db: sqlite3.Connection, user_id: str, ids: list[int], events: list[JournalEvent]) -> None:
        """Write events under ids already allocated in the caller's transaction.

        The user's listeners are told once the group transaction commits.
        """
        self._journaled.add(user_id)
        now = _now_ms()
        db.executemany(
            "INSERT INTO journal (user, seq, command, mailbox, message, uid, modseq, data, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    user_id,
                    seq,
                    event.command,
                    event.mailbox,
                    event.message,
                    event.uid,
                    seq if event.message else None,
                    json.dumps(event.data),
                    now,
                )
                for seq, event in zip(ids, events, strict=True)
            ],
        )

    async def read_journal(self, user_id: str, after: int, limit: int) -> list[JournalEntry]:
        rows = await self._read.execute_fetchall(
            "SELECT * FROM journal WHERE user = ? AND seq > ? ORDER BY seq LIMIT ?", [user_id, after, limit]
        )
        return [_journal(row) for row in rows]

    async def last_journal_id(self, user_id: str) -> int:
        row = await self._one("SELECT journal_seq FROM users WHERE id = ?", [user_id])
        return row[0] if row else 0

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
        rows = await self._few(f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE user = ? ORDER BY path", [user_id])
        return [_mailbox(row) for row in rows]

    async def get_mailbox(self, user_id: str, mailbox_id: str) -> Mailbox | None:
        row = await self._one(
            f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ? AND user = ?", [mailbox_id, user_id]
        )
        return _mailbox(row) if row else None

    async def create_mailbox(self, mailbox: Mailbox, event: JournalEvent) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(MAILBOX_INSERT, self._mailbox_values(mailbox))
            self._journal(db, mailbox.user, [event])

        await self._write_unique(work)

    async def rename_mailboxes(self, user_id: str, renames: list[tuple[str, str]], events: list[JournalEvent]) -> None:
        def work(db: sqlite3.Connection) -> None:
            # Park every renamed mailbox on a path no client can create first, so
            # that swapping names within one call cannot trip the unique index.
            db.executemany(
                "UPDATE mailboxes SET path = char(0) || id WHERE id = ? AND user = ?",
                [(mailbox_id, user_id) for mailbox_id, _ in renames],
            )
            db.executemany(
                "UPDATE mailboxes SET path = ? WHERE id = ? AND user = ?",
                [(path, mailbox_id, user_id) for mailbox_id, path in renames],
            )
            self._journal(db, user_id, events)

        await self._write_unique(work)

    async def update_mailbox(self, user_id: str, mailbox_id: str, changes: dict[str, Any]) -> bool:
        unknown = set(changes) - WRITABLE_MAILBOX_FIELDS
        if unknown:
            raise ValueError(f"not writable mailbox fields: {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in changes)
        values = [int(value) if isinstance(value, bool) else value for value in changes.values()]
        changed = await self._execute(
            f"UPDATE mailboxes SET {assignments} WHERE id = ? AND user = ?", [*values, mailbox_id, user_id]
        )
        return changed > 0

    async def delete_mailbox(self, user_id: str, mailbox_id: str, event: JournalEvent) -> int:
        def work(db: sqlite3.Connection) -> int:
            cursor = db.execute("DELETE FROM mailboxes WHERE id = ? AND user = ?", [mailbox_id, user_id])
            if cursor.rowcount == 0:
                return -1
            rows = _fetchall(
                db, "DELETE FROM messages WHERE mailbox = ? AND user = ? RETURNING seq, size", [mailbox_id, user_id]
            )
            freed = self._forget(db, user_id, rows)
            self._journal(db, user_id, [event])
            return freed

        return await self._write(work)

    async def mailbox_counters(self, user_id: str, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        return await self._counters("user = ?", [user_id], mailbox_ids)

    async def _counters(self, where: str, params: list[Any], mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        """The counts each mailbox row keeps, of the mailboxes that also match ``where``; others count zero."""
        counters = {mailbox_id: MailboxCounters() for mailbox_id in mailbox_ids}
        for chunk in _chunks(mailbox_ids):
            rows = await self._read.execute_fetchall(
                f"SELECT id, total, unseen FROM mailboxes WHERE {where} AND id IN ({_marks(chunk)})", [*params, *chunk]
            )
            for mailbox_id, total, unseen in rows:
                counters[mailbox_id] = MailboxCounters(total, unseen)
        return counters

    # Messages

    @staticmethod
    def _take_uid(db: sqlite3.Connection, user_id: str, mailbox_id: str, seen: bool) -> int:
        """Allocate the next UID of a mailbox and count the message in it."""
        rows = _fetchall(
            db,
            "UPDATE mailboxes SET uid_next = uid_next + 1, total = total + 1, unseen = unseen + ? "
            "WHERE id = ? AND user = ? RETURNING uid_next - 1",
            [int(not seen), mailbox_id, user_id],
        )
        if not rows:
            raise _MailboxGone
        return rows[0][0]

    @staticmethod
    def _forget(db: sqlite3.Connection, user_id: str, rows: Sequence[sqlite3.Row]) -> int:
        """Drop the sources and search entries of deleted messages and free their bytes."""
        seqs = [(row["seq"],) for row in rows]
        db.executemany("DELETE FROM message_sources WHERE seq = ?", seqs)
        db.executemany("DELETE FROM message_search WHERE rowid = ?", seqs)
        freed = sum(row["size"] for row in rows)
        if freed:
            db.execute("UPDATE users SET storage_used = storage_used - ? WHERE id = ?", [freed, user_id])
        return freed

    async def add_message(self, message: Message, raw: bytes, search: SearchText, quota: int | None) -> Message | None:
        # Five statements and a search row for the group to write: charging
        # the quota also allocates the journal id (which is the message's
        # modseq), and taking the UID also moves the mailbox's modify index.
        charge = "UPDATE users SET storage_used = storage_used + :size, journal_seq = journal_seq + 1 WHERE id = :user"
        if quota is not None:
            charge += " AND storage_used + :size <= :quota"
        charge += " RETURNING journal_seq"

        def work(db: sqlite3.Connection) -> Message:
            charged = db.execute(charge, {"size": message.size, "user": message.user, "quota": quota}).fetchone()
            if charged is None:
                raise OverQuotaError
            modseq = charged[0]
            taken = db.execute(
                "UPDATE mailboxes SET uid_next = uid_next + 1, total = total + 1, unseen = unseen + ?, "
                "modify_index = ? WHERE id = ? AND user = ? RETURNING uid_next - 1",
                [int(not message.seen), modseq, message.mailbox, message.user],
            ).fetchone()
            if taken is None:
                raise _MailboxGone
            stored = dataclasses.replace(message, uid=taken[0], modseq=modseq)
            event = JournalEvent(
                "EXISTS",
                mailbox=stored.mailbox,
                message=stored.id,
                uid=stored.uid,
                data={"flags": stored.flags, "thread": stored.thread},
            )
            self._append_journal(db, stored.user, [modseq], [event])
            (seq,) = db.execute(
                f"INSERT INTO messages ({MESSAGE_COLUMNS}, seen) VALUES ({', '.join('?' * 14)}) RETURNING seq",
                [*self._message_values(stored), int(stored.seen)],
            ).fetchone()
            db.execute("INSERT INTO message_sources (seq, raw) VALUES (?, ?)", [seq, raw])
            self._search_rows.append((seq, search.subject, search.contacts, search.body))
            return stored

        try:
            return await self._write(work, defers_search=True)
        except _MailboxGone:
            return None

    @staticmethod
    def _message_values(message: Message) -> list[Any]:
        return [
            message.id,
            message.user,
            message.mailbox,
            message.uid,
            message.modseq,
            message.thread,
            message.size,
            _ms(message.idate),
            json.dumps(message.flags),
            json.dumps(message.summary),
            message.msgid,
            message.subject_key,
            _ms(message.expires) if message.expires else None,
        ]

    async def get_message(self, user_id: str, message_id: str) -> Message | None:
        row = await self._one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND user = ?", [message_id, user_id]
        )
        return _message(row) if row else None

    async def get_message_source(self, user_id: str, message_id: str) -> bytes | None:
        rows = await self._read.execute_fetchall(
            "SELECT raw FROM message_sources WHERE seq = (SELECT seq FROM messages WHERE id = ? AND user = ?)",
            [message_id, user_id],
        )
        return next((bytes(row[0]) for row in rows), None)

    async def list_messages(self, user_id: str, mailbox_id: str, page: PageQuery) -> Slice[Message]:
        counted = await self._one("SELECT total FROM mailboxes WHERE id = ? AND user = ?", [mailbox_id, user_id])
        rows, more, total = await self._page(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox = ? AND user = ?",
            [mailbox_id, user_id],
            page,
            key="uid",
            total=counted[0] if counted else 0,
        )
        return Slice([_message(row) for row in rows], more, total)

    async def search_messages(self, user_id: str, query: SearchQuery, page: PageQuery) -> Slice[Message]:
        """Let the full-text index drive: it yields matches in its own row order,
        newest first, so a page costs the same however many messages match."""
        if not query.terms:
            return Slice([], False, 0)
        where = "message_search MATCH ? AND m.user = ?"
        params: list[Any] = [_fts_query(query.terms), user_id]
        if query.mailbox is not None:
            where += " AND m.mailbox = ?"
            params.append(query.mailbox)
        if query.exclude:
            where += f" AND m.mailbox NOT IN ({', '.join('?' * len(query.exclude))})"
            params.extend(query.exclude)
        source = "FROM message_search CROSS JOIN messages AS m ON m.seq = message_search.rowid"
        columns = ", ".join(f"m.{column.strip()}" for column in MESSAGE_COLUMNS.split(","))
        rows, more, total = await self._page(
            f"SELECT {columns}, m.seq AS position {source} WHERE {where}",
            params,
            page,
            key="message_search.rowid",
            count_sql=f"SELECT COUNT(*) {source} WHERE {where}",
        )
        keys: list[str | int] = [row["position"] for row in rows]
        return Slice([_message(row) for row in rows], more, total, keys)

    async def find_thread(self, user_id: str, msgids: list[str], subject_key: str, since: datetime) -> str | None:
        if msgids:
            row = await self._one(
                f"SELECT thread FROM messages WHERE user = ? AND msgid IN ({', '.join('?' * len(msgids))}) LIMIT 1",
                [user_id, *msgids],
            )
            if row:
                return row[0]
        if not subject_key:
            return None
        row = await self._one(
            "SELECT thread FROM messages WHERE user = ? AND subject_key = ? AND idate >= ? ORDER BY idate DESC LIMIT 1",
            [user_id, subject_key, _ms(since)],
        )
        return row[0] if row else None

    async def update_message(self, user_id: str, message_id: str, changes: dict[str, Any]) -> Message | None:
        unknown = set(changes) - {"flags", "expires"}
        if unknown:
            raise ValueError(f"not writable message fields: {sorted(unknown)}")

        def work(db: sqlite3.Connection) -> Message | None:
            rows = _fetchall(
                db, f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND user = ?", [message_id, user_id]
            )
            if not rows:
                return None
            message = _message(rows[0])
            if "expires" in changes:
                message.expires = changes["expires"]
                db.execute(
                    "UPDATE messages SET expires = ? WHERE id = ?",
                    [_ms(message.expires) if message.expires else None, message.id],
                )
            flags = changes.get("flags", message.flags)
            if sorted(flags) != sorted(message.flags):
                was_seen = message.seen
                message.flags = list(flags)
                (message.modseq,) = self._journal(
                    db,
                    user_id,
                    [
                        JournalEvent(
                            "FETCH",
                            mailbox=message.mailbox,
                            message=message.id,
                            uid=message.uid,
                            data={"flags": message.flags},
                        )
                    ],
                )
                db.execute(
                    "UPDATE messages SET flags = ?, seen = ?, modseq = ? WHERE id = ?",
                    [json.dumps(message.flags), int(message.seen), message.modseq, message.id],
                )
                db.execute(
                    "UPDATE mailboxes SET unseen = unseen + ?, modify_index = ? WHERE id = ?",
                    [int(was_seen) - int(message.seen), message.modseq, message.mailbox],
                )
            return message

        return await self._write(work)

    async def move_message(
        self, user_id: str, message_id: str, target_mailbox_id: str, expires: datetime | None
    ) -> Message | None:
        def work(db: sqlite3.Connection) -> Message | None:
            rows = _fetchall(
                db, f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND user = ?", [message_id, user_id]
            )
            if not rows:
                return None
            message = _message(rows[0])
            source, old_uid = message.mailbox, message.uid
            message.uid = self._take_uid(db, user_id, target_mailbox_id, message.seen)
            message.mailbox = target_mailbox_id
            message.expires = expires
            expunged, message.modseq = self._journal(
                db,
                user_id,
                [
                    JournalEvent("EXPUNGE", mailbox=source, message=message.id, uid=old_uid),
                    JournalEvent(
                        "EXISTS",
                        mailbox=target_mailbox_id,
                        message=message.id,
                        uid=message.uid,
                        data={"flags": message.flags, "thread": message.thread},
                    ),
                ],
            )
            db.execute(
                "UPDATE mailboxes SET total = total - 1, unseen = unseen - ?, modify_index = ? WHERE id = ?",
                [int(not message.seen), expunged, source],
            )
            db.execute("UPDATE mailboxes SET modify_index = ? WHERE id = ?", [message.modseq, target_mailbox_id])
            db.execute(
                "UPDATE messages SET mailbox = ?, uid = ?, modseq = ?, expires = ? WHERE id = ?",
                [message.mailbox, message.uid, message.modseq, _ms(expires) if expires else None, message.id],
            )
            return message

        try:
            return await self._write(work)
        except _MailboxGone:
            return None

    async def delete_messages(self, user_id: str, message_ids: list[str]) -> int:
        if not message_ids:
            return 0

        def work(db: sqlite3.Connection) -> int:
            rows = _fetchall(
                db,
                f"DELETE FROM messages WHERE user = ? AND id IN ({', '.join('?' * len(message_ids))}) "
                "RETURNING seq, id, mailbox, uid, size, seen",
                [user_id, *message_ids],
            )
            if not rows:
                return 0
            ids = self._journal(
                db,
                user_id,
                [JournalEvent("EXPUNGE", mailbox=row["mailbox"], message=row["id"], uid=row["uid"]) for row in rows],
            )
            db.executemany(
                "UPDATE mailboxes SET total = total - 1, unseen = unseen - ?, modify_index = ? WHERE id = ?",
                [(1 - row["seen"], seq, row["mailbox"]) for row, seq in zip(rows, ids, strict=True)],
            )
            return self._forget(db, user_id, rows)

        return await self._write(work)

    async def expired_messages(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        rows = await self._read.execute_fetchall(
            "SELECT user, id FROM messages WHERE expires IS NOT NULL AND expires <= ? LIMIT ?", [_ms(now), limit]
        )
        return [(row[0], row[1]) for row in rows]

    # Several records at once: through the reader, not on the event loop like
    # ``_few``, as a batch may name hundreds of parents.

    async def get_users(self, user_ids: list[str]) -> dict[str, User]:
        found: dict[str, User] = {}
        for chunk in _chunks(user_ids):
            rows = await self._read.execute_fetchall(
                f"SELECT {USER_COLUMNS} FROM users WHERE id IN ({_marks(chunk)})", chunk
            )
            found.update((user.id, user) for user in map(_user, rows))
        return found

    async def _of_users(
        self, table: str, columns: str, order: str, user_ids: list[str], record: Callable[[sqlite3.Row], T]
    ) -> dict[str, list[T]]:
        """Each user's rows of ``table`` in ``order``, a chunk of users per query.

        The ids are deduplicated first: a user named in two chunks would get its rows twice.
        """
        found: dict[str, list[T]] = {}
        for chunk in _chunks(list(dict.fromkeys(user_ids))):
            rows = await self._read.execute_fetchall(
                f"SELECT {columns} FROM {table} WHERE user IN ({_marks(chunk)}) ORDER BY {order}", chunk
            )
            for row in rows:
                found.setdefault(row["user"], []).append(record(row))
        return found

    async def mailboxes_of_users(self, user_ids: list[str]) -> dict[str, list[Mailbox]]:
        return await self._of_users("mailboxes", MAILBOX_COLUMNS, "path", user_ids, _mailbox)

    async def addresses_of_users(self, user_ids: list[str]) -> dict[str, list[Address]]:
        return await self._of_users("addresses", "*", "id", user_ids, _address)

    async def asps_of_users(self, user_ids: list[str]) -> dict[str, list[ApplicationPassword]]:
        return await self._of_users("asps", "*", "id", user_ids, _asp)

    async def counters_of_mailboxes(self, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        return await self._counters("1", [], mailbox_ids)

    async def list_messages_of_mailboxes(self, listings: list[tuple[str, str, PageQuery]]) -> list[Slice[Message]]:
        """One compound query per chunk of listings, each part using the (mailbox, uid) index like ``_page``."""
        rows_of: list[list[sqlite3.Row]] = [[] for _ in listings]
        ascending = [True] * len(listings)
        totals: dict[tuple[str, str], int] = {}
        numbered = list(enumerate(listings))
        for chunk in _chunks(numbered, COMPOUND_PARTS):
            parts, params = [], []
            for number, (user_id, mailbox_id, page) in chunk:
                clause, values, ascending[number] = _keyset("uid", page)
                parts.append(
                    f"SELECT * FROM (SELECT {MESSAGE_COLUMNS}, ? AS listing FROM messages "
                    f"WHERE mailbox = ? AND user = ?{clause})"
                )
                params += [number, mailbox_id, user_id, *values]
            for row in await self._read.execute_fetchall(" UNION ALL ".join(parts), params):
                rows_of[row["listing"]].append(row)
        for chunk in _chunks(list({mailbox_id for _, mailbox_id, _ in listings})):
            rows = await self._read.execute_fetchall(
                f"SELECT user, id, total FROM mailboxes WHERE id IN ({_marks(chunk)})", chunk
            )
            totals.update(((user_id, mailbox_id), total) for user_id, mailbox_id, total in rows)
        pages = []
        for (user_id, mailbox_id, page), rows, read_ascending in zip(listings, rows_of, ascending, strict=True):
            # Each part is ordered, the compound of them need not keep that order.
            rows.sort(key=lambda row: row["uid"], reverse=not read_ascending)
            items, more = _trim(rows, page)
            pages.append(Slice([_message(row) for row in items], more, totals.get((user_id, mailbox_id), 0)))
        return pages

    async def thread_messages(self, threads: list[tuple[str, str]], limit: int) -> dict[tuple[str, str], list[Message]]:
        """A chunk of threads per query, on the (user, thread, id) index.

        A query matches every pair of its users and threads; only its own
        pairs are kept, as another chunk's pair it matches is read there too.
        """
        found: dict[tuple[str, str], list[Message]] = {}
        for chunk in _chunks(sorted(set(threads))):
            wanted = set(chunk)
            users = sorted({user_id for user_id, _ in chunk})
            thread_ids = sorted({thread_id for _, thread_id in chunk})
            rows = await self._read.execute_fetchall(
                f"SELECT {MESSAGE_COLUMNS} FROM (SELECT {MESSAGE_COLUMNS}, "
                "ROW_NUMBER() OVER (PARTITION BY user, thread ORDER BY id) AS position FROM messages "
                f"WHERE user IN ({_marks(users)}) AND thread IN ({_marks(thread_ids)})) "
                "WHERE position <= ? ORDER BY id",
                [*users, *thread_ids, limit],
            )
            for message in map(_message, rows):
                key = (message.user, message.thread)
                if key in wanted:
                    found.setdefault(key, []).append(message)
        return found

    async def delete_user(self, user_id: str) -> bool:
        """Everything goes in one transaction: a failure leaves the user as it was."""

        def work(db: sqlite3.Connection) -> bool:
            if db.execute("DELETE FROM users WHERE id = ?", [user_id]).rowcount == 0:
                return False
            for table in ("addresses", "asps", "mailboxes", "journal", "authlog"):
                db.execute(f"DELETE FROM {table} WHERE user = ?", [user_id])
            # _forget also gives the bytes back to the user's storage used, which with the user gone changes nothing.
            rows = _fetchall(db, "DELETE FROM messages WHERE user = ? RETURNING seq, size", [user_id])
            self._forget(db, user_id, rows)
            return True

        return await self._write(work)


# SQLite allows 500 parts in a compound SELECT and (before 3.32) 999 parameters per statement.
COMPOUND_PARTS = 150
CHUNK = 400


def _chunks(items: Sequence[T], size: int = CHUNK) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _keyset(key: str, page: PageQuery) -> tuple[str, list[Any], bool]:
    """The key condition, order and limit that end a keyset page query, so that every paged read agrees.

    Returns that clause (to append to a WHERE clause), its parameters and
    whether it reads in ascending ``key`` order. A backward page is read
    towards the start of the listing, from the item before ``page.before``;
    one row more than the page is read so that ``_trim`` can tell whether
    more follow.
    """
    backward = page.before is not None
    edge = page.before if backward else page.after
    ascending = page.descending == backward
    op, order = (">", "ASC") if ascending else ("<", "DESC")
    condition, values = ("", []) if edge is None else (f" AND {key} {op} ?", [edge])
    return f"{condition} ORDER BY {key} {order} LIMIT ?", [*values, page.limit + 1], ascending


def _trim(rows: list[T], page: PageQuery) -> tuple[list[T], bool]:
    """Rows read as ``_keyset`` orders them cut to the page, in display order; and whether more follow."""
    items = rows[: page.limit]
    if page.before is not None:
        items.reverse()
    return items, len(rows) > page.limit
