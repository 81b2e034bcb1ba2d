"""No N+1: nested fields cost one storage call per level, however many parents there are.

The first tests count the calls the server's storage receives for one nested
query over a small and a larger set of users, mailboxes and messages. The
last ones check, on both backends, what of the storage interface the GraphQL
reads rely on and tests/test_storage_contract.py does not cover: batched
message listings answer as single listings do, and deleting a user leaves
nothing of it.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from gqlhelpers import Gql, core, create_user, mailbox_ids
from helpers import simple_message

from merganser.config import Settings
from merganser.resolvers import messages, users
from merganser.resolvers.context import Core
from merganser.resolvers.mailboxes import CreateMailbox, create_mailbox
from merganser.storage.base import PageQuery, Storage

NESTED = """
    query($prefix: String) {
        users(query: $prefix, first: 10) { nodes {
            username
            mailboxes {
                path total unseen
                messages(first: 3) { totalCount nodes { subject thread { id messages { subject } } } }
            }
        } }
    }
"""
UPLOAD = "mutation($u: ID!, $m: ID!, $raw: String!) { uploadMessage(user: $u, mailbox: $m, input: {raw: $raw}) { id } }"


def count_calls(storage: Storage) -> Counter[str]:
    """Wrap each public storage method of this instance so that its calls are counted."""
    calls: Counter[str] = Counter()
    for name, _ in inspect.getmembers(type(storage), inspect.iscoroutinefunction):
        if name.startswith("_"):
            continue
        method: Callable[..., Any] = getattr(storage, name)

        @functools.wraps(method)
        def counting(*args: Any, _name: str = name, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _method(*args, **kwargs)

        setattr(storage, name, counting)
    return calls


async def populate(graphql: Gql, prefix: str, user_count: int, messages_per_mailbox: int) -> None:
    for number in range(user_count):
        user = await create_user(graphql, f"{prefix}{number}")
        for path, mailbox in (await mailbox_ids(graphql, user["id"])).items():
            for index in range(messages_per_mailbox):
                raw = simple_message(f"{path} {index}").decode()
                await graphql.data(UPLOAD, u=user["id"], m=mailbox, raw=raw)


async def nested_calls(api: Any, graphql: Gql, prefix: str) -> tuple[Counter[str], dict[str, Any]]:
    calls = count_calls(core(api).storage)
    data = await graphql.data(NESTED, prefix=prefix)
    return calls, data


async def test_nested_query_costs_one_storage_call_per_level(api, graphql: Gql):
    await populate(graphql, "few", user_count=2, messages_per_mailbox=1)
    few, data = await nested_calls(api, graphql, "few")
    assert len(data["users"]["nodes"]) == 2
    inbox = data["users"]["nodes"][0]["mailboxes"][0]
    assert (inbox["path"], inbox["total"], inbox["unseen"], inbox["messages"]["totalCount"]) == ("INBOX", 1, 1, 1)
    assert inbox["messages"]["nodes"][0]["thread"]["messages"] == [{"subject": "INBOX 0"}]
    assert few == Counter(
        list_users=1, mailboxes_of_users=1, counters_of_mailboxes=1, list_messages_of_mailboxes=1, thread_messages=1
    )


async def test_the_number_of_calls_does_not_grow_with_the_data(make_api):
    from gqlhelpers import open_graphql

    counts = []
    for user_count, per_mailbox in ((1, 1), (4, 3)):
        api = await make_api()
        async with open_graphql(api) as graphql:
            prefix = f"round{user_count}x"
            await populate(graphql, prefix, user_count, per_mailbox)
            calls, data = await nested_calls(api, graphql, prefix)
        nodes = data["users"]["nodes"]
        assert len(nodes) == user_count
        assert all(len(mailbox["messages"]["nodes"]) == per_mailbox for user in nodes for mailbox in user["mailboxes"])
        counts.append(calls)
    assert counts[0] == counts[1]
    assert sum(counts[1].values()) == 5


async def test_account_fields_cost_one_call_each(api, graphql: Gql):
    for number in range(3):
        await create_user(graphql, f"acct{number}", address=f"acct{number}@example.com")
    calls = count_calls(core(api).storage)
    data = await graphql.data(
        '{ users(query: "acct") { nodes { username addresses { address main } applicationPasswords { id } } } }'
    )
    assert [(node["username"], node["addresses"]) for node in data["users"]["nodes"]] == [
        (f"acct{n}", [{"address": f"acct{n}@example.com", "main": True}]) for n in range(3)
    ]
    assert calls == Counter(list_users=1, addresses_of_users=1, asps_of_users=1)


async def test_message_bodies_read_only_their_sources(api, graphql: Gql):
    """The messages a page found are not looked up again: each costs the read of its source, nothing more."""
    await populate(graphql, "body", user_count=1, messages_per_mailbox=2)
    calls = count_calls(core(api).storage)
    data = await graphql.data(
        '{ users(query: "body") { nodes { mailboxes { path messages(first: 5) { nodes { subject text } } } } } }'
    )
    [user] = data["users"]["nodes"]
    bodies = [node["text"] for mailbox in user["mailboxes"] for node in mailbox["messages"]["nodes"]]
    assert len(bodies) == 2 * len(user["mailboxes"])
    assert all(text.strip() == "Hello there." for text in bodies)
    assert calls == Counter(
        list_users=1, mailboxes_of_users=1, list_messages_of_mailboxes=1, get_message_source=len(bodies)
    )


async def test_address_owners_are_fetched_at_once(api, graphql: Gql):
    for number in range(4):
        await create_user(graphql, f"owner{number}", address=f"owner{number}@example.com")
    calls = count_calls(core(api).storage)
    data = await graphql.data('{ addresses(query: "owner") { nodes { address main user { username } } } }')
    assert [node["user"]["username"] for node in data["addresses"]["nodes"]] == [f"owner{n}" for n in range(4)]
    assert all(node["main"] for node in data["addresses"]["nodes"])
    assert calls == Counter(search_addresses=1, get_users=2)


# The storage interface under the GraphQL reads, on both backends.


@pytest.fixture
def make_core(storage: Storage) -> Core:
    return Core(storage=storage, settings=Settings(bcrypt_rounds=4))


async def new_user(core: Core, name: str) -> str:
    user = await users.create_user(core, users.CreateUser.from_json({"username": name, "password": "secretpass"}))
    return user.id


async def add(core: Core, user_id: str, mailbox_id: str, subject: str, **headers: str) -> str:
    options = messages.MessageOptions.from_json({})
    stored = await messages.upload(core, user_id, mailbox_id, options, simple_message(subject, **headers))
    return stored.id


async def test_batched_listings_answer_like_single_listings(storage: Storage, make_core: Core):
    """``list_messages_of_mailboxes``: each page as ``list_messages`` gives it, whatever the paging.

    (The other batch reads are compared with single reads in tests/test_storage_contract.py.)
    """
    core = make_core
    alice, bob = await new_user(core, "alice"), await new_user(core, "bob")
    extra = await create_mailbox(core, bob, CreateMailbox.from_json({"path": "Aaa"}))
    inbox = {user: next(m.id for m in await storage.list_mailboxes(user) if m.path == "INBOX") for user in (alice, bob)}
    for index in range(5):
        await add(core, alice, inbox[alice], f"A{index}")
    await add(core, bob, extra.id, "B0")
    await storage.update_message(
        alice, (await storage.list_messages(alice, inbox[alice], PageQuery(1))).items[0].id, {"flags": ["\\Seen"]}
    )
    pages = [
        PageQuery(2),
        PageQuery(2, descending=True),
        PageQuery(2, after=2),
        PageQuery(2, after=4, descending=True),
        PageQuery(2, before=4),
        PageQuery(2, before=2, descending=True),
        PageQuery(10),
    ]
    listings = [(alice, inbox[alice], page) for page in pages] + [
        (bob, extra.id, PageQuery(3)),
        (bob, inbox[bob], PageQuery(3)),
    ]
    batched = await storage.list_messages_of_mailboxes(listings)
    for listing, page in zip(listings, batched, strict=True):
        single = await storage.list_messages(*listing)
        assert (page.items, page.more, page.total) == (single.items, single.more, single.total), listing
    assert [[message.uid for message in page.items] for page in batched] == [
        [1, 2],
        [5, 4],
        [3, 4],
        [3, 2],
        [2, 3],
        [4, 3],
        [1, 2, 3, 4, 5],
        [1],
        [],
    ]


async def test_delete_user(storage: Storage, make_core: Core):
    core = make_core
    alice, bob = await new_user(core, "alice"), await new_user(core, "bob")
    inbox = (await storage.list_mailboxes(alice))[0].id
    message = await add(core, alice, inbox, "Gone soon")
    bobs_inbox = (await storage.list_mailboxes(bob))[0].id
    kept = await add(core, bob, bobs_inbox, "Kept")
    assert await storage.delete_user(alice) is True
    assert await storage.get_user(alice) is None
    assert await storage.list_mailboxes(alice) == []
    assert await storage.list_user_addresses(alice) == []
    assert await storage.get_message(alice, message) is None
    assert await storage.get_message_source(alice, message) is None
    assert await storage.find_address("alice@localhost") is None
    assert await storage.read_journal(alice, 0, 10) == []
    assert (await storage.list_authlog(alice, datetime.now(UTC), PageQuery(10))).items == []
    assert await storage.delete_user(alice) is False
    assert (await storage.get_message(bob, kept)) is not None
    assert (await storage.get_user(bob)) is not None
