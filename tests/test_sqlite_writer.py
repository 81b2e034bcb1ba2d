"""The SQLite writer thread: group commits, what each writer learns, and who is told of journal growth.

Changes are queued together so that they land in one group: one that fails
is undone alone, a group that cannot commit fails all of its writers and
leaves nothing behind, search rows written at the end of a group agree with
the messages, listeners hear of a commit on the event loop once it is
durable, and the LMTP maildrop answers 451 when the commit fails.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from merganser.storage.base import OverQuotaError, PageQuery, SearchQuery
from merganser.storage.sqlite import SQLiteStorage

sys.path.insert(0, str(Path(__file__).resolve().parent / "rest"))

from helpers import core, create_user, deliver, deliver_ok, mailbox_id, message_ids, quota_used, simple_message
from test_storage_contract import make_message, new_user, search_text

from merganser.app import create_app
from merganser.config import Settings


class FailingCommit:
    """The writer's connection, except that COMMIT fails as a full disk would make it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def execute(self, sql: str, *params: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *params)


@pytest.fixture
async def storage(tmp_path: Path):
    store = SQLiteStorage(str(tmp_path / "merganser.db"))
    await store.open()
    yield store
    await store.close()


def insert(key: str):
    return lambda db: db.execute("INSERT INTO counters (key, value, expires) VALUES (?, 1, 0)", [key]).rowcount


async def keys(storage: SQLiteStorage) -> list[str]:
    rows = await storage._read.execute_fetchall("SELECT key FROM counters ORDER BY key")
    return [row[0] for row in rows]


TRANSACTION_STATEMENTS = ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")


async def trace_writer(storage: SQLiteStorage) -> list[str]:
    """Every statement the writing connection runs from now on, as SQLite runs it.

    sqlite3 lets only the connection's own thread set its trace callback, so
    it is set there, through the writer's executor.
    """
    statements: list[str] = []
    assert storage._writer is not None and storage._db is not None
    await asyncio.get_running_loop().run_in_executor(storage._writer, storage._db.set_trace_callback, statements.append)
    return statements


def transactions(statements: list[str]) -> list[str]:
    """The statements that begin or end a transaction (not the savepoints within one)."""
    return [statement for statement in statements if statement in TRANSACTION_STATEMENTS]


async def test_a_failing_change_is_undone_alone(storage):
    def failing(db: sqlite3.Connection) -> int:
        insert("c")(db)
        raise ValueError("no")

    statements = await trace_writer(storage)
    results = await asyncio.gather(
        storage._write(insert("a")),
        storage._write(failing),
        storage._write(insert("a")),
        storage._write(insert("b")),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[3] == 1
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert await keys(storage) == ["a", "b"]
    # All four in one transaction, each in a savepoint of its own; the two that failed were rolled back to theirs.
    assert transactions(statements) == ["BEGIN IMMEDIATE", "COMMIT"], statements
    assert statements.count("SAVEPOINT work") == 4, statements
    assert statements.count("ROLLBACK TO work") == 2, statements


async def test_a_group_that_cannot_commit_fails_every_writer_and_keeps_nothing(storage):
    statements = await trace_writer(storage)
    storage._db = FailingCommit(storage._db)
    results = await asyncio.gather(*(storage._write(insert(key)) for key in "abc"), return_exceptions=True)
    assert all(isinstance(result, sqlite3.OperationalError) for result in results), results
    assert await keys(storage) == []
    # One transaction for the three, whose failed commit undid it whole.
    assert transactions(statements) == ["BEGIN IMMEDIATE", "ROLLBACK"], statements
    assert statements.count("SAVEPOINT work") == 3, statements

    storage._db = storage._db.db
    statements.clear()
    assert await storage._write(insert("d")) == 1
    assert await keys(storage) == ["d"]
    assert transactions(statements) == ["BEGIN IMMEDIATE", "COMMIT"], statements


async def test_search_rows_written_at_the_end_of_a_group_agree_with_its_messages(storage):
    user, _, mailboxes = await new_user(storage)
    inbox = mailboxes[0]
    first = make_message(inbox, size=10)
    results = await asyncio.gather(
        storage.add_message(first, b"x" * 10, search_text(body="alpha"), None),
        storage.add_message(make_message(inbox, size=10), b"x" * 10, search_text(body="beta"), 15),
        storage.delete_messages(user.id, [first.id]),
        storage.add_message(make_message(inbox, size=10), b"x" * 10, search_text(body="gamma"), None),
        return_exceptions=True,
    )
    assert isinstance(results[1], OverQuotaError)
    assert results[2] == 10

    async def found(word: str) -> int:
        return (await storage.search_messages(user.id, SearchQuery([word]), PageQuery(limit=10))).total

    assert [await found(word) for word in ("alpha", "beta", "gamma")] == [0, 0, 1]
    rows = await storage._read.execute_fetchall("SELECT COUNT(*) FROM message_search")
    assert rows[0][0] == 1


async def test_listeners_hear_of_a_commit_on_the_loop_once_it_is_durable(storage):
    user, _, mailboxes = await new_user(storage)
    inbox = mailboxes[0]
    heard: list[tuple[str, bool, int]] = []

    def listener(user_id: str) -> None:
        # The journal is read through another connection: the change must be committed.
        with sqlite3.connect(storage.path) as db:
            (entries,) = db.execute("SELECT COUNT(*) FROM journal WHERE user = ?", [user_id]).fetchone()
        heard.append((user_id, threading.current_thread() is threading.main_thread(), entries))

    storage.add_journal_listener(listener)
    results = await asyncio.gather(
        storage.add_message(make_message(inbox, size=10), b"x" * 10, search_text(), None),
        storage.add_message(make_message(inbox, size=10), b"x" * 10, search_text(), 15),
        return_exceptions=True,
    )
    assert isinstance(results[1], OverQuotaError)
    assert heard == [(user.id, True, 1)]

    heard.clear()
    storage._db = FailingCommit(storage._db)
    with pytest.raises(sqlite3.OperationalError):
        await storage.add_message(make_message(inbox, size=10), b"x" * 10, search_text(), None)
    storage._db = storage._db.db
    assert heard == []


async def test_writers_of_a_group_under_way_get_its_outcome_when_the_flusher_is_cancelled(storage):
    started, release = threading.Event(), threading.Event()

    def slow(db: sqlite3.Connection) -> int:
        started.set()
        release.wait(10)
        return insert("slow")(db)

    writing = asyncio.ensure_future(storage._write(slow))
    await asyncio.to_thread(started.wait, 10)
    assert storage._flusher is not None
    storage._flusher.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.wait_for(writing, 10) == 1
    assert await keys(storage) == ["slow"]
    assert await storage._write(insert("after")) == 1


async def test_the_writing_connection_is_only_used_from_its_thread(storage):
    with pytest.raises(sqlite3.ProgrammingError):
        storage._db.execute("SELECT 1")


# Through the maildrop


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any):
    settings = Settings(storage=f"sqlite:///{tmp_path}/merganser.db", bcrypt_rounds=4, lmtp_port=0)
    return await aiohttp_client(create_app(settings))


async def test_a_failed_commit_answers_451_and_stores_nothing(api):
    user_id = await create_user(api, "testuser", address="testuser@example.com")
    await create_user(api, "other", address="other@example.com")
    storage = core(api).storage
    assert isinstance(storage, SQLiteStorage)

    storage._db = FailingCommit(storage._db)
    result = await deliver(api, ["testuser@example.com", "other@example.com"], simple_message("Lost"))
    storage._db = storage._db.db
    assert result.data_codes == [451, 451], result
    inbox = await mailbox_id(api, user_id)
    assert await message_ids(api, user_id, inbox) == []
    assert await quota_used(api, user_id) == 0

    await deliver_ok(api, "testuser@example.com", simple_message("Kept"))
    assert len(await message_ids(api, user_id, inbox)) == 1
