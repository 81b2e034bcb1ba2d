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

A feed exists only while it has subscribers: the last one to leave, however
it leaves (closed, dropped, cancelled while the feed was starting, or ended
because its user was deleted), takes the feed with it, so later changes to
that user cost no journal reads for nobody.
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
# Pauses between attempts to read a journal while storage keeps failing.
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


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
        "_from_now",
        "_hub",
        "_last",
        "_sink",
        "_user_id",
        "_waiter",
    )

    def __init__(self, hub: UpdateHub, user_id: str, after: int | None) -> None:
        self._hub = hub
        self._user_id = user_id
        self._from_now = after is None
        self._last = after or 0
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
                await self._hub._attach(self)
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

    def _join(self, feed: _Feed) -> None:
        """Take entries after the feed's head from the feed, from the moment it is joined.

        A subscriber from now on starts at that head; one catching up still
        reads the entries up to it from the journal.
        """
        self._feed = feed
        if self._from_now:
            self._last = feed.head
        else:
            self._backlog_until = feed.head

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
        """Read until the journal has nothing newer, also if told of more growth meanwhile.

        A failed read is tried again, after a pause that grows to a few
        seconds, for as long as anyone is subscribed: the entries it missed
        are committed, and no later notice may ever come to fetch them. Only
        the first failure of a run is logged with its traceback.
        """
        failures = 0
        while self.subscribers:
            self._again = False
            try:
                entries = await storage.read_journal(self.user_id, self.head, PAGE)
            except Exception as error:
                if failures:
                    log.warning("reading the journal of %s failed again: %s; retrying", self.user_id, error)
                else:
                    log.exception("reading the journal of %s failed; retrying", self.user_id)
                await asyncio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
                failures += 1
                continue
            if failures:
                log.info("reading the journal of %s again", self.user_id)
                failures = 0
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
        self._starting: dict[str, asyncio.Task[None]] = {}
        # Subscribers waiting for the feed of their user to start, by user id.
        self._joining: dict[str, set[Subscription]] = {}
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
        for subscription in self._subscriptions():
            subscription.close()

    def end_user(self, user_id: str) -> None:
        """End every subscription to ``user_id``, whose account was deleted, as ``close`` ends them all.

        Nothing will be added to a deleted user's journal, so their streams
        would otherwise stay open on heartbeats for ever. The last
        subscription to go takes the feed with it.
        """
        for subscription in self._subscriptions(user_id):
            subscription.close()

    def _subscriptions(self, user_id: str | None = None) -> list[Subscription]:
        """Every subscription of this hub, or of one user: catching up, waiting for a feed or fed."""
        everyone = [
            *self._catching_up,
            *(s for waiting in self._joining.values() for s in waiting),
            *(s for feed in self._feeds.values() for s in feed.subscribers),
        ]
        return [s for s in everyone if user_id is None or s.user_id == user_id]

    async def subscribe(self, user_id: str, after: int | None) -> Subscription:
        """A subscription to the entries after ``after``, or to new ones only when it is None."""
        if self._closed:
            raise UnavailableError("The server is shutting down; reconnect shortly")
        subscription = Subscription(self, user_id, after)
        if after is not None:
            self._catching_up.add(subscription)
            return subscription
        try:
            await self._attach(subscription)
        except BaseException:
            # Never handed out, so nobody else would close it.
            subscription.close()
            raise
        return subscription

    async def _attach(self, subscription: Subscription) -> None:
        """Join the feed of the subscription's user, starting one if there is none.

        Returns with the subscription joined, unless it was closed meanwhile.
        """
        user_id = subscription.user_id
        feed = self._feeds.get(user_id)
        if feed is not None:
            self._join(subscription, feed)
            return
        starting = self._starting.get(user_id)
        if starting is None:
            starting = self._starting[user_id] = asyncio.create_task(self._start_feed(user_id))
        joining = self._joining.setdefault(user_id, set())
        joining.add(subscription)
        try:
            # Shielded: other subscribers may be waiting for the same start.
            await asyncio.shield(starting)
        except BaseException:
            joining.discard(subscription)
            raise

    async def _start_feed(self, user_id: str) -> None:
        """Start the user's feed for those still waiting for it once its head is known; without them, none.

        The feed is registered and joined in one step, so no subscriber that
        went away meanwhile (cancelled or closed) can leave it behind with
        nobody to read for.
        """
        try:
            head = await self.storage.last_journal_id(user_id)
        finally:
            del self._starting[user_id]
            joining = self._joining.pop(user_id, set())
        if not joining:
            return
        feed = self._feeds[user_id] = _Feed(user_id, head)
        for subscription in joining:
            self._join(subscription, feed)
        # A change may have committed while the head was read, with nobody
        # listening for it yet.
        feed.wake(self.storage)

    def _join(self, subscription: Subscription, feed: _Feed) -> None:
        self._catching_up.discard(subscription)
        subscription._join(feed)
        feed.subscribers.add(subscription)

    def _forget(self, subscription: Subscription) -> None:
        self._catching_up.discard(subscription)
        self._joining.get(subscription.user_id, set()).discard(subscription)

    def _detach(self, subscription: Subscription, feed: _Feed) -> None:
        feed.subscribers.discard(subscription)
        if not feed.subscribers and self._feeds.get(feed.user_id) is feed:
            del self._feeds[feed.user_id]
