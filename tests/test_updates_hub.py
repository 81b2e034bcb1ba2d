"""The update hub: journal entries reach subscribers exactly once, in order, on both backends.

These tests drive the core directly (no HTTP) so that they can make changes
while a subscription is part-way through its backlog, shrink the page size,
and leave a subscriber unread on purpose.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from merganser.config import Settings
from merganser.errors import NotFoundError, UnavailableError, ValidationError
from merganser.resolvers import hub, mailboxes, updates, users
from merganser.resolvers.context import Core
from merganser.resolvers.hub import SubscriberTooSlow, Subscription
from merganser.storage import Storage


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

    def listener(grown: str) -> None:
        assert grown == user_id
        seen.append([])
        asyncio.get_running_loop().create_task(read_into(seen[-1]))

    async def read_into(target: list[int]) -> None:
        target.extend(entry.id for entry in await storage.read_journal(user_id, 0, 100))

    storage.add_journal_listener(listener)
    await make_mailboxes(core, user_id, 1)
    await asyncio.sleep(0.2)
    assert seen and seen[0] == [1]
    assert await storage.last_journal_id(user_id) == 1
