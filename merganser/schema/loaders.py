"""The DataLoaders of one request: nested fields of many parents, fetched in one call per level.

Resolving ``users { mailboxes { total messages { thread } } }`` field by field
would fetch each user's mailboxes, each mailbox's counters and page and each
message's thread on its own. A DataLoader collects the keys every resolver of
one level asks for while the level runs and hands them to one function in
``merganser.resolvers.batches``, which makes one storage call for all of them.
Message bodies (``html``, ``text``, ``attachments``) are the exception: each
message's source is read and parsed on its own, concurrently, since parsing
is the cost and the query cost limit bounds how many a request may ask for.

Loaders are made per request, so their caches never outlive it. A WebSocket
connection runs many operations over time, so its loaders keep no cache at
all and only batch: an update event must never be shown with stale data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from functools import cached_property
from typing import TypeVar

from strawberry.dataloader import DataLoader

from merganser.resolvers import batches
from merganser.resolvers.addresses import AddressView
from merganser.resolvers.context import Core
from merganser.resolvers.messages import ListMessages, MessageDetails
from merganser.resolvers.paging import PageResult
from merganser.storage.base import ApplicationPassword, Mailbox, MailboxCounters, Message, User

K = TypeVar("K")
V = TypeVar("V")

ListingKey = tuple[str, str, ListMessages]
"""(user id, mailbox id, paging)"""
ThreadKey = tuple[str, str]
"""(user id, thread id)"""


class Loaders:
    """One DataLoader per kind of nested field, each made when first used."""

    def __init__(self, core: Core, cache: bool) -> None:
        self._core = core
        self._cache = cache

    def _loader(
        self,
        load: Callable[[Core, Sequence[K]], Awaitable[Sequence[V | BaseException]]],
        key: Callable[[K], Hashable] | None = None,
    ) -> DataLoader[K, V]:
        """A loader of ``load``; ``key`` makes a cache key of a key that is not hashable itself (a record)."""
        core = self._core

        async def load_fn(keys: list[K]) -> Sequence[V | BaseException]:
            return await load(core, keys)

        return DataLoader(load_fn=load_fn, cache=self._cache, cache_key_fn=key)

    @cached_property
    def users(self) -> DataLoader[str, User | None]:
        return self._loader(batches.users)

    @cached_property
    def addresses(self) -> DataLoader[User, list[AddressView]]:
        """A user's addresses, by user record (whose main address flags one of them)."""
        return self._loader(batches.user_addresses, lambda user: user.id)

    @cached_property
    def asps(self) -> DataLoader[str, list[ApplicationPassword]]:
        """A user's application-specific passwords, by user id."""
        return self._loader(batches.user_asps)

    @cached_property
    def mailboxes(self) -> DataLoader[str, list[Mailbox]]:
        """A user's mailboxes, by user id."""
        return self._loader(batches.mailboxes)

    @cached_property
    def counters(self) -> DataLoader[str, MailboxCounters]:
        """A mailbox's total and unseen counts, by mailbox id."""
        return self._loader(batches.counters)

    @cached_property
    def message_pages(self) -> DataLoader[ListingKey, PageResult[Message]]:
        return self._loader(batches.message_pages)

    @cached_property
    def threads(self) -> DataLoader[ThreadKey, list[Message]]:
        return self._loader(batches.threads)

    @cached_property
    def details(self) -> DataLoader[Message, MessageDetails]:
        """What only the message source tells (HTML, text, attachments), read and parsed once per message."""
        return self._loader(batches.details, lambda message: (message.user, message.id))
