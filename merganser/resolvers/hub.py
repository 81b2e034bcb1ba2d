"""Live updates: each user's journal, handed to subscribers as it grows.

The journal is the source of truth and the only thing subscribers are fed
from. Storage says *that* a user's journal grew, after the change committed
(and, with several server processes, the Redis relay says the same for changes
made elsewhere). One feed per watched user then reads the new entries once,
however many subscribers that user has, and appends them to each
subscriber's buffer.

A subscriber that starts from an older id (SSE ``Last-Event-ID``, GraphQL
``since``) first reads its backlog straight from the journal, page by page,
and joins the feed only once it has caught up, so a long backlog never sits
in memory. A subscriber whose buffer reaches its limit is dropped with
``SubscriberTooSlow``: the buffer stays bounded, and the client reconnects from
the last id it saw without losing anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable

from merganser.errors import MerganserError, UnavailableError
from merganser.storage.base import JournalEntry, Storage

log = logging.getLogger(__name__)

PAGE = 500


class SubscriberTooSlow(MerganserError):
    """The subscriber fell further behind than its buffer allows and was dropped."""

    def __init__(self, last_id: int) -> None:
        super().__init__(
            f"Too many updates are waiting for this subscriber; reconnect from id {last_id} to resume",
            "SubscriberTooSlow",
        )
        self.last_id = last_id


class Subscription:
    """One subscriber's position in a user's journal, and the entries waiting for it.

    Iterate to receive entries in journal order, each exactly once; close it
    (or leave an ``async with``) when the client goes away.
    """

    __slots__ = (
        "_backlog_until",
        "_buffer",
        "_closed",
        "_dropped",
        "_feed",
        "_hub",
        "_last",
        "_sink",
        "_user_id",
        "_waiter",
    )

    def __init__(self, hub: UpdateHub, user_id: str, after: int) -> None:
        self._hub = hub
        self._user_id = user_id
        self._last = after
        self._backlog_until: int | None = None
        self._feed: _Feed | None = None
        self._buffer: deque[JournalEntry] = deque()
        self._waiter: asyncio.Future[bool] | None = None
        self._dropped = False
        self._closed = False
        self._sink: Callable[[list[JournalEntry]], bool] | None = None

    @property
    def user_id(self) -> str:
        return self._user_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_id(self) -> int:
        """The id of the last entry handed out (or the starting point)."""
        return self._last

    def __aiter__(self) -> AsyncIterator[JournalEntry]:
        return self._entries()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    async def _entries(self) -> AsyncIterator[JournalEntry]:
        while batch := await self.next_batch():
            for entry in batch:
                yield entry

    async def next_batch(self, timeout: float | None = None) -> list[JournalEntry]:
        """The next entries after ``last_id``, oldest first.

        Waits for new ones at most ``timeout`` seconds (for ever if None) and
        then returns an empty list, so a stream can send a heartbeat; returns
        an empty list at once when the subscription is closed. Raises
        SubscriberTooSlow once everything before the overflow was handed out.
        """
        batch = await self._next_batch(timeout)
        if batch:
            self._last = batch[-1].id
        return batch

    async def _next_batch(self, timeout: float | None) -> list[JournalEntry]:
        """From the journal until caught up, then from the feed."""
        while not self._closed:
            if self._feed is None:
                entries = await self._hub.storage.read_journal(self._user_id, self._last, PAGE)
                if len(entries) == PAGE:
                    return entries
                # Caught up as of that read: join the feed, then read what was
                # committed between that read and the feed's position.
                self._feed = await self._hub._attach(self)
                self._backlog_until = self._feed.head
                if entries:
                    return entries
                continue
            if self._backlog_until is not None:
                until, self._backlog_until = self._backlog_until, None
                if until > self._last:
                    entries = await self._hub.storage.read_journal(self._user_id, self._last, until - self._last)
                    if entries:
                        return entries
                continue
            if self._buffer:
                batch = [entry for entry in self._buffer if entry.id > self._last]
                self._buffer.clear()
                if batch:
                    return batch
                continue
            if self._dropped:
                raise SubscriberTooSlow(self._last)
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
            try:
                if await waiter:
                    return []
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return []

    def send_directly(self, sink: Callable[[list[JournalEntry]], bool]) -> None:
        """Let the feed hand new entries straight to ``sink`` while the consumer waits with nothing pending.

        Waking the consuming task for every entry is most of what a stream
        costs when one change reaches many subscribers. ``sink`` returns False
        when it cannot take the entries right away (say, its socket is
        behind); they are then buffered and the consumer woken as usual. The
        consumer's own reads keep journal order, because the sink is only
        used while it has nothing buffered and is parked waiting.
        """
        self._sink = sink

    def _deliver(self, entries: list[JournalEntry]) -> None:
        """Called by the feed: buffer new entries, or drop the subscriber if the buffer is full."""
        if self._dropped:
            return
        if self._sink is not None and self._waiter is not None and not self._buffer and self._backlog_until is None:
            fresh = [entry for entry in entries if entry.id > self._last]
            if not fresh:
                return
            if self._sink(fresh):
                self._last = fresh[-1].id
                return
        if len(self._buffer) + len(entries) > self._hub.buffer_limit:
            self._dropped = True
            self._detach()
        else:
            self._buffer.extend(entries)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(False)

    def _detach(self) -> None:
        if self._feed is None:
            self._hub._forget(self)
        else:
            self._hub._detach(self, self._feed)

    def close(self) -> None:
        """Stop receiving; a pending iteration ends and the feed forgets this subscriber."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._detach()
        self._wake()


def _time_out(waiter: asyncio.Future[bool]) -> None:
    """End a wait that nothing woke: its result True means "timed out"."""
    if not waiter.done():
        waiter.set_result(True)


class _Feed:
    """The entries of one user's journal after ``head``, read once for all of its subscribers."""

    __slots__ = ("_again", "_reader", "head", "subscribers", "user_id")

    def __init__(self, user_id: str, head: int) -> None:
        self.user_id = user_id
        self.head = head
        self.subscribers: set[Subscription] = set()
        self._reader: asyncio.Task[None] | None = None
        self._again = False

    def wake(self, storage: Storage) -> None:
        if self._reader is not None and not self._reader.done():
            self._again = True
            return
        self._reader = asyncio.create_task(self._read(storage))

    async def _read(self, storage: Storage) -> None:
        """Read until the journal has nothing newer, also if told of more growth meanwhile."""
        while True:
            self._again = False
            try:
                entries = await storage.read_journal(self.user_id, self.head, PAGE)
            except Exception:
                log.exception("reading the journal of %s failed", self.user_id)
                return
            if entries:
                self.head = entries[-1].id
                for subscriber in list(self.subscribers):
                    subscriber._deliver(entries)
            if len(entries) < PAGE and not self._again:
                return


class UpdateHub:
    """Fan-out of journal growth to the subscribers of one server process."""

    def __init__(self, storage: Storage, buffer_limit: int) -> None:
        self.storage = storage
        self.buffer_limit = buffer_limit
        self._feeds: dict[str, _Feed] = {}
        self._starting: dict[str, asyncio.Future[_Feed]] = {}
        self._catching_up: set[Subscription] = set()
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._catching_up) + sum(len(feed.subscribers) for feed in self._feeds.values())

    def journal_grew(self, user_id: str) -> None:
        """A change for ``user_id`` committed: let its feed, if anyone is watching, read it."""
        feed = self._feeds.get(user_id)
        if feed is not None:
            feed.wake(self.storage)

    def wake_all(self) -> None:
        """Make every feed look for entries it may not have been told about (after a relay outage)."""
        for feed in self._feeds.values():
            feed.wake(self.storage)

    def close(self) -> None:
        """End every subscription (the server is shutting down) and refuse new ones."""
        self._closed = True
        for subscription in [*self._catching_up, *(s for feed in self._feeds.values() for s in feed.subscribers)]:
            subscription.close()

    async def subscribe(self, user_id: str, after: int | None) -> Subscription:
        """A subscription to the entries after ``after``, or to new ones only when it is None."""
        if self._closed:
            raise UnavailableError("The server is shutting down; reconnect shortly")
        if after is None:
            subscription = Subscription(self, user_id, 0)
            feed = await self._attach(subscription)
            subscription._last = feed.head
            subscription._feed = feed
            return subscription
        subscription = Subscription(self, user_id, after)
        self._catching_up.add(subscription)
        return subscription

    async def _attach(self, subscription: Subscription) -> _Feed:
        user_id = subscription._user_id
        feed = self._feeds.get(user_id)
        if feed is None:
            starting = self._starting.get(user_id)
            if starting is None:
                starting = asyncio.ensure_future(self._start_feed(user_id))
                self._starting[user_id] = starting
                starting.add_done_callback(lambda _: self._starting.pop(user_id, None))
            feed = await asyncio.shield(starting)
        self._catching_up.discard(subscription)
        if subscription.closed:
            return feed
        feed.subscribers.add(subscription)
        return feed

    async def _start_feed(self, user_id: str) -> _Feed:
        feed = _Feed(user_id, await self.storage.last_journal_id(user_id))
        self._feeds[user_id] = feed
        # A change may have committed while the head was read, with nobody
        # listening for it yet.
        feed.wake(self.storage)
        return feed

    def _forget(self, subscription: Subscription) -> None:
        self._catching_up.discard(subscription)

    def _detach(self, subscription: Subscription, feed: _Feed) -> None:
        feed.subscribers.discard(subscription)
        if not feed.subscribers and self._feeds.get(feed.user_id) is feed:
            del self._feeds[feed.user_id]
