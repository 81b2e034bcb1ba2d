"""Subscribing to a user's updates, and how an update looks on the wire.

The machinery that reads the journal and hands entries out lives in
``merganser.resolvers.hub``; this module holds the rules every front end
(SSE, GraphQL subscriptions) shares.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from typing import Any

from merganser.errors import ValidationError
from merganser.resolvers.context import Core
from merganser.resolvers.hub import Subscription
from merganser.resolvers.lookup import get_user
from merganser.resolvers.mailboxes import find_mailbox
from merganser.storage.base import JournalEntry

# What journal entries record, by the kinds of event front ends offer.
MESSAGE_ADDED = ("EXISTS",)
"""Delivered, uploaded or moved in."""
MESSAGE_UPDATED = ("FETCH",)
"""Flags changed."""
MESSAGE_DELETED = ("EXPUNGE",)
"""Deleted, expired or moved out."""
MAILBOX_CHANGED = ("CREATE", "RENAME", "DELETE")
COMMANDS = (*MESSAGE_ADDED, *MESSAGE_UPDATED, *MESSAGE_DELETED, *MAILBOX_CHANGED)


def event_payload(entry: JournalEntry) -> dict[str, Any]:
    """An entry as the updates stream shows it: ``command``, the ids it concerns, then its own data."""
    payload: dict[str, Any] = {"command": entry.command}
    if entry.mailbox is not None:
        payload["mailbox"] = entry.mailbox
    if entry.message is not None:
        payload["message"] = entry.message
    if entry.uid is not None:
        payload["uid"] = entry.uid
    if entry.modseq is not None:
        payload["modseq"] = entry.modseq
    payload.update(entry.data)
    return payload


async def subscribe(core: Core, user_id: str, since: int | None = None) -> Subscription:
    """Subscribe to a user's updates: every journal entry after ``since``, or from now on.

    The user must exist; ``since`` is a journal id the client saw before and
    cannot be ahead of the journal.
    """
    user = await get_user(core, user_id)
    if since is not None:
        if since < 0:
            raise ValidationError("since must be a journal id, 0 or more")
        if since > await core.storage.last_journal_id(user.id):
            raise ValidationError("since is ahead of this user's journal")
    return await core.updates.subscribe(user.id, since)


async def watch(
    core: Core,
    user_id: str,
    since: int | None = None,
    commands: Collection[str] | None = None,
    mailbox_id: str | None = None,
) -> AsyncGenerator[JournalEntry, None]:
    """The user's entries (as ``subscribe`` gives them) of these commands (all if None), of one mailbox if given.

    The mailbox must be the user's. Close the generator (``aclosing``) to end
    the hub subscription as soon as the client goes.
    """
    if mailbox_id is not None:
        await find_mailbox(core, user_id, mailbox_id)
    async with await subscribe(core, user_id, since) as subscription:
        async for entry in subscription:
            if (commands is None or entry.command in commands) and (mailbox_id is None or entry.mailbox == mailbox_id):
                yield entry
