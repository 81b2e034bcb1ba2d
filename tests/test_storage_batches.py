"""How the batch reads and thread lookups are served, beyond what the contract checks.

The contract (``test_storage_contract``) says what the batch reads return;
this checks what makes them cheap: thread lookups find their messages
through the (user, thread) index on both backends, also in a store made
before that index existed, and SQLite reads batches through its reader and
splits them into queries SQLite accepts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pymongo
import pytest
from test_storage_contract import add, make_asp, new_user, oid

from merganser.storage import storage_from_url
from merganser.storage.base import Storage
from merganser.storage.sqlite import MIGRATIONS, SQLiteStorage

MONGODB_THREAD_INDEX = "user_1_thread_1__id_1"


@pytest.fixture
async def sqlite_storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    store = SQLiteStorage(str(tmp_path / "merganser.db"))
    await store.open()
    yield store
    await store.close()


def query_plan(path: str, sql: str, params: Iterable[Any]) -> list[str]:
    """What SQLite does to answer ``sql``, one step a line, read on a connection of its own."""
    db = sqlite3.connect(path)
    try:
        return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", list(params))]
    finally:
        db.close()


async def test_thread_lookup_uses_the_thread_index(
    sqlite_storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, _, (inbox, *_) = await new_user(sqlite_storage, "ada")
    message = await add(sqlite_storage, inbox)
    for _ in range(3):
        await add(sqlite_storage, inbox)
    reader = sqlite_storage._read
    queries: list[tuple[str, list[Any]]] = []
    read = reader.execute_fetchall

    async def recording(sql: str, params: Iterable[Any]) -> Iterable[sqlite3.Row]:
        queries.append((sql, list(params)))
        return await read(sql, params)

    monkeypatch.setattr(reader, "execute_fetchall", recording)
    found = await sqlite_storage.thread_messages([(user.id, message.thread)], limit=10)
    assert found == {(user.id, message.thread): [message]}

    (query,) = queries
    plan = query_plan(sqlite_storage.path, *query)
    assert any("USING INDEX messages_thread" in step for step in plan), plan
    assert not any(step.startswith("SCAN messages") for step in plan), plan


async def test_batch_reads_do_not_read_on_the_event_loop(
    sqlite_storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_few`` is for one user's small sets; a batch may name hundreds of parents."""
    user, address, mailboxes = await new_user(sqlite_storage, "bo")
    asp = make_asp(user)
    await sqlite_storage.add_asp(asp)

    async def refused(sql: str, params: Any) -> list[sqlite3.Row]:
        raise AssertionError(f"read on the event loop: {sql}")

    monkeypatch.setattr(sqlite_storage, "_few", refused)
    assert list(await sqlite_storage.get_users([user.id])) == [user.id]
    assert await sqlite_storage.addresses_of_users([user.id]) == {user.id: [address]}
    assert await sqlite_storage.asps_of_users([user.id]) == {user.id: [asp]}
    by_path = sorted(mailboxes, key=lambda mailbox: mailbox.path)
    assert await sqlite_storage.mailboxes_of_users([user.id]) == {user.id: by_path}


async def test_thread_lookup_of_more_threads_than_one_query_takes(sqlite_storage: SQLiteStorage) -> None:
    user, _, (inbox, *_) = await new_user(sqlite_storage, "cy")
    first = await add(sqlite_storage, inbox)
    last = await add(sqlite_storage, inbox)
    keys = [(user.id, first.thread), *((user.id, oid()) for _ in range(900)), (user.id, last.thread)]
    found = await sqlite_storage.thread_messages(keys, limit=10)
    assert found == {(user.id, first.thread): [first], (user.id, last.thread): [last]}


async def test_thread_lookup_keeps_chunks_apart(sqlite_storage: SQLiteStorage) -> None:
    """A chunk matches every pair of its users and threads; those of another chunk must not come back twice."""
    user, _, (inbox, *_) = await new_user(sqlite_storage, "cal")
    other, _, (their_inbox, *_) = await new_user(sqlite_storage, "dot")
    thread = oid()
    mine = await add(sqlite_storage, inbox, thread=thread)
    theirs = await add(sqlite_storage, their_inbox, thread=thread)
    # In id order: this user's thread first, then unknown ones until the next chunk, then the other user's.
    keys = [(user.id, thread), *((user.id, oid()) for _ in range(500)), (other.id, thread)]
    found = await sqlite_storage.thread_messages(keys, limit=10)
    assert found == {(user.id, thread): [mine], (other.id, thread): [theirs]}


async def test_delete_user_leaves_no_sources_or_search_rows(sqlite_storage: SQLiteStorage) -> None:
    user, _, (inbox, *_) = await new_user(sqlite_storage, "dee")
    other, _, (their_inbox, *_) = await new_user(sqlite_storage, "eli")
    for _ in range(3):
        await add(sqlite_storage, inbox)
    kept = await add(sqlite_storage, their_inbox)
    assert await sqlite_storage.delete_user(user.id) is True

    db = sqlite3.connect(sqlite_storage.path)
    try:
        for table, key in (("message_sources", "seq"), ("message_search", "rowid")):
            assert (
                db.execute(f"SELECT {key} FROM {table}").fetchall() == db.execute("SELECT seq FROM messages").fetchall()
            )
    finally:
        db.close()
    assert await sqlite_storage.get_message_source(other.id, kept.id) is not None


def drop_thread_index(storage_url: str, store: Storage) -> None:
    """Make the store look as it did before the thread index existed."""
    if isinstance(store, SQLiteStorage):
        db = sqlite3.connect(store.path)
        try:
            db.execute("DROP INDEX messages_thread")
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
        finally:
            db.close()
        return
    client: pymongo.MongoClient = pymongo.MongoClient(storage_url)
    try:
        client.get_default_database()["messages"].drop_index(MONGODB_THREAD_INDEX)
    finally:
        client.close()


def has_thread_index(storage_url: str, store: Storage) -> bool:
    if isinstance(store, SQLiteStorage):
        db = sqlite3.connect(store.path)
        try:
            names = {row[1] for row in db.execute("PRAGMA index_list(messages)")}
            (version,) = db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
        return "messages_thread" in names and version == len(MIGRATIONS)
    client: pymongo.MongoClient = pymongo.MongoClient(storage_url)
    try:
        return MONGODB_THREAD_INDEX in client.get_default_database()["messages"].index_information()
    finally:
        client.close()


async def test_opening_a_store_made_before_the_thread_index_adds_it(storage_url: str) -> None:
    store = storage_from_url(storage_url)
    await store.open()
    try:
        user, _, (inbox, *_) = await new_user(store, "fay")
        message = await add(store, inbox)
    finally:
        await store.close()
    drop_thread_index(storage_url, store)
    assert not has_thread_index(storage_url, store)

    store = storage_from_url(storage_url)
    await store.open()
    try:
        assert has_thread_index(storage_url, store)
        assert await store.thread_messages([(user.id, message.thread)], limit=10) == {
            (user.id, message.thread): [message]
        }
    finally:
        await store.close()
