"""The update hub: journal entries reach subscribers exactly once, in order, on both backends.

These tests drive the core directly (no HTTP) so that they can make changes
while a subscription is part-way through its backlog, shrink the page size,
and leave a subscriber unread on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from merganser.config import Settings
from merganser.errors import NotFoundError, UnavailableError, ValidationError
from merganser.resolvers import hub, mailboxes, updates, users
from merganser.resolvers.context import Core
from merganser.resolvers.hub import SubscriberTooSlow, Subscription
from merganser.storage import Storage
from merganser.storage.base import JournalEntry


@pytest.fixture
async def core(storage: Storage) -> AsyncIterator[Core]:
    yield Core(storage=storage, settings=Settings(bcrypt_rounds=4, subscriber_buffer=5))


async def new_user(core: Core, name: str = "alice") -> str:
    user = await users.create_user(core, users.CreateUser.from_json({"username": name, "password": "secretpass"}))
    return user.id


async def make_mailboxes(core: Core, user_id: str, count: int, prefix: str = "Box") -> None:
    for number in range(count):
        await mailboxes.create_mailbox(core, user_id, mailboxes.CreateMailbox.from_json({"path": f"{prefix} {number}"}))


async def take(subscription: Subscription, count: int, timeout: float = 20.0) -> list[int]:
    """Ids of the next ``count`` entries."""
    ids: list[int] = []
    async with asyncio.timeout(timeout):
        while len(ids) < count:
            ids.extend(entry.id for entry in await subscription.next_batch())
    return ids


def count_reads(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, record the ``after`` of every journal read of ``storage``."""
    reads: list[int] = []
    read_journal = storage.read_journal

    async def counted(user_id: str, after: int, limit: int) -> list[JournalEntry]:
        reads.append(after)
        return await read_journal(user_id, after, limit)

    monkeypatch.setattr(storage, "read_journal", counted)
    return reads


async def test_a_long_backlog_is_read_page_by_page_then_live(core, monkeypatch):
    monkeypatch.setattr(hub, "PAGE", 3)
    user_id = await new_user(core)
    await make_mailboxes(core, user_id, 8)
    async with await updates.subscribe(core, user_id, since=1) as subscription:
        assert await take(subscription, 7) == [2, 3, 4, 5, 6, 7, 8]
        await make_mailboxes(core, user_id, 2, prefix="Later")
        assert await take(subscription, 2) == [9, 10]
        assert subscription.last_id == 10


async def test_changes_during_catch_up_are_neither_lost_nor_repeated(core, monkeypatch):
    monkeypatch.setattr(hub, "PAGE", 2)
    user_id = await new_user(core)
    await make_mailboxes(core, user_id, 6)
    writer = asyncio.create_task(make_mailboxes(core, user_id, 10, prefix="During"))
    try:
        async with await updates.subscribe(core, user_id, since=0) as subscription:
            assert await take(subscription, 16) == list(range(1, 17))
    finally:
        await writer


async def test_subscribers_from_now_on_see_only_new_entries(core):
    user_id = await new_user(core)
    await make_mailboxes(core, user_id, 2)
    first = await updates.subscribe(core, user_id)
    second = await updates.subscribe(core, user_id)
    assert first.last_id == second.last_id == 2
    await make_mailboxes(core, user_id, 1, prefix="New")
    assert await take(first, 1) == await take(second, 1) == [3]
    assert core.updates.subscriber_count == 2
    first.close()
    second.close()
    assert core.updates.subscriber_count == 0


async def test_a_slow_subscriber_is_dropped_and_can_resume_from_its_last_id(core):
    user_id = await new_user(core)
    slow = await updates.subscribe(core, user_id)
    fast = await updates.subscribe(core, user_id)
    # The fast one reads as the changes happen; the slow one not until the end.
    taken, _ = await asyncio.gather(take(fast, 8), make_mailboxes(core, user_id, 8))
    assert taken == list(range(1, 9))
    handed: list[int] = []
    with pytest.raises(SubscriberTooSlow) as dropped:
        while True:
            handed.extend(entry.id for entry in await slow.next_batch())
    assert len(handed) <= core.settings.subscriber_buffer
    assert dropped.value.last_id == slow.last_id == (handed[-1] if handed else 0)
    assert core.updates.subscriber_count == 1
    async with await updates.subscribe(core, user_id, since=slow.last_id) as resumed:
        assert handed + await take(resumed, 8 - len(handed)) == list(range(1, 9))
    fast.close()


async def test_waiting_with_a_timeout_returns_nothing_and_keeps_the_place(core):
    user_id = await new_user(core)
    async with await updates.subscribe(core, user_id) as subscription:
        assert await subscription.next_batch(timeout=0.05) == []
        await make_mailboxes(core, user_id, 1)
        assert [entry.id for entry in await subscription.next_batch(timeout=5)] == [1]


async def test_closing_ends_a_waiting_iteration(core):
    user_id = await new_user(core)
    subscription = await updates.subscribe(core, user_id)
    received: list[int] = []

    async def consume() -> None:
        async for entry in subscription:
            received.append(entry.id)

    consumer = asyncio.create_task(consume())
    await make_mailboxes(core, user_id, 1)
    async with asyncio.timeout(5):
        while not received:
            await asyncio.sleep(0.01)
    subscription.close()
    await asyncio.wait_for(consumer, 5)
    assert received == [1]


async def test_hub_close_ends_everyone_and_refuses_newcomers(core):
    user_id = await new_user(core)
    await make_mailboxes(core, user_id, 2)
    live = await updates.subscribe(core, user_id)
    catching_up = await updates.subscribe(core, user_id, since=0)
    core.updates.close()
    assert await live.next_batch() == [] and live.closed
    assert await catching_up.next_batch() == [] and catching_up.closed
    with pytest.raises(UnavailableError):
        await updates.subscribe(core, user_id)


@pytest.mark.parametrize("leaving", ["cancelled", "closed"])
async def test_a_subscriber_leaving_while_its_feed_starts_leaves_no_feed_behind(core, monkeypatch, leaving):
    """A client gone before the feed it waited for started: later changes to its user cost no journal reads."""
    user_id = await new_user(core)
    # Made before starting feeds is held up: checking ``since`` reads the head too.
    catching_up = await updates.subscribe(core, user_id, since=0)
    waiting, released, started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    last_journal_id = core.storage.last_journal_id

    async def held(user: str) -> int:
        waiting.set()
        await released.wait()
        head = await last_journal_id(user)
        started.set()
        return head

    monkeypatch.setattr(core.storage, "last_journal_id", held)
    if leaving == "cancelled":
        catching_up.close()
        subscribing = asyncio.create_task(updates.subscribe(core, user_id))
        await asyncio.wait_for(waiting.wait(), 5)
        subscribing.cancel()
    else:
        subscribing = asyncio.create_task(catching_up.next_batch())
        await asyncio.wait_for(waiting.wait(), 5)
        catching_up.close()
    released.set()
    await asyncio.wait_for(started.wait(), 5)
    if leaving == "cancelled":
        with pytest.raises(asyncio.CancelledError):
            await subscribing
    else:
        assert await subscribing == []
    assert core.updates.subscriber_count == 0

    reads = count_reads(core.storage, monkeypatch)
    await make_mailboxes(core, user_id, 1)
    # Time for a feed, were there one, to read the change.
    await asyncio.sleep(0.2)
    assert reads == []
    monkeypatch.setattr(core.storage, "last_journal_id", last_journal_id)
    async with await updates.subscribe(core, user_id) as later:
        await make_mailboxes(core, user_id, 1, prefix="Later")
        assert await take(later, 1, timeout=5) == [2]


async def test_a_failed_journal_read_is_retried_until_the_entry_arrives(core, monkeypatch, caplog):
    user_id = await new_user(core)
    read_journal = core.storage.read_journal
    succeeded = asyncio.Event()
    failed: list[int] = []

    async def fails_once(user: str, after: int, limit: int) -> list[JournalEntry]:
        entries = await read_journal(user, after, limit)
        # Fail the read that would have found the change, as storage failing right then would.
        if entries and not failed:
            failed.append(after)
            raise OSError("storage went away")
        succeeded.set()
        return entries

    monkeypatch.setattr(core.storage, "read_journal", fails_once)
    async with await updates.subscribe(core, user_id) as subscription:
        # The new feed's first read, which finds nothing, is over before the change.
        await asyncio.wait_for(succeeded.wait(), 5)
        await make_mailboxes(core, user_id, 1)
        assert await take(subscription, 1, timeout=5) == [1]
    assert failed == [0]
    assert [record.exc_info is not None for record in caplog.records if "failed" in record.getMessage()] == [True]


async def test_failed_journal_reads_are_retried_only_while_someone_is_subscribed(core, monkeypatch, caplog):
    monkeypatch.setattr(hub, "RETRY_DELAYS", (0.01,))
    caplog.set_level(logging.WARNING, logger=hub.__name__)
    user_id = await new_user(core)
    attempts: list[int] = []

    async def fails(user: str, after: int, limit: int) -> list[JournalEntry]:
        attempts.append(after)
        raise OSError("storage went away")

    monkeypatch.setattr(core.storage, "read_journal", fails)
    # The new feed's first read fails, and so does every retry.
    subscription = await updates.subscribe(core, user_id)
    async with asyncio.timeout(5):
        while len(attempts) < 3:
            await asyncio.sleep(0.01)
    subscription.close()
    tried = len(attempts)
    await asyncio.sleep(0.2)
    # At most the attempt already under way when the subscriber left.
    assert len(attempts) <= tried + 1
    failures = [record for record in caplog.records if "failed" in record.getMessage()]
    assert len(failures) >= 3
    # One traceback; the rest one line each.
    assert [record.exc_info is not None for record in failures[:3]] == [True, False, False]


async def test_deleting_a_user_ends_their_subscriptions(storage):
    # A buffer that holds whatever a backend journals while deleting the user.
    core = Core(storage=storage, settings=Settings(bcrypt_rounds=4))
    user_id = await new_user(core)
    bystander_id = await new_user(core, "bob")
    await make_mailboxes(core, user_id, 2)
    live = await updates.subscribe(core, user_id)
    catching_up = await updates.subscribe(core, user_id, since=0)
    bystander = await updates.subscribe(core, bystander_id)
    waiting = asyncio.create_task(live.next_batch())
    await asyncio.sleep(0.05)
    await users.delete_user(core, user_id)
    async with asyncio.timeout(5):
        await waiting
        # A backend may journal the removal of the user's mailboxes on the way; that comes first.
        while await live.next_batch():
            pass
    assert live.closed
    assert await catching_up.next_batch() == [] and catching_up.closed
    assert core.updates.subscriber_count == 1
    await make_mailboxes(core, bystander_id, 1)
    assert len(await take(bystander, 1, timeout=5)) == 1
    bystander.close()


async def test_refusals(core):
    user_id = await new_user(core)
    with pytest.raises(NotFoundError):
        await updates.subscribe(core, "0123456789abcdef01234567")
    with pytest.raises(ValidationError):
        await updates.subscribe(core, "nonsense")
    with pytest.raises(ValidationError):
        await updates.subscribe(core, user_id, since=-1)
    with pytest.raises(ValidationError):
        await updates.subscribe(core, user_id, since=1)
    assert core.updates.subscriber_count == 0


async def test_storage_tells_listeners_only_after_the_change_is_readable(storage):
    """A listener that reads the journal the moment it is told finds the new entry there."""
    core = Core(storage=storage, settings=Settings(bcrypt_rounds=4))
    user_id = await new_user(core)
    seen: list[list[int]] = []
    reads: list[asyncio.Task[None]] = []

    def listener(grown: str) -> None:
        assert grown == user_id
        seen.append([])
        reads.append(asyncio.get_running_loop().create_task(read_into(seen[-1])))

    async def read_into(target: list[int]) -> None:
        target.extend(entry.id for entry in await storage.read_journal(user_id, 0, 100))

    storage.add_journal_listener(listener)
    await make_mailboxes(core, user_id, 1)
    assert reads, "the listener was not told of the new journal entry"
    async with asyncio.timeout(30):  # only a guard against a hung read, not a timing assertion
        await asyncio.gather(*reads)
    assert seen[0] == [1]
    assert await storage.last_journal_id(user_id) == 1
