"""Reading for many parents at once, for front ends that resolve nested fields.

A GraphQL query such as "the users, each with its mailboxes, each with its
newest messages" names many parents at every level. Fetching each parent's
children on its own would cost one storage call per parent; these functions
take every parent of one level and make one call for all of them, applying
the same rules (order, paging, limits) as the one-at-a-time functions.

Parents are records the caller already found through the core, so they exist
and belong where they say; results come back in the order of the parents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from merganser.errors import MerganserError
from merganser.resolvers import messages
from merganser.resolvers.addresses import AddressView, address_view
from merganser.resolvers.context import Core
from merganser.resolvers.mailboxes import display_order
from merganser.resolvers.messages import ListMessages, MessageDetails, message_page, message_page_query
from merganser.resolvers.paging import PageResult
from merganser.storage.base import Address, ApplicationPassword, Mailbox, MailboxCounters, Message, PageQuery, User

# A thread can grow long (a subject that recurs for weeks); what a thread
# shows is bounded so one message cannot pull in thousands of others.
MAX_THREAD_MESSAGES = 100


async def users(core: Core, user_ids: Sequence[str]) -> list[User | None]:
    """The users with these ids (None for one that does not exist)."""
    found = await core.storage.get_users(list(dict.fromkeys(user_ids)))
    return [found.get(user_id) for user_id in user_ids]


async def address_views(core: Core, addresses: Sequence[Address]) -> list[AddressView]:
    """Each address with its main flag, as ``addresses.get_address`` shows it (users looked up at once).

    An address whose user was deleted meanwhile is nobody's main address.
    """
    owners = await core.storage.get_users(list(dict.fromkeys(address.user for address in addresses)))
    return [
        address_view(address, owners[address.user]) if address.user in owners else AddressView(address, main=False)
        for address in addresses
    ]


async def user_addresses(core: Core, owners: Sequence[User]) -> list[list[AddressView]]:
    """Each user's addresses with their main flag, in the order ``addresses.list_user_addresses`` gives."""
    found = await core.storage.addresses_of_users(list(dict.fromkeys(user.id for user in owners)))
    return [[address_view(address, user) for address in found.get(user.id, [])] for user in owners]


async def user_asps(core: Core, user_ids: Sequence[str]) -> list[list[ApplicationPassword]]:
    """Each user's application-specific passwords, in the order ``asps.list_asps`` gives."""
    found = await core.storage.asps_of_users(list(dict.fromkeys(user_ids)))
    return [found.get(user_id, []) for user_id in user_ids]


async def mailboxes(core: Core, user_ids: Sequence[str]) -> list[list[Mailbox]]:
    """Each user's mailboxes, INBOX first as in a single user's listing."""
    found = await core.storage.mailboxes_of_users(list(dict.fromkeys(user_ids)))
    return [display_order(found.get(user_id, [])) for user_id in user_ids]


async def counters(core: Core, mailbox_ids: Sequence[str]) -> list[MailboxCounters]:
    """Total and unseen counts of each mailbox."""
    found = await core.storage.counters_of_mailboxes(list(dict.fromkeys(mailbox_ids)))
    return [found[mailbox_id] for mailbox_id in mailbox_ids]


async def message_pages(
    core: Core, listings: Sequence[tuple[str, str, ListMessages]]
) -> list[PageResult[Message] | MerganserError]:
    """A page of each (user id, mailbox id) listing, paged exactly like ``messages.list_messages``.

    A listing whose paging is invalid (a cursor of another listing, say) gets
    its error in its place, so that one bad cursor fails its own listing only.
    """
    queries: dict[int, PageQuery] = {}
    errors: dict[int, MerganserError] = {}
    for number, (_, mailbox_id, data) in enumerate(listings):
        try:
            queries[number] = message_page_query(mailbox_id, data)
        except MerganserError as error:
            errors[number] = error
    requests = [(listings[number][0], listings[number][1], query) for number, query in queries.items()]
    found = dict(zip(queries, await core.storage.list_messages_of_mailboxes(requests), strict=True))
    return [
        errors[number] if number in errors else message_page(mailbox_id, data, queries[number], found[number])
        for number, (_, mailbox_id, data) in enumerate(listings)
    ]


async def threads(core: Core, keys: Sequence[tuple[str, str]]) -> list[list[Message]]:
    """The messages of each (user id, thread id), oldest first, at most MAX_THREAD_MESSAGES of each."""
    found = await core.storage.thread_messages(list(dict.fromkeys(keys)), MAX_THREAD_MESSAGES)
    return [found.get(key, []) for key in keys]


async def details(core: Core, found: Sequence[Message]) -> list[MessageDetails | BaseException]:
    """What only each message's source tells, for messages the caller already found.

    Sources are read and parsed one per message, concurrently: parsing
    dominates, and the query cost limits how many messages one request may
    ask this of. A failure (a message deleted meanwhile) stays with its own
    message.
    """
    return await asyncio.gather(*(messages.details(core, message) for message in found), return_exceptions=True)
