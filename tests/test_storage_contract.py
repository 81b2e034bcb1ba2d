"""The storage contract: every operation of ``Storage``, run on each backend.

The ``storage`` fixture is parametrized, so each test runs once on SQLite and
once on MongoDB (FerretDB unless MERGANSER_TEST_MONGODB_URL names a server).
Records are built by the factories below; ids are ObjectId strings, which sort
in creation order, and times are truncated to milliseconds (what MongoDB keeps).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite
import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient

from merganser.storage.base import (
    Address,
    ApplicationPassword,
    AuthLogEntry,
    DuplicateKeyError,
    JournalEntry,
    JournalEvent,
    Mailbox,
    MailboxCounters,
    Message,
    PageQuery,
    Slice,
    Storage,
    User,
)

# Factories


def oid() -> str:
    return str(ObjectId())


def now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def make_user(username: str = "alice", *, id: str | None = None, **fields: Any) -> User:
    values: dict[str, Any] = dict(
        id=id or oid(),
        username=username,
        name=f"{username.title()} Example",
        password_hash="$2b$12$" + "x" * 53,
        address=f"{username.lower()}@example.com",
        language="en",
        quota=1 << 30,
        retention=0,
        recipients=2000,
        forwards=2000,
        created=now_ms(),
    )
    values.update(fields)
    return User(**values)


def make_address(user: User | str, address: str | None = None, **fields: Any) -> Address:
    user_id = user if isinstance(user, str) else user.id
    if address is None:
        assert isinstance(user, User)
        address = user.address
    values: dict[str, Any] = dict(id=oid(), user=user_id, address=address, addrview=address.lower(), created=now_ms())
    values.update(fields)
    return Address(**values)


def make_mailbox(user: User | str, path: str, **fields: Any) -> Mailbox:
    values: dict[str, Any] = dict(
        id=oid(),
        user=user if isinstance(user, str) else user.id,
        path=path,
        special_use=None,
        subscribed=True,
        retention=0,
        uid_validity=int(now_ms().timestamp()),
        uid_next=1,
        modify_index=0,
        created=now_ms(),
    )
    values.update(fields)
    return Mailbox(**values)


DEFAULT_MAILBOXES = (("INBOX", None), ("Junk", "\\Junk"), ("Sent Mail", "\\Sent"), ("Trash", "\\Trash"))


def default_mailboxes(user: User) -> list[Mailbox]:
    return [make_mailbox(user, path, special_use=use) for path, use in DEFAULT_MAILBOXES]


async def new_user(storage: Storage, username: str = "alice", **fields: Any) -> tuple[User, Address, list[Mailbox]]:
    user = make_user(username, **fields)
    address = make_address(user)
    mailboxes = default_mailboxes(user)
    await storage.create_user(user, address, mailboxes)
    return user, address, mailboxes


def make_asp(user: User, description: str = "mail app", **fields: Any) -> ApplicationPassword:
    values: dict[str, Any] = dict(
        id=oid(),
        user=user.id,
        description=description,
        scopes=["imap", "smtp"],
        password_hash="$2b$12$" + "y" * 53,
        created=now_ms(),
    )
    values.update(fields)
    return ApplicationPassword(**values)


def make_authlog(user: User | None, *, expires: datetime, **fields: Any) -> AuthLogEntry:
    values: dict[str, Any] = dict(
        id=oid(),
        user=user.id if user else None,
        action="authentication",
        result="success",
        created=now_ms(),
        expires=expires,
    )
    values.update(fields)
    return AuthLogEntry(**values)


def make_message(mailbox: Mailbox, uid: int, size: int, flags: list[str] | None = None) -> Message:
    return Message(
        id=oid(),
        user=mailbox.user,
        mailbox=mailbox.id,
        uid=uid,
        thread=oid(),
        size=size,
        idate=now_ms(),
        flags=list(flags or []),
        meta={"subject": f"message {uid}"},
    )


def ids(records: list[Any]) -> list[str]:
    return [record.id for record in records]


async def all_users(storage: Storage) -> Slice[User]:
    return await storage.list_users(None, PageQuery(limit=1000))


async def journal_tail(storage: Storage, user_id: str) -> int:
    """The id of the user's newest journal entry, 0 if there is none."""
    entries = await storage.read_journal(user_id, 0, 10_000)
    return entries[-1].id if entries else 0


# Inserting messages directly (the interface has no insert-message method yet)


async def insert_messages(storage_url: str, messages: list[Message]) -> None:
    """Store message rows/documents with the backend's own driver."""
    if storage_url.startswith("sqlite:///"):
        async with aiosqlite.connect(storage_url.removeprefix("sqlite:///")) as db:
            await db.execute("PRAGMA busy_timeout = 10000")
            await db.executemany(
                "INSERT INTO messages (id, user, mailbox, uid, thread, size, idate, flags, seen, expires, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.id,
                        m.user,
                        m.mailbox,
                        m.uid,
                        m.thread,
                        m.size,
                        int(m.idate.timestamp() * 1000),
                        json.dumps(m.flags),
                        int("\\Seen" in m.flags),
                        int(m.expires.timestamp() * 1000) if m.expires else None,
                        json.dumps(m.meta),
                    )
                    for m in messages
                ],
            )
            await db.commit()
        return
    client: AsyncMongoClient = AsyncMongoClient(storage_url)
    try:
        await client.get_default_database()["messages"].insert_many(
            [
                {
                    "_id": m.id,
                    "user": m.user,
                    "mailbox": m.mailbox,
                    "uid": m.uid,
                    "thread": m.thread,
                    "size": m.size,
                    "idate": m.idate,
                    "flags": m.flags,
                    "expires": m.expires,
                    "meta": m.meta,
                }
                for m in messages
            ]
        )
    finally:
        await client.close()


# Users


async def test_create_user_round_trips_every_field(storage: Storage) -> None:
    user = make_user(
        "Alice.Smith",
        name="Alice Smith",
        language="et",
        quota=5_000_000,
        retention=86_400_000,
        recipients=100,
        forwards=50,
        forward="elsewhere@example.net",
        target_url="https://hooks.example.net/in",
        storage_used=1234,
        disabled=True,
        activated=False,
        twofa_enabled=True,
        twofa_seed="JBSWY3DPEHPK3PXP",
        twofa_pending_seed="KRSXG5CTMVRXEZLU",
        twofa_last_step=55_000_000,
    )
    address = make_address(user)
    mailboxes = default_mailboxes(user)
    await storage.create_user(user, address, mailboxes)

    assert await storage.get_user(user.id) == user
    assert await storage.find_user_by_username("Alice.Smith") == user
    assert await storage.find_user_by_username("alice.smith") == user
    assert await storage.find_user_by_username("ALICE.SMITH") == user
    assert await storage.find_user_by_username("alice") is None
    assert await storage.get_user(oid()) is None

    assert await storage.find_address(address.addrview) == address
    assert await storage.list_mailboxes(user.id) == mailboxes


async def test_create_user_defaults_round_trip(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "bob")
    stored = await storage.get_user(user.id)
    assert stored == user
    assert stored is not None
    assert (stored.forward, stored.target_url, stored.twofa_seed, stored.twofa_pending_seed) == (None,) * 4
    assert (stored.storage_used, stored.twofa_last_step) == (0, 0)
    assert (stored.disabled, stored.activated, stored.twofa_enabled) == (False, True, False)


async def test_duplicate_username_stores_nothing(storage: Storage) -> None:
    first, _, _ = await new_user(storage, "bob")
    before = await all_users(storage)

    clash = make_user("bob", address="other@example.com")
    clash_address = make_address(clash)
    with pytest.raises(DuplicateKeyError) as error:
        await storage.create_user(clash, clash_address, default_mailboxes(clash))
    assert error.value.key == "username"

    after = await all_users(storage)
    assert after.total == before.total == 1
    assert ids(after.items) == [first.id]
    assert await storage.get_user(clash.id) is None
    assert await storage.find_address(clash_address.addrview) is None
    assert await storage.get_address(clash_address.id) is None
    assert await storage.list_mailboxes(clash.id) == []
    assert await storage.find_user_by_username("bob") == first


async def test_duplicate_username_differing_in_case(storage: Storage) -> None:
    await new_user(storage, "bob")
    clash = make_user("BoB", address="bob2@example.com")
    with pytest.raises(DuplicateKeyError) as error:
        await storage.create_user(clash, make_address(clash), [])
    assert error.value.key == "username"
    assert await storage.get_user(clash.id) is None


async def test_duplicate_address_stores_no_user(storage: Storage) -> None:
    _, first_address, _ = await new_user(storage, "bob")

    clash = make_user("carol", address=first_address.address)
    clash_address = make_address(clash)
    clash_mailboxes = default_mailboxes(clash)
    with pytest.raises(DuplicateKeyError) as error:
        await storage.create_user(clash, clash_address, clash_mailboxes)
    assert error.value.key == "address"

    assert await storage.get_user(clash.id) is None
    assert await storage.find_user_by_username("carol") is None
    assert await storage.get_address(clash_address.id) is None
    assert await storage.list_mailboxes(clash.id) == []
    assert (await all_users(storage)).total == 1
    assert await storage.find_address(first_address.addrview) == first_address
    # The username is free again after the failed attempt.
    retry = make_user("carol")
    await storage.create_user(retry, make_address(retry), [])
    assert await storage.find_user_by_username("carol") == retry


async def test_concurrent_creation_with_one_username(storage: Storage) -> None:
    users = [make_user("olga", address=f"olga{n}@example.com") for n in range(10)]
    results = await asyncio.gather(
        *(storage.create_user(user, make_address(user), default_mailboxes(user)) for user in users),
        return_exceptions=True,
    )
    assert [r for r in results if r is not None and not isinstance(r, DuplicateKeyError)] == []
    assert [r.key for r in results if isinstance(r, DuplicateKeyError)] == ["username"] * 9
    (winner,) = [user for user, r in zip(users, results, strict=True) if r is None]
    assert ids((await all_users(storage)).items) == [winner.id]
    assert await storage.find_user_by_username("olga") == winner
    assert (await storage.search_addresses("olga", PageQuery(limit=20))).total == 1
    for user in users:
        assert len(await storage.list_mailboxes(user.id)) == (4 if user is winner else 0)


async def test_concurrent_creation_with_one_address(storage: Storage) -> None:
    users = [make_user(f"pete{n}", address="pete@example.com") for n in range(10)]
    results = await asyncio.gather(
        *(storage.create_user(user, make_address(user), default_mailboxes(user)) for user in users),
        return_exceptions=True,
    )
    assert [r for r in results if r is not None and not isinstance(r, DuplicateKeyError)] == []
    assert [r.key for r in results if isinstance(r, DuplicateKeyError)] == ["address"] * 9
    (winner,) = [user for user, r in zip(users, results, strict=True) if r is None]
    assert ids((await all_users(storage)).items) == [winner.id]
    address = await storage.find_address("pete@example.com")
    assert address is not None and address.user == winner.id
    for user in users:
        assert (await storage.find_user_by_username(user.username) is not None) == (user is winner)
        assert len(await storage.list_mailboxes(user.id)) == (4 if user is winner else 0)


async def test_list_users_filters_case_insensitively(storage: Storage) -> None:
    users = {name: (await new_user(storage, name))[0] for name in ("anna", "Bob", "HANNAH", "joanna", "zed")}

    found = await storage.list_users("ANN", PageQuery(limit=10))
    assert ids(found.items) == [users["anna"].id, users["HANNAH"].id, users["joanna"].id]
    assert (found.more, found.total) == (False, 3)

    found = await storage.list_users("bo", PageQuery(limit=10))
    assert found.items == [users["Bob"]]
    assert (found.more, found.total) == (False, 1)

    found = await storage.list_users("nobody", PageQuery(limit=10))
    assert (found.items, found.more, found.total) == ([], False, 0)

    everyone = await storage.list_users(None, PageQuery(limit=10))
    assert ids(everyone.items) == [user.id for user in users.values()]
    assert everyone.total == 5


async def test_list_users_filter_is_literal(storage: Storage) -> None:
    dotted, _, _ = await new_user(storage, "jo.ann")
    await new_user(storage, "joxann")
    found = await storage.list_users("O.A", PageQuery(limit=10))
    assert (found.items, found.total) == ([dotted], 1)
    found = await storage.list_users(".*", PageQuery(limit=10))
    assert (found.items, found.total) == ([], 0)


async def test_list_users_pages_forward_and_backward(storage: Storage) -> None:
    users = [(await new_user(storage, f"user{n}"))[0] for n in range(5)]
    u = ids(users)

    page = await storage.list_users(None, PageQuery(limit=2))
    assert (ids(page.items), page.more, page.total) == (u[0:2], True, 5)
    page = await storage.list_users(None, PageQuery(limit=2, after=u[1]))
    assert (ids(page.items), page.more, page.total) == (u[2:4], True, 5)
    page = await storage.list_users(None, PageQuery(limit=2, after=u[3]))
    assert (ids(page.items), page.more, page.total) == (u[4:5], False, 5)
    page = await storage.list_users(None, PageQuery(limit=2, after=u[4]))
    assert (page.items, page.more, page.total) == ([], False, 5)

    page = await storage.list_users(None, PageQuery(limit=2, before=u[4]))
    assert (ids(page.items), page.more, page.total) == (u[2:4], True, 5)
    page = await storage.list_users(None, PageQuery(limit=2, before=u[2]))
    assert (ids(page.items), page.more, page.total) == (u[0:2], False, 5)
    page = await storage.list_users(None, PageQuery(limit=2, before=u[1]))
    assert (ids(page.items), page.more, page.total) == (u[0:1], False, 5)

    # Paging with a filter keeps the filter's total.
    page = await storage.list_users("USER", PageQuery(limit=3, after=u[0]))
    assert (ids(page.items), page.more, page.total) == (u[1:4], True, 5)


async def test_list_users_paging_is_stable_while_users_are_added(storage: Storage) -> None:
    # Ids made up front sort in this order; originals take the even ones, and
    # users added between page fetches take odd ones, landing among them.
    slots = [oid() for _ in range(11)]
    originals = [(await new_user(storage, f"orig{n}", id=slots[2 * n + 1]))[0] for n in range(5)]
    added_names = iter(f"new{n}" for n in range(10))

    async def add(slot: int) -> None:
        await new_user(storage, next(added_names), id=slots[slot])

    seen: list[str] = []
    page = await storage.list_users(None, PageQuery(limit=2))
    seen += ids(page.items)
    await add(0)  # before everything fetched so far
    await add(4)  # between orig1 and orig2, i.e. still ahead of the cursor
    while page.more:
        page = await storage.list_users(None, PageQuery(limit=2, after=page.items[-1].id))
        seen += ids(page.items)
        if len(seen) < 6:
            await add(2)  # behind the cursor
    assert len(seen) == len(set(seen)), f"repeated users: {seen}"
    assert [i for i in seen if i in ids(originals)] == ids(originals)
    assert slots[4] in seen and slots[0] not in seen and slots[2] not in seen

    # And backward, from the last original towards the first.
    seen = [originals[-1].id]
    page = Slice([originals[-1]], True, 0)
    first = True
    while page.more:
        page = await storage.list_users(None, PageQuery(limit=2, before=page.items[0].id))
        seen = ids(page.items) + seen
        if first:
            await add(10)  # after everything: behind a backward cursor
            await add(6)  # between orig2 and orig3
            first = False
    assert len(seen) == len(set(seen)), f"repeated users: {seen}"
    assert [i for i in seen if i in ids(originals)] == ids(originals)
    assert slots[10] not in seen


async def test_update_user(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "dave")
    changes = {
        "name": "David",
        "quota": 42,
        "disabled": True,
        "activated": False,
        "forward": "dave@example.org",
        "twofa_enabled": True,
        "twofa_seed": "SEED",
        "twofa_pending_seed": None,
        "password_hash": "$2b$12$new",
    }
    assert await storage.update_user(user.id, changes) is True
    assert await storage.get_user(user.id) == replace(user, **changes)

    # Setting a field to its current value is still an existing user.
    assert await storage.update_user(user.id, {"name": "David"}) is True
    assert await storage.update_user(oid(), {"name": "Nobody"}) is False
    assert (await all_users(storage)).total == 1


async def test_update_user_username_changes_lookup(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "erin")
    assert await storage.update_user(user.id, {"username": "Erin2"}) is True
    assert await storage.find_user_by_username("erin") is None
    found = await storage.find_user_by_username("ERIN2")
    assert found is not None and found.id == user.id and found.username == "Erin2"


async def test_update_user_to_a_taken_username(storage: Storage) -> None:
    first, _, _ = await new_user(storage, "ruth")
    second, _, _ = await new_user(storage, "saul")
    with pytest.raises(DuplicateKeyError) as error:
        await storage.update_user(second.id, {"username": "RUTH"})
    assert error.value.key == "username"
    assert await storage.get_user(second.id) == second
    assert await storage.find_user_by_username("ruth") == first


async def test_claim_twofa_step_only_moves_forward(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "frank")
    assert await storage.claim_twofa_step(user.id, 100) is True
    assert await storage.claim_twofa_step(user.id, 100) is False
    assert await storage.claim_twofa_step(user.id, 99) is False
    assert await storage.claim_twofa_step(user.id, 101) is True
    assert await storage.claim_twofa_step(user.id, 150) is True
    assert await storage.claim_twofa_step(user.id, 120) is False
    stored = await storage.get_user(user.id)
    assert stored is not None and stored.twofa_last_step == 150
    assert await storage.claim_twofa_step(oid(), 1000) is False


async def test_claim_twofa_step_concurrently_once(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "grace", twofa_last_step=500)
    results = await asyncio.gather(*(storage.claim_twofa_step(user.id, 501) for _ in range(30)))
    assert results.count(True) == 1
    assert results.count(False) == 29
    stored = await storage.get_user(user.id)
    assert stored is not None and stored.twofa_last_step == 501


async def test_claim_twofa_step_concurrently_with_several_steps(storage: Storage) -> None:
    # Tokens of neighbouring steps presented at once (a slow client retrying
    # next to a fast one), in several rounds to give races room to show.
    user, _, _ = await new_user(storage, "hugo", twofa_last_step=500)
    for base in range(500, 540, 5):
        steps = [base + 1, base + 2, base + 3, base + 4, base + 5] * 10
        results = await asyncio.gather(*(storage.claim_twofa_step(user.id, step) for step in steps))
        claimed = sorted(step for step, result in zip(steps, results, strict=True) if result)
        # Each step is single-use, and the newest one is always claimed by someone.
        assert claimed == sorted(set(claimed)), f"steps claimed more than once: {claimed}"
        assert base + 5 in claimed
        stored = await storage.get_user(user.id)
        assert stored is not None and stored.twofa_last_step == base + 5


async def test_claim_twofa_step_follows_the_stored_last_step(storage: Storage) -> None:
    # The user's twofa_last_step is "the last one": setting it back (as when
    # two-factor authentication is set up again) makes older steps claimable.
    user, _, _ = await new_user(storage, "iris")
    assert await storage.claim_twofa_step(user.id, 700) is True
    assert await storage.update_user(user.id, {"twofa_last_step": 0}) is True
    assert await storage.claim_twofa_step(user.id, 700) is True
    assert await storage.claim_twofa_step(user.id, 700) is False
    stored = await storage.get_user(user.id)
    assert stored is not None and stored.twofa_last_step == 700


# Addresses


async def test_addresses_add_get_find_list_delete(storage: Storage) -> None:
    user, main, _ = await new_user(storage, "heidi")
    other, other_main, _ = await new_user(storage, "ivan")
    alias = make_address(user, "Heidi.Alias@Example.com")
    await storage.add_address(alias)

    assert await storage.get_address(alias.id) == alias
    assert await storage.find_address("heidi.alias@example.com") == alias
    assert await storage.find_address("missing@example.com") is None
    assert await storage.get_address(oid()) is None
    assert sorted(await storage.list_user_addresses(user.id), key=lambda a: a.id) == [main, alias]
    assert await storage.list_user_addresses(other.id) == [other_main]
    assert await storage.list_user_addresses(oid()) == []

    assert await storage.delete_address(other.id, alias.id) is False
    assert await storage.get_address(alias.id) == alias
    assert await storage.delete_address(user.id, alias.id) is True
    assert await storage.get_address(alias.id) is None
    assert await storage.find_address(alias.addrview) is None
    assert await storage.delete_address(user.id, alias.id) is False
    assert await storage.list_user_addresses(user.id) == [main]


async def test_duplicate_addrview_is_refused(storage: Storage) -> None:
    user, main, _ = await new_user(storage, "judy")
    clash = make_address(user, "JUDY@example.com")
    assert clash.addrview == main.addrview
    with pytest.raises(DuplicateKeyError) as error:
        await storage.add_address(clash)
    assert error.value.key == "address"
    assert await storage.get_address(clash.id) is None
    assert await storage.list_user_addresses(user.id) == [main]


async def test_internationalized_address_round_trips(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "andris")
    address = make_address(user, "Андрис@уайлддак.орг", addrview="андрис@уайлддак.орг")
    await storage.add_address(address)
    assert await storage.get_address(address.id) == address
    assert await storage.find_address("андрис@уайлддак.орг") == address
    found = await storage.search_addresses("уайлддак", PageQuery(limit=10))
    assert (found.items, found.more, found.total) == ([address], False, 1)


async def test_search_addresses_with_paging(storage: Storage) -> None:
    user, main, _ = await new_user(storage, "kim")
    team = [make_address(user, f"team{n}@example.org") for n in range(5)]
    for address in team:
        await storage.add_address(address)
    await storage.add_address(make_address(user, "someone@example.net"))
    t = ids(team)

    page = await storage.search_addresses("team", PageQuery(limit=2))
    assert (page.items, page.more, page.total) == (team[0:2], True, 5)
    page = await storage.search_addresses("team", PageQuery(limit=2, after=t[1]))
    assert (ids(page.items), page.more, page.total) == (t[2:4], True, 5)
    page = await storage.search_addresses("team", PageQuery(limit=2, after=t[3]))
    assert (ids(page.items), page.more, page.total) == (t[4:5], False, 5)
    page = await storage.search_addresses("team", PageQuery(limit=2, before=t[2]))
    assert (ids(page.items), page.more, page.total) == (t[0:2], False, 5)
    page = await storage.search_addresses("team", PageQuery(limit=2, before=t[4]))
    assert (ids(page.items), page.more, page.total) == (t[2:4], True, 5)

    page = await storage.search_addresses("example.org", PageQuery(limit=10))
    assert (ids(page.items), page.total) == (t, 5)
    page = await storage.search_addresses(None, PageQuery(limit=10))
    assert page.total == 7 and ids(page.items)[0] == main.id
    page = await storage.search_addresses("nothing-like-this", PageQuery(limit=10))
    assert (page.items, page.more, page.total) == ([], False, 0)


async def test_search_addresses_is_literal(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "lou")
    plain = make_address(user, "ab-cd@example.org")
    tagged = make_address(user, "ab+cd.x@example.org")
    other = make_address(user, "abxcdxx@example.org")
    for address in (plain, tagged, other):
        await storage.add_address(address)
    assert (await storage.search_addresses("b-c", PageQuery(limit=10))).items == [plain]
    assert (await storage.search_addresses("b+cd.x", PageQuery(limit=10))).items == [tagged]
    assert (await storage.search_addresses("cd.x", PageQuery(limit=10))).items == [tagged]
    assert (await storage.search_addresses("[a-z]", PageQuery(limit=10))).total == 0


# Application-specific passwords


async def test_asps_add_list_delete(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "leo")
    other, _, _ = await new_user(storage, "mia")
    first = make_asp(user, "phone", scopes=["imap"])
    second = make_asp(user, "laptop", scopes=["*"])
    theirs = make_asp(other, "tablet")
    for asp in (first, second, theirs):
        await storage.add_asp(asp)

    assert await storage.list_asps(user.id) == [first, second]
    assert await storage.list_asps(other.id) == [theirs]
    assert await storage.list_asps(oid()) == []

    assert await storage.delete_asp(other.id, first.id) is False
    assert await storage.list_asps(user.id) == [first, second]
    assert await storage.delete_asp(user.id, first.id) is True
    assert await storage.delete_asp(user.id, first.id) is False
    assert await storage.list_asps(user.id) == [second]
    assert await storage.list_asps(other.id) == [theirs]


# Authentication log


async def test_authlog_lists_newest_first_without_expired(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "nina")
    other, _, _ = await new_user(storage, "oscar")
    now = now_ms()
    live = now + timedelta(days=30)
    dead = now - timedelta(seconds=5)

    entries: list[AuthLogEntry] = []
    for n in range(5):
        entry = make_authlog(
            user,
            expires=live,
            result="success" if n % 2 else "fail",
            ip=f"192.0.2.{n}",
            protocol="IMAP",
            scope="imap",
            asp=oid() if n == 2 else None,
            username="nina",
        )
        await storage.add_authlog(entry)
        entries.append(entry)
        if n in (1, 3):  # expired ones interleaved
            await storage.add_authlog(make_authlog(user, expires=dead))
    await storage.add_authlog(make_authlog(other, expires=live))
    await storage.add_authlog(make_authlog(other, expires=dead))
    await storage.add_authlog(make_authlog(None, expires=live, username="ghost", result="fail"))
    newest = entries[::-1]
    e = ids(newest)

    page = await storage.list_authlog(user.id, now, PageQuery(limit=2, descending=True))
    assert (page.items, page.more, page.total) == (newest[0:2], True, 5)
    page = await storage.list_authlog(user.id, now, PageQuery(limit=2, after=e[1], descending=True))
    assert (ids(page.items), page.more, page.total) == (e[2:4], True, 5)
    page = await storage.list_authlog(user.id, now, PageQuery(limit=2, after=e[3], descending=True))
    assert (ids(page.items), page.more, page.total) == (e[4:5], False, 5)
    page = await storage.list_authlog(user.id, now, PageQuery(limit=2, before=e[4], descending=True))
    assert (ids(page.items), page.more, page.total) == (e[2:4], True, 5)
    page = await storage.list_authlog(user.id, now, PageQuery(limit=2, before=e[2], descending=True))
    assert (ids(page.items), page.more, page.total) == (e[0:2], False, 5)

    oldest = await storage.list_authlog(user.id, now, PageQuery(limit=10))
    assert (oldest.items, oldest.more, oldest.total) == (entries, False, 5)
    theirs = await storage.list_authlog(other.id, now, PageQuery(limit=10))
    assert theirs.total == 1 and len(theirs.items) == 1
    # Seen from after the live entries expire, nothing is left.
    later = await storage.list_authlog(user.id, live + timedelta(seconds=1), PageQuery(limit=10))
    assert (later.items, later.more, later.total) == ([], False, 0)


async def test_purge_authlog_removes_only_expired(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "pat")
    now = now_ms()
    kept = [make_authlog(user, expires=now + timedelta(hours=1)) for _ in range(3)]
    for entry in kept:
        await storage.add_authlog(entry)
    for expires in (now - timedelta(hours=1), now - timedelta(seconds=1)):
        await storage.add_authlog(make_authlog(user, expires=expires))
    await storage.add_authlog(make_authlog(None, expires=now - timedelta(minutes=1), username="ghost"))

    assert await storage.purge_authlog(now) == 3
    assert await storage.purge_authlog(now) == 0
    # Expired entries are gone even for a reader that looks from the past.
    page = await storage.list_authlog(user.id, now - timedelta(days=1), PageQuery(limit=10))
    assert (page.items, page.total) == (kept, 3)
    assert await storage.purge_authlog(now + timedelta(hours=2)) == 3
    page = await storage.list_authlog(user.id, now - timedelta(days=1), PageQuery(limit=10))
    assert (page.items, page.total) == ([], 0)


# Counters


async def test_concurrent_increments_hand_out_every_value_once(storage: Storage) -> None:
    expires = now_ms() + timedelta(hours=1)
    values = await asyncio.gather(*(storage.increment_counter("auth:fail:1", expires) for _ in range(100)))
    assert sorted(values) == list(range(1, 101))
    assert await storage.get_counter("auth:fail:1", now_ms()) == 100
    assert await storage.get_counter("auth:fail:2", now_ms()) == 0
    assert await storage.increment_counter("auth:fail:2", expires) == 1
    assert await storage.get_counter("auth:fail:1", now_ms()) == 100


async def test_expired_counter_reads_zero_and_restarts(storage: Storage) -> None:
    now = now_ms()
    assert await storage.increment_counter("k", now + timedelta(hours=1)) == 1
    assert await storage.increment_counter("k", now + timedelta(hours=1)) == 2
    # Seen from after its expiry the counter is gone.
    assert await storage.get_counter("k", now + timedelta(hours=2)) == 0

    # A counter whose window has already passed starts over.
    assert await storage.increment_counter("old", now - timedelta(seconds=1)) == 1
    assert await storage.get_counter("old", now_ms()) == 0
    assert await storage.increment_counter("old", now + timedelta(hours=1)) == 1
    assert await storage.increment_counter("old", now + timedelta(hours=1)) == 2
    assert await storage.get_counter("old", now_ms()) == 2


async def test_purge_counters(storage: Storage) -> None:
    now = now_ms()
    await storage.increment_counter("a", now - timedelta(minutes=1))
    await storage.increment_counter("b", now - timedelta(seconds=1))
    await storage.increment_counter("c", now + timedelta(hours=1))
    await storage.increment_counter("c", now + timedelta(hours=1))
    assert await storage.purge_counters(now) == 2
    assert await storage.purge_counters(now) == 0
    assert await storage.get_counter("c", now) == 2
    assert await storage.increment_counter("a", now + timedelta(hours=1)) == 1
    assert await storage.purge_counters(now + timedelta(hours=2)) == 2
    assert await storage.get_counter("c", now) == 0


# Mailboxes


def create_event(mailbox: Mailbox) -> JournalEvent:
    return JournalEvent("CREATE", mailbox=mailbox.id, data={"path": mailbox.path})


async def test_create_get_list_mailboxes(storage: Storage) -> None:
    user, _, defaults = await new_user(storage, "quinn")
    other, _, _ = await new_user(storage, "rita")
    archive = make_mailbox(user, "Archive/2024", retention=3_600_000, subscribed=False, uid_next=7, modify_index=3)
    await storage.create_mailbox(archive, create_event(archive))

    assert await storage.get_mailbox(user.id, archive.id) == archive
    assert (await storage.get_mailbox(user.id, archive.id)).name == "2024"  # type: ignore[union-attr]
    assert await storage.get_mailbox(other.id, archive.id) is None
    assert await storage.get_mailbox(user.id, oid()) is None

    boxes = await storage.list_mailboxes(user.id)
    assert [box.path for box in boxes] == ["Archive/2024", "INBOX", "Junk", "Sent Mail", "Trash"]
    assert boxes == [archive, *defaults]
    assert [box.path for box in await storage.list_mailboxes(other.id)] == ["INBOX", "Junk", "Sent Mail", "Trash"]
    assert await storage.list_mailboxes(oid()) == []


async def test_duplicate_mailbox_path(storage: Storage) -> None:
    user, _, defaults = await new_user(storage, "sam")
    other, _, _ = await new_user(storage, "tom")
    tail = await journal_tail(storage, user.id)

    clash = make_mailbox(user, "INBOX")
    with pytest.raises(DuplicateKeyError) as error:
        await storage.create_mailbox(clash, create_event(clash))
    assert error.value.key == "path"
    assert await storage.get_mailbox(user.id, clash.id) is None
    assert await storage.list_mailboxes(user.id) == defaults
    assert await storage.read_journal(user.id, tail, 100) == []

    # Paths are unique per user only.
    theirs = make_mailbox(other, "Projects")
    mine = make_mailbox(user, "Projects")
    await storage.create_mailbox(theirs, create_event(theirs))
    await storage.create_mailbox(mine, create_event(mine))
    assert await storage.get_mailbox(user.id, mine.id) == mine
    assert await storage.get_mailbox(other.id, theirs.id) == theirs


async def test_concurrent_creation_of_one_path(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "tess")
    tail = await journal_tail(storage, user.id)
    boxes = [make_mailbox(user, "Shared") for _ in range(10)]
    results = await asyncio.gather(
        *(storage.create_mailbox(box, create_event(box)) for box in boxes), return_exceptions=True
    )
    assert [r for r in results if r is not None and not isinstance(r, DuplicateKeyError)] == []
    assert [r.key for r in results if isinstance(r, DuplicateKeyError)] == ["path"] * 9
    (winner,) = [box for box, r in zip(boxes, results, strict=True) if r is None]
    assert [box.id for box in await storage.list_mailboxes(user.id) if box.path == "Shared"] == [winner.id]
    assert [entry.mailbox for entry in await storage.read_journal(user.id, tail, 100)] == [winner.id]


async def test_rename_mailboxes(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "uma")
    work = make_mailbox(user, "Work")
    reports = make_mailbox(user, "Work/Reports")
    for box in (work, reports):
        await storage.create_mailbox(box, create_event(box))

    await storage.rename_mailboxes(
        user.id,
        [(work.id, "Jobs"), (reports.id, "Jobs/Reports")],
        [JournalEvent("RENAME", mailbox=work.id, data={"path": "Jobs"})],
    )
    assert await storage.get_mailbox(user.id, work.id) == replace(work, path="Jobs")
    assert await storage.get_mailbox(user.id, reports.id) == replace(reports, path="Jobs/Reports")
    paths = [box.path for box in await storage.list_mailboxes(user.id)]
    assert paths == ["INBOX", "Jobs", "Jobs/Reports", "Junk", "Sent Mail", "Trash"]

    # The old paths are free again.
    again = make_mailbox(user, "Work")
    await storage.create_mailbox(again, create_event(again))
    assert await storage.get_mailbox(user.id, again.id) == again


async def test_rename_onto_a_path_the_same_call_frees(storage: Storage) -> None:
    # Moving "Lists" under itself: the parent takes the child's old path.
    user, _, _ = await new_user(storage, "ugo")
    parent = make_mailbox(user, "Lists")
    child = make_mailbox(user, "Lists/Lists")
    for box in (parent, child):
        await storage.create_mailbox(box, create_event(box))
    await storage.rename_mailboxes(
        user.id,
        [(parent.id, "Lists/Lists"), (child.id, "Lists/Lists/Lists")],
        [JournalEvent("RENAME", mailbox=parent.id, data={"path": "Lists/Lists"})],
    )
    assert await storage.get_mailbox(user.id, parent.id) == replace(parent, path="Lists/Lists")
    assert await storage.get_mailbox(user.id, child.id) == replace(child, path="Lists/Lists/Lists")


async def test_rename_onto_a_taken_path_changes_nothing(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "vera")
    work = make_mailbox(user, "Work")
    await storage.create_mailbox(work, create_event(work))
    before = await storage.list_mailboxes(user.id)
    tail = await journal_tail(storage, user.id)

    with pytest.raises(DuplicateKeyError) as error:
        await storage.rename_mailboxes(
            user.id, [(work.id, "Trash")], [JournalEvent("RENAME", mailbox=work.id, data={"path": "Trash"})]
        )
    assert error.value.key == "path"
    assert await storage.list_mailboxes(user.id) == before
    assert await storage.read_journal(user.id, tail, 100) == []


async def test_rename_clash_after_a_good_rename(storage: Storage, storage_url: str) -> None:
    user, _, _ = await new_user(storage, "walt")
    work = make_mailbox(user, "Work")
    play = make_mailbox(user, "Play")
    for box in (work, play):
        await storage.create_mailbox(box, create_event(box))
    before = await storage.list_mailboxes(user.id)
    tail = await journal_tail(storage, user.id)

    with pytest.raises(DuplicateKeyError) as error:
        await storage.rename_mailboxes(
            user.id,
            [(work.id, "Jobs"), (play.id, "INBOX")],
            [JournalEvent("RENAME", mailbox=work.id, data={"path": "Jobs"})],
        )
    assert error.value.key == "path"
    assert await storage.get_mailbox(user.id, play.id) == play
    # Only the embedded backend promises to roll the first rename back.
    if storage_url.startswith("sqlite:"):
        assert await storage.list_mailboxes(user.id) == before
        assert await storage.read_journal(user.id, tail, 100) == []


async def test_update_mailbox(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "xena")
    other, _, _ = await new_user(storage, "yuri")

    assert await storage.update_mailbox(user.id, inbox.id, {"retention": 86_400_000}) is True
    assert await storage.get_mailbox(user.id, inbox.id) == replace(inbox, retention=86_400_000)
    assert await storage.update_mailbox(user.id, inbox.id, {"subscribed": False, "retention": 0}) is True
    assert await storage.get_mailbox(user.id, inbox.id) == replace(inbox, subscribed=False, retention=0)
    # Setting the current value again still finds the mailbox.
    assert await storage.update_mailbox(user.id, inbox.id, {"retention": 0}) is True

    assert await storage.update_mailbox(user.id, oid(), {"retention": 5}) is False
    assert await storage.update_mailbox(other.id, inbox.id, {"retention": 5}) is False
    assert await storage.get_mailbox(user.id, inbox.id) == replace(inbox, subscribed=False, retention=0)


async def test_delete_mailbox(storage: Storage) -> None:
    user, _, defaults = await new_user(storage, "zoe")
    other, _, _ = await new_user(storage, "adam")
    old = make_mailbox(user, "Old")
    await storage.create_mailbox(old, create_event(old))
    tail = await journal_tail(storage, user.id)

    assert await storage.delete_mailbox(user.id, oid(), JournalEvent("DELETE", mailbox="x")) == -1
    assert await storage.delete_mailbox(other.id, old.id, JournalEvent("DELETE", mailbox=old.id)) == -1
    assert await storage.read_journal(user.id, tail, 100) == []
    assert await storage.get_mailbox(user.id, old.id) == old

    assert await storage.delete_mailbox(user.id, old.id, JournalEvent("DELETE", mailbox=old.id)) == 0
    assert await storage.get_mailbox(user.id, old.id) is None
    assert await storage.list_mailboxes(user.id) == defaults
    assert await storage.delete_mailbox(user.id, old.id, JournalEvent("DELETE", mailbox=old.id)) == -1
    assert [entry.command for entry in await storage.read_journal(user.id, tail, 100)] == ["DELETE"]


async def test_mailbox_counters_of_empty_mailboxes(storage: Storage) -> None:
    user, _, defaults = await new_user(storage, "bea")
    counters = await storage.mailbox_counters(user.id, ids(defaults))
    assert counters == {box.id: MailboxCounters(0, 0) for box in defaults}
    assert await storage.mailbox_counters(user.id, []) == {}


# Messages (inserted with the backend's driver)


async def test_mailbox_counters_count_messages(storage: Storage, storage_url: str) -> None:
    user, _, (inbox, _, sent, trash) = await new_user(storage, "carl")
    other, _, (their_inbox, *_) = await new_user(storage, "dina")
    await insert_messages(
        storage_url,
        [
            make_message(inbox, 1, 100, ["\\Seen"]),
            make_message(inbox, 2, 200),
            make_message(inbox, 3, 300, ["\\Flagged"]),
            make_message(sent, 1, 50, ["\\Seen", "\\Answered"]),
            make_message(their_inbox, 1, 999),
        ],
    )
    counters = await storage.mailbox_counters(user.id, [inbox.id, sent.id, trash.id])
    assert counters == {
        inbox.id: MailboxCounters(total=3, unseen=2),
        sent.id: MailboxCounters(total=1, unseen=0),
        trash.id: MailboxCounters(total=0, unseen=0),
    }
    assert await storage.mailbox_counters(other.id, [their_inbox.id]) == {their_inbox.id: MailboxCounters(1, 1)}


async def test_recalculate_storage(storage: Storage, storage_url: str) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "emma", storage_used=5)
    other, _, (their_inbox, *_) = await new_user(storage, "finn")
    assert await storage.recalculate_storage(user.id) == 0
    await insert_messages(
        storage_url,
        [
            make_message(inbox, 1, 1000),
            make_message(inbox, 2, 2500, ["\\Seen"]),
            make_message(junk, 1, 40),
            make_message(their_inbox, 1, 7777),
        ],
    )
    assert await storage.recalculate_storage(user.id) == 3540
    stored = await storage.get_user(user.id)
    assert stored is not None and stored.storage_used == 3540
    assert await storage.recalculate_storage(other.id) == 7777
    stored = await storage.get_user(user.id)
    assert stored is not None and stored.storage_used == 3540


async def test_delete_mailbox_frees_its_messages(storage: Storage, storage_url: str) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "gus")
    other, _, (their_inbox, *_) = await new_user(storage, "hope")
    await insert_messages(
        storage_url,
        [
            make_message(inbox, 1, 1000),
            make_message(junk, 1, 300),
            make_message(junk, 2, 200, ["\\Seen"]),
            make_message(their_inbox, 1, 50),
        ],
    )
    assert await storage.recalculate_storage(user.id) == 1500
    assert await storage.recalculate_storage(other.id) == 50

    assert await storage.delete_mailbox(user.id, junk.id, JournalEvent("DELETE", mailbox=junk.id)) == 500
    stored = await storage.get_user(user.id)
    assert stored is not None and stored.storage_used == 1000
    assert await storage.recalculate_storage(user.id) == 1000  # the messages are gone too
    assert await storage.mailbox_counters(user.id, [inbox.id]) == {inbox.id: MailboxCounters(1, 1)}
    stored_other = await storage.get_user(other.id)
    assert stored_other is not None and stored_other.storage_used == 50


async def test_concurrent_deletion_frees_bytes_once(storage: Storage, storage_url: str) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "ivy")
    await insert_messages(storage_url, [make_message(inbox, 1, 100), make_message(junk, 1, 400)])
    assert await storage.recalculate_storage(user.id) == 500
    tail = await journal_tail(storage, user.id)

    results = await asyncio.gather(
        *(storage.delete_mailbox(user.id, junk.id, JournalEvent("DELETE", mailbox=junk.id)) for _ in range(10))
    )
    assert sorted(results) == [-1] * 9 + [400]
    stored = await storage.get_user(user.id)
    assert stored is not None and stored.storage_used == 100
    assert [entry.command for entry in await storage.read_journal(user.id, tail, 100)] == ["DELETE"]


# Journal


async def test_journal_records_mailbox_changes(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "ida")
    tail = await journal_tail(storage, user.id)
    started = now_ms() - timedelta(seconds=1)

    box = make_mailbox(user, "Lists")
    await storage.create_mailbox(box, JournalEvent("CREATE", mailbox=box.id, data={"path": "Lists"}))
    await storage.rename_mailboxes(
        user.id,
        [(box.id, "Lists/Old")],
        [JournalEvent("RENAME", mailbox=box.id, modseq=4, data={"path": "Lists/Old", "old": {"path": "Lists"}})],
    )
    message_id = oid()
    await storage.delete_mailbox(
        user.id, box.id, JournalEvent("DELETE", mailbox=box.id, message=message_id, uid=9, data={"tags": [1, "a"]})
    )

    entries = await storage.read_journal(user.id, tail, 100)
    assert [entry.command for entry in entries] == ["CREATE", "RENAME", "DELETE"]
    assert all(entry.id > tail for entry in entries)
    assert entries[0].id < entries[1].id < entries[2].id
    assert all(entry.user == user.id and entry.mailbox == box.id for entry in entries)
    assert [entry.data for entry in entries] == [
        {"path": "Lists"},
        {"path": "Lists/Old", "old": {"path": "Lists"}},
        {"tags": [1, "a"]},
    ]
    assert [(entry.message, entry.uid, entry.modseq) for entry in entries] == [
        (None, None, None),
        (None, None, 4),
        (message_id, 9, None),
    ]
    for entry in entries:
        assert isinstance(entry, JournalEntry)
        assert started <= entry.created <= now_ms() + timedelta(seconds=1)

    assert await storage.read_journal(user.id, entries[0].id, 100) == entries[1:]
    assert await storage.read_journal(user.id, entries[2].id, 100) == []
    assert await storage.read_journal(user.id, tail, 2) == entries[:2]
    assert await storage.read_journal(user.id, entries[0].id, 1) == entries[1:2]


async def test_journals_of_users_are_independent(storage: Storage) -> None:
    one, _, _ = await new_user(storage, "jack")
    two, _, _ = await new_user(storage, "kate")
    tail_one = await journal_tail(storage, one.id)
    tail_two = await journal_tail(storage, two.id)

    a = make_mailbox(one, "A")
    b = make_mailbox(two, "B")
    c = make_mailbox(one, "C")
    for box in (a, b, c):
        await storage.create_mailbox(box, create_event(box))

    mine = await storage.read_journal(one.id, tail_one, 100)
    theirs = await storage.read_journal(two.id, tail_two, 100)
    assert [(entry.user, entry.mailbox) for entry in mine] == [(one.id, a.id), (one.id, c.id)]
    assert [(entry.user, entry.mailbox) for entry in theirs] == [(two.id, b.id)]
    assert await storage.read_journal(oid(), 0, 100) == []


async def test_concurrent_mailbox_creation_gets_distinct_journal_ids(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "lena")
    tail = await journal_tail(storage, user.id)
    boxes = [make_mailbox(user, f"Folder {n:02}") for n in range(20)]
    await asyncio.gather(*(storage.create_mailbox(box, create_event(box)) for box in boxes))

    entries = await storage.read_journal(user.id, tail, 100)
    journal_ids = [entry.id for entry in entries]
    assert len(entries) == 20
    assert journal_ids == sorted(set(journal_ids))
    assert sorted(entry.mailbox for entry in entries) == sorted(ids(boxes))  # type: ignore[type-var]
    assert {entry.command for entry in entries} == {"CREATE"}
    assert len(await storage.list_mailboxes(user.id)) == 24
