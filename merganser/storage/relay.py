"""Journal growth relayed between server processes that share one store.

Storage tells listeners in its own process when a user's journal grew; servers
started side by side on one database also need to hear of each other's
changes. Each process publishes ``<origin> <user id>`` on one Redis pub/sub
channel and passes on what the others publish. Only the fact of a change
travels: subscribers always read the journal itself, so a lost or repeated
notice can delay an update but never lose or duplicate one. After the
connection to Redis drops, every local feed is told to look at the journal
again once it is back, for whatever changed meanwhile. Closing publishes
what is still queued first, so the other servers hear of this one's last
changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from uuid import uuid4

import redis.asyncio
import redis.exceptions

log = logging.getLogger(__name__)

CHANNEL = "merganser:journal"
RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
FAILURES = (redis.exceptions.RedisError, OSError)
# How long closing waits to publish the notices still queued.
CLOSE_TIMEOUT = 2.0


class RelayError(ConnectionError):
    """Redis could not be reached when the server started."""


class RedisRelay:
    """Publishes local journal growth and hands on the growth other processes publish."""

    def __init__(
        self, url: str, on_remote: Callable[[str], None], on_resync: Callable[[], None], channel: str = CHANNEL
    ) -> None:
        self.url = url
        self.channel = channel
        self._on_remote = on_remote
        self._on_resync = on_resync
        self._origin = uuid4().hex.encode()
        self._client: redis.asyncio.Redis | None = None
        self._pending: set[str] = set()
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect and subscribe; raises RelayError if Redis does not answer."""
        self._client = redis.asyncio.from_url(self.url)
        subscribed = asyncio.get_running_loop().create_future()
        try:
            await self._client.ping()
        except FAILURES as error:
            await self._client.aclose()
            raise RelayError(f"cannot reach Redis at {self.url}: {error}") from None
        self._tasks = [asyncio.create_task(self._listen(subscribed)), asyncio.create_task(self._publish())]
        try:
            await subscribed
        except RelayError:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop relaying, after one last attempt, bounded by CLOSE_TIMEOUT, to publish the queued notices.

        Without it the other servers' subscribers would not hear of this
        process's last commits until some later change to the same users.
        """
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is None:
            return
        if self._pending:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._send(self._pending)
            except (TimeoutError, *FAILURES) as error:
                reason = str(error) or "timed out"
                log.warning("could not publish the last %d updates to Redis: %s", len(self._pending), reason)
        await self._client.aclose()

    def journal_grew(self, user_id: str) -> None:
        """The journal listener: queue a notice; notices close together go out in one round trip."""
        self._pending.add(user_id)
        self._ready.set()

    async def _publish(self) -> None:
        assert self._client is not None
        failures = 0
        while True:
            await self._ready.wait()
            self._ready.clear()
            users, self._pending = self._pending, set()
            try:
                await self._send(users)
            except asyncio.CancelledError:
                # Closing: ``close`` publishes them, perhaps again, which is harmless.
                self._pending |= users
                raise
            except FAILURES as error:
                if not failures:
                    log.warning("cannot publish updates to Redis (%s); retrying", error)
                self._pending |= users
                self._ready.set()
                await asyncio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
                failures += 1
            else:
                if failures:
                    log.info("publishing updates to Redis again")
                failures = 0

    async def _send(self, users: set[str]) -> None:
        """Publish one notice per user, all in one round trip."""
        assert self._client is not None
        async with self._client.pipeline(transaction=False) as pipe:
            for user_id in users:
                pipe.publish(self.channel, self._origin + b" " + user_id.encode())
            await pipe.execute()

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        assert self._client is not None
        failures = 0
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    if not subscribed.done():
                        subscribed.set_result(None)
                    if failures:
                        log.info("receiving updates from Redis again")
                        self._on_resync()
                        failures = 0
                    async for message in pubsub.listen():
                        self._receive(message)
            except FAILURES as error:
                if not failures:
                    log.warning("lost the Redis update channel (%s); reconnecting", error)
                failures += 1
                with contextlib.suppress(asyncio.InvalidStateError):
                    subscribed.set_exception(RelayError(f"cannot subscribe at {self.url}: {error}"))
                await asyncio.sleep(RETRY_DELAYS[min(failures - 1, len(RETRY_DELAYS) - 1)])

    def _receive(self, message: dict[str, object]) -> None:
        data = message.get("data")
        if message.get("type") != "message" or not isinstance(data, bytes):
            return
        origin, _, user_id = data.partition(b" ")
        if origin != self._origin and user_id:
            self._on_remote(user_id.decode(errors="replace"))
