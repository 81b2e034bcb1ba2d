"""Live updates over WebSockets: every journal entry of a user, or typed events of one kind.

Each subscription holds one subscription of the core's update hub and closes
it when the client completes the operation or goes away. Events come in
journal order; ``since`` replays everything after a journal id first, so a
client that was disconnected (or dropped for falling a whole buffer behind,
which ends the subscription with a ``SubscriberTooSlow`` error naming the last
id it got) resumes without losing anything.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from contextlib import aclosing

import strawberry
from strawberry import ID

from merganser.resolvers import mailboxes, updates
from merganser.schema.context import Info
from merganser.schema.types import MailboxEvent, MessageEvent, UpdateEvent
from merganser.storage.base import JournalEntry

MESSAGE_ADDED = ("EXISTS",)
MESSAGE_UPDATED = ("FETCH",)
MESSAGE_DELETED = ("EXPUNGE",)
MAILBOX_CHANGED = ("CREATE", "RENAME", "DELETE")


async def _entries(
    info: Info, user: str, since: int | None, commands: Collection[str] | None = None, mailbox: str | None = None
) -> AsyncGenerator[JournalEntry, None]:
    """The user's journal entries of the given commands (all if None), optionally of one mailbox.

    Callers close it with ``aclosing``, so the hub subscription ends as soon as the client does.
    """
    core = info.context.core
    if mailbox is not None:
        await mailboxes.find_mailbox(core, user, mailbox)
    async with await updates.subscribe(core, user, since) as subscription:
        async for entry in subscription:
            if (commands is None or entry.command in commands) and (mailbox is None or entry.mailbox == mailbox):
                info.context.position = entry.id
                yield entry


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Every change to the user's mailboxes and messages, in journal order.")
    async def updates(self, info: Info, user: ID, since: int | None = None) -> AsyncGenerator[UpdateEvent, None]:
        async with aclosing(_entries(info, user, since)) as entries:
            async for entry in entries:
                yield UpdateEvent.from_entry(entry)

    @strawberry.subscription(description="Messages arriving (delivered, uploaded or moved in).")
    async def message_added(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MessageEvent, None]:
        async with aclosing(_entries(info, user, since, MESSAGE_ADDED, mailbox)) as entries:
            async for entry in entries:
                yield MessageEvent.from_entry(entry)

    @strawberry.subscription(description="Messages whose flags changed.")
    async def message_updated(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MessageEvent, None]:
        async with aclosing(_entries(info, user, since, MESSAGE_UPDATED, mailbox)) as entries:
            async for entry in entries:
                yield MessageEvent.from_entry(entry)

    @strawberry.subscription(description="Messages leaving a mailbox (deleted, expired or moved out).")
    async def message_deleted(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MessageEvent, None]:
        async with aclosing(_entries(info, user, since, MESSAGE_DELETED, mailbox)) as entries:
            async for entry in entries:
                yield MessageEvent.from_entry(entry)

    @strawberry.subscription(description="Mailboxes created, renamed or deleted.")
    async def mailbox_changed(
        self, info: Info, user: ID, mailbox: ID | None = None, since: int | None = None
    ) -> AsyncGenerator[MailboxEvent, None]:
        async with aclosing(_entries(info, user, since, MAILBOX_CHANGED, mailbox)) as entries:
            async for entry in entries:
                yield MailboxEvent.from_entry(entry)
