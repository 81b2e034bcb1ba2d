"""Live updates over WebSockets: every journal entry of a user, or typed events of one kind.

Each subscription holds one subscription of the core's update hub and closes
it when the client completes the operation or goes away. Events come in
journal order; ``since`` replays everything after a journal id first, so a
client that was disconnected (or dropped for falling a whole buffer behind,
which ends the subscription with a ``SubscriberTooSlow`` error naming the last
id it got) resumes without losing anything.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Collection
from contextlib import aclosing
from typing import TypeVar

import strawberry
from strawberry import ID

from merganser.resolvers import updates
from merganser.schema.context import Info
from merganser.schema.types import MailboxEvent, MessageEvent, UpdateEvent
from merganser.storage.base import JournalEntry

E = TypeVar("E")


async def _events(
    info: Info,
    event: Callable[[JournalEntry], E],
    user: str,
    since: int | None,
    commands: Collection[str] | None = None,
    mailbox: str | None = None,
) -> AsyncGenerator[E, None]:
    """The core's entries as events; each one's journal id is kept, for shared subscriptions to resume from."""
    async with aclosing(updates.watch(info.context.core, user, since, commands, mailbox)) as entries:
        async for entry in entries:
            info.context.position = entry.id
            yield event(entry)


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Every change to the user's mailboxes and messages, in journal order.")
    async def updates(self, info: Info, user: ID, since: int | None = None) -> AsyncGenerator[UpdateEvent, None]:
        return _events(info, UpdateEvent.from_entry, user, since)

    @strawberry.subscription(description="Messages arriving (delivered, uploaded or moved in).")
    async def message_added(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MessageEvent, None]:
        return _events(info, MessageEvent.from_entry, user, since, updates.MESSAGE_ADDED, mailbox)

    @strawberry.subscription(description="Messages whose flags changed.")
    async def message_updated(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MessageEvent, None]:
        return _events(info, MessageEvent.from_entry, user, since, updates.MESSAGE_UPDATED, mailbox)

    @strawberry.subscription(description="Messages leaving a mailbox (deleted, expired or moved out).")
    async def message_deleted(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MessageEvent, None]:
        return _events(info, MessageEvent.from_entry, user, since, updates.MESSAGE_DELETED, mailbox)

    @strawberry.subscription(description="Mailboxes created, renamed or deleted.")
    async def mailbox_changed(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MailboxEvent, None]:
        return _events(info, MailboxEvent.from_entry, user, since, updates.MAILBOX_CHANGED, mailbox)
