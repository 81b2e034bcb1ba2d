"""The storage contract: every operation of ``Storage``, run on each backend.

The ``storage`` fixture is parametrized, so each test runs once on SQLite and
once on MongoDB (FerretDB unless MERGANSER_TEST_MONGODB_URL names a server).
Records are built by the factories below; ids are ObjectId strings, which sort
in creation order, and times are truncated to milliseconds (what MongoDB keeps).
Messages are only ever created through ``add_message``, the real write path,
so every message test exercises how a backend allocates UIDs and counts.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from merganser.storage import storage_from_url
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
    OverQuotaError,
    PageQuery,
    SearchQuery,
    SearchText,
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


def make_message(mailbox: Mailbox, *, size: int = 100, flags: list[str] | None = None, **fields: Any) -> Message:
    """A message for ``mailbox``; uid and modseq are left for storage to assign."""
    values: dict[str, Any] = dict(
        id=oid(),
        user=mailbox.user,
        mailbox=mailbox.id,
        uid=0,
        modseq=0,
        thread=oid(),
        size=size,
        idate=now_ms(),
        flags=list(flags or []),
        summary={"subject": "A message", "from": {"address": "sender@example.com", "name": "Sender"}},
    )
    values.update(fields)
    return Message(**values)


def search_text(subject: str = "", contacts: str = "", body: str = "") -> SearchText:
    """Search text whose terms are exactly the casefolded words of the text, so
    a fulltext index over the text and a match on the terms agree."""
    terms = list(dict.fromkeys(re.findall(r"[^\W_]+", f"{subject} {contacts} {body}".casefold())))
    return SearchText(subject, contacts, body, lambda: terms)


async def add(
    storage: Storage,
    mailbox: Mailbox,
    *,
    raw: bytes | None = None,
    search: SearchText | None = None,
    quota: int | None = None,
    **fields: Any,
) -> Message:
    """Store a message through the API and check what comes back."""
    if raw is None:
        raw = os.urandom(fields.get("size", 100))
    fields.setdefault("size", len(raw))
    message = make_message(mailbox, **fields)
    stored = await storage.add_message(message, raw, search or search_text(), quota)
    assert stored is not None
    assert stored == replace(message, uid=stored.uid, modseq=stored.modseq)
    return stored


async def storage_used(storage: Storage, user_id: str) -> int:
    user = await storage.get_user(user_id)
    assert user is not None
    return user.storage_used


async def mailbox_of(storage: Storage, mailbox: Mailbox) -> Mailbox:
    stored = await storage.get_mailbox(mailbox.user, mailbox.id)
    assert stored is not None
    return stored


async def counters_of(storage: Storage, *mailboxes: Mailbox) -> list[tuple[int, int]]:
    """(total, unseen) of each mailbox, in the order given."""
    found = await storage.mailbox_counters(mailboxes[0].user, ids(list(mailboxes)))
    return [(found[box.id].total, found[box.id].unseen) for box in mailboxes]


async def uids(storage: Storage, mailbox: Mailbox) -> list[int]:
    page = await storage.list_messages(mailbox.user, mailbox.id, PageQuery(limit=10_000))
    return [message.uid for message in page.items]


def ids(records: list[Any]) -> list[str]:
    return [record.id for record in records]


async def all_users(storage: Storage) -> Slice[User]:
    return await storage.list_users(None, PageQuery(limit=1000))


async def journal_tail(storage: Storage, user_id: str) -> int:
    """The id of the user's newest journal entry, 0 if there is none."""
    entries = await storage.read_journal(user_id, 0, 10_000)
    return entries[-1].id if entries else 0


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


# Messages


def exists_view(entry: JournalEntry) -> tuple[Any, ...]:
    """What an EXISTS/FETCH/EXPUNGE entry says about a message, modseq checked against its id."""
    assert entry.modseq == entry.id, f"{entry.command} entry {entry.id} has modseq {entry.modseq}"
    return (entry.command, entry.mailbox, entry.message, entry.uid)


async def test_add_message_allocates_uids_and_journals(storage: Storage) -> None:
    user, _, (inbox, junk, sent, trash) = await new_user(storage, "abby")
    other, _, (their_inbox, *_) = await new_user(storage, "otto")
    tail = await journal_tail(storage, user.id)

    first = await add(storage, inbox, size=100, flags=["\\Seen"])
    second = await add(storage, inbox, size=200)
    third = await add(storage, inbox, size=300, flags=["\\Flagged", "\\Answered"])
    assert [first.uid, second.uid, third.uid] == [1, 2, 3]
    assert first.modseq < second.modseq < third.modseq

    entries = await storage.read_journal(user.id, tail, 100)
    assert [exists_view(entry) for entry in entries] == [
        ("EXISTS", inbox.id, message.id, message.uid) for message in (first, second, third)
    ]
    assert [entry.modseq for entry in entries] == [first.modseq, second.modseq, third.modseq]
    assert [(entry.data.get("flags"), entry.data.get("thread")) for entry in entries] == [
        (message.flags, message.thread) for message in (first, second, third)
    ]
    assert all(entry.user == user.id for entry in entries)

    assert await storage.get_mailbox(user.id, inbox.id) == replace(inbox, uid_next=4, modify_index=third.modseq)
    assert await storage.get_mailbox(user.id, junk.id) == junk
    assert await storage_used(storage, user.id) == 600
    assert await counters_of(storage, inbox, junk, sent, trash) == [(3, 2), (0, 0), (0, 0), (0, 0)]

    # UIDs are per mailbox; the journal and modseqs are per user.
    in_junk = await add(storage, junk, size=50, flags=["\\Seen"])
    assert in_junk.uid == 1 and in_junk.modseq > third.modseq
    assert await storage.get_mailbox(user.id, junk.id) == replace(junk, uid_next=2, modify_index=in_junk.modseq)
    theirs = await add(storage, their_inbox, size=7)
    assert theirs.uid == 1
    assert await storage_used(storage, user.id) == 650
    assert await storage_used(storage, other.id) == 7
    assert await counters_of(storage, inbox, junk) == [(3, 2), (1, 0)]
    assert await counters_of(storage, their_inbox) == [(1, 1)]

    for message in (first, second, third, in_junk):
        assert await storage.get_message(user.id, message.id) == message
    assert await storage.get_message(other.id, first.id) is None
    assert await storage.get_message_source(other.id, first.id) is None
    assert await storage.get_message(user.id, theirs.id) is None
    assert await storage.get_message(user.id, oid()) is None
    assert await storage.get_message_source(user.id, oid()) is None


async def test_message_round_trips_every_field(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "bert")
    idate = datetime(2024, 2, 29, 23, 59, 58, 789_000, tzinfo=UTC)
    expires = now_ms() + timedelta(days=30, milliseconds=321)
    summary = {
        "from": {"address": "zoë@example.com", "name": "Zoë Ünicode"},
        "to": [{"address": "bert@example.com", "name": ""}, {"address": "x@example.org", "name": "X"}],
        "cc": [],
        "subject": "Quarterly report — Q1 📈",
        "messageId": "<q1.report@example.com>",
        "date": "2024-02-29T23:59:58+00:00",
        "intro": "Numbers\tand\nnewlines",
        "attachments": True,
        "count": 3,
        "missing": None,
    }
    full = await add(
        storage,
        inbox,
        size=4321,
        idate=idate,
        flags=["\\Seen", "\\Flagged", "$Label1"],
        summary=summary,
        msgid="<q1.report@example.com>",
        subject_key="quarterly report — q1 📈",
        expires=expires,
        thread=oid(),
    )
    stored = await storage.get_message(user.id, full.id)
    assert stored == full
    assert stored is not None
    assert (stored.idate, stored.expires, stored.summary) == (idate, expires, summary)
    assert (stored.msgid, stored.subject_key, stored.size) == (full.msgid, full.subject_key, 4321)
    assert stored.flags == ["\\Seen", "\\Flagged", "$Label1"]

    bare = await add(storage, inbox, size=1, flags=[], summary={}, msgid=None, subject_key="", expires=None)
    stored = await storage.get_message(user.id, bare.id)
    assert stored == bare
    assert stored is not None
    assert (stored.flags, stored.summary, stored.msgid, stored.subject_key, stored.expires) == ([], {}, None, "", None)

    page = await storage.list_messages(user.id, inbox.id, PageQuery(limit=10))
    assert page.items == [full, bare]


async def test_message_source_is_kept_exactly(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "cleo")
    every_byte = bytes(range(256))
    big = b"From: a@example.com\r\nSubject: binary\r\n\r\n" + every_byte * (3 * 1024 * 1024 // 256)
    assert len(big) > 3 * 1024 * 1024
    tiny = b"\r\n"
    odd = b"\x00\n\r\xff.\r\n.\r\n"
    stored = [await add(storage, inbox, raw=raw) for raw in (big, tiny, odd)]
    assert [message.size for message in stored] == [len(big), 2, len(odd)]
    for message, raw in zip(stored, (big, tiny, odd), strict=True):
        assert await storage.get_message_source(user.id, message.id) == raw
    assert await storage_used(storage, user.id) == len(big) + 2 + len(odd)


async def test_concurrent_add_message_gets_every_uid_once(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "dora")
    tail = await journal_tail(storage, user.id)
    messages = [make_message(inbox, size=10 + n, flags=["\\Seen"] if n % 5 == 0 else []) for n in range(50)]
    results = await asyncio.gather(
        *(storage.add_message(message, os.urandom(message.size), search_text(), None) for message in messages)
    )
    assert all(result is not None for result in results)
    stored = [result for result in results if result is not None]
    assert sorted(message.uid for message in stored) == list(range(1, 51))
    assert len({message.modseq for message in stored}) == 50
    assert [message.id for message in stored] == ids(messages)

    entries = await storage.read_journal(user.id, tail, 1000)
    assert sorted(exists_view(entry) for entry in entries) == sorted(
        ("EXISTS", inbox.id, message.id, message.uid) for message in stored
    )
    assert {message.id: message.modseq for message in stored} == {entry.message: entry.modseq for entry in entries}

    assert await counters_of(storage, inbox) == [(50, 40)]
    assert await storage_used(storage, user.id) == sum(10 + n for n in range(50))
    mailbox = await mailbox_of(storage, inbox)
    assert (mailbox.uid_next, mailbox.modify_index) == (51, max(message.modseq for message in stored))
    assert await uids(storage, inbox) == list(range(1, 51))


async def test_uids_are_never_reused(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "egon")
    one, two, three = [await add(storage, inbox) for _ in range(3)]
    assert await storage.delete_messages(user.id, [three.id]) == three.size
    assert await uids(storage, inbox) == [1, 2]
    four = await add(storage, inbox)
    assert four.uid == 4
    assert await storage.delete_messages(user.id, [one.id, two.id, four.id]) == one.size + two.size + four.size
    assert await uids(storage, inbox) == []
    five = await add(storage, inbox)
    assert five.uid == 5
    assert (await mailbox_of(storage, inbox)).uid_next == 6
    assert await uids(storage, inbox) == [5]


async def test_add_message_over_quota_stores_nothing(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "fay", quota=1000)
    first = await add(storage, inbox, size=600, quota=1000)
    tail = await journal_tail(storage, user.id)
    mailbox = await mailbox_of(storage, inbox)

    refused = make_message(inbox, size=401)
    with pytest.raises(OverQuotaError):
        await storage.add_message(refused, b"x" * 401, search_text("Refused"), 1000)
    assert await storage.get_message(user.id, refused.id) is None
    assert await storage.get_message_source(user.id, refused.id) is None
    assert await storage_used(storage, user.id) == 600
    assert await counters_of(storage, inbox) == [(1, 1)]
    assert await storage.read_journal(user.id, tail, 100) == []
    assert (await mailbox_of(storage, inbox)).modify_index == mailbox.modify_index
    page = await storage.list_messages(user.id, inbox.id, PageQuery(limit=10))
    assert (ids(page.items), page.total) == ([first.id], 1)

    # Filling the quota exactly is allowed; one byte more is not.
    exact = await add(storage, inbox, size=400, quota=1000)
    assert await storage_used(storage, user.id) == 1000
    with pytest.raises(OverQuotaError):
        await storage.add_message(make_message(inbox, size=1), b"x", search_text(), 1000)
    assert await storage_used(storage, user.id) == 1000
    # Without a quota nothing is checked.
    extra = await add(storage, inbox, size=5, quota=None)
    assert await storage_used(storage, user.id) == 1005
    assert await counters_of(storage, inbox) == [(3, 3)]
    assert ids((await storage.list_messages(user.id, inbox.id, PageQuery(limit=10))).items) == [
        first.id,
        exact.id,
        extra.id,
    ]


async def test_concurrent_adds_stop_exactly_at_the_quota(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "gil", quota=1000)
    tail = await journal_tail(storage, user.id)
    messages = [make_message(inbox, size=100) for _ in range(20)]
    results = await asyncio.gather(
        *(storage.add_message(message, b"y" * 100, search_text(), 1000) for message in messages),
        return_exceptions=True,
    )
    stored = [result for result in results if isinstance(result, Message)]
    refused = [result for result in results if isinstance(result, OverQuotaError)]
    assert (len(stored), len(refused)) == (10, 10), results
    assert await storage_used(storage, user.id) == 1000
    assert await counters_of(storage, inbox) == [(10, 10)]
    assert len({message.uid for message in stored}) == 10
    page = await storage.list_messages(user.id, inbox.id, PageQuery(limit=100))
    assert (sorted(ids(page.items)), page.total) == (sorted(ids(stored)), 10)
    entries = await storage.read_journal(user.id, tail, 100)
    assert sorted(entry.message for entry in entries) == sorted(ids(stored))  # type: ignore[type-var]
    for message, result in zip(messages, results, strict=True):
        if isinstance(result, OverQuotaError):
            assert await storage.get_message(user.id, message.id) is None
            assert await storage.get_message_source(user.id, message.id) is None


async def test_add_message_to_a_deleted_mailbox(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "hal")
    other, _, (their_inbox, *_) = await new_user(storage, "ines")
    gone = make_mailbox(user, "Gone")
    await storage.create_mailbox(gone, create_event(gone))
    kept = await add(storage, inbox, size=70)
    assert await storage.delete_mailbox(user.id, gone.id, JournalEvent("DELETE", mailbox=gone.id)) == 0
    tail = await journal_tail(storage, user.id)

    message = make_message(gone, size=500)
    assert await storage.add_message(message, b"z" * 500, search_text("Lost"), None) is None
    assert await storage.add_message(make_message(gone, size=5), b"z" * 5, search_text(), 10_000) is None
    assert await storage.add_message(make_message(replace(inbox, id=oid())), b"q", search_text(), None) is None
    # Another user's mailbox is no mailbox of this user.
    assert (
        await storage.add_message(make_message(replace(their_inbox, user=user.id)), b"q", search_text(), None) is None
    )
    assert await uids(storage, their_inbox) == []
    assert await storage_used(storage, user.id) == 70
    assert await storage.get_message(user.id, message.id) is None
    assert await storage.get_message_source(user.id, message.id) is None
    assert await storage.read_journal(user.id, tail, 100) == []
    assert await storage.get_message(user.id, kept.id) == kept
    assert await counters_of(storage, inbox) == [(1, 1)]
    assert await counters_of(storage, their_inbox) == [(0, 0)]
    assert (await mailbox_of(storage, their_inbox)).uid_next == 1
    assert await storage_used(storage, other.id) == 0


async def test_add_message_racing_mailbox_deletion_leaves_no_bytes(storage: Storage) -> None:
    user, _, _ = await new_user(storage, "ike")
    doomed = make_mailbox(user, "Doomed")
    await storage.create_mailbox(doomed, create_event(doomed))
    messages = [make_message(doomed, size=10) for _ in range(10)]
    adds = [storage.add_message(message, b"d" * 10, search_text(), None) for message in messages]
    results = await asyncio.gather(
        *adds[:5], storage.delete_mailbox(user.id, doomed.id, JournalEvent("DELETE", mailbox=doomed.id)), *adds[5:]
    )
    # Each add lands before the deletion (and is freed by it) or after it (and
    # finds no mailbox): nothing stays charged or stored.
    freed = results[5]
    stored = [result for result in results[:5] + results[6:] if result is not None]
    assert isinstance(freed, int) and freed == 10 * len(stored)
    assert await storage_used(storage, user.id) == 0
    assert await storage.recalculate_storage(user.id) == 0
    for message in messages:
        assert await storage.get_message(user.id, message.id) is None


async def test_mailbox_counters_count_messages(storage: Storage) -> None:
    user, _, (inbox, _, sent, trash) = await new_user(storage, "carl")
    other, _, (their_inbox, *_) = await new_user(storage, "dina")
    await add(storage, inbox, size=100, flags=["\\Seen"])
    await add(storage, inbox, size=200)
    await add(storage, inbox, size=300, flags=["\\Flagged"])
    await add(storage, sent, size=50, flags=["\\Seen", "\\Answered"])
    await add(storage, their_inbox, size=999)
    counters = await storage.mailbox_counters(user.id, [inbox.id, sent.id, trash.id])
    assert counters == {
        inbox.id: MailboxCounters(total=3, unseen=2),
        sent.id: MailboxCounters(total=1, unseen=0),
        trash.id: MailboxCounters(total=0, unseen=0),
    }
    assert await storage.mailbox_counters(other.id, [their_inbox.id]) == {their_inbox.id: MailboxCounters(1, 1)}
    # Another user's mailbox counts as empty.
    assert await storage.mailbox_counters(other.id, [inbox.id]) == {inbox.id: MailboxCounters(0, 0)}


async def test_list_messages_pages_by_uid(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "jill")
    other, _, (their_inbox, *_) = await new_user(storage, "kurt")
    messages = [await add(storage, inbox, size=10 + n) for n in range(7)]
    in_junk = [await add(storage, junk), await add(storage, junk)]
    await add(storage, their_inbox)
    assert [message.uid for message in messages] == [1, 2, 3, 4, 5, 6, 7]
    m = {message.uid: message for message in messages}

    async def page(**query: Any) -> tuple[list[int], bool, int]:
        found = await storage.list_messages(user.id, inbox.id, PageQuery(**query))
        assert found.items == [m[item.uid] for item in found.items]
        return [item.uid for item in found.items], found.more, found.total

    assert await page(limit=3) == ([1, 2, 3], True, 7)
    assert await page(limit=3, after=3) == ([4, 5, 6], True, 7)
    assert await page(limit=3, after=6) == ([7], False, 7)
    assert await page(limit=3, after=7) == ([], False, 7)
    assert await page(limit=3, before=7) == ([4, 5, 6], True, 7)
    assert await page(limit=3, before=4) == ([1, 2, 3], False, 7)
    assert await page(limit=10) == ([1, 2, 3, 4, 5, 6, 7], False, 7)

    assert await page(limit=3, descending=True) == ([7, 6, 5], True, 7)
    assert await page(limit=3, after=5, descending=True) == ([4, 3, 2], True, 7)
    assert await page(limit=3, after=2, descending=True) == ([1], False, 7)
    assert await page(limit=3, before=4, descending=True) == ([7, 6, 5], False, 7)
    assert await page(limit=3, before=1, descending=True) == ([4, 3, 2], True, 7)

    # A gap left by a deletion is skipped, and the total follows.
    assert await storage.delete_messages(user.id, [m[4].id]) == m[4].size
    assert await page(limit=3, after=2) == ([3, 5, 6], True, 6)

    junk_page = await storage.list_messages(user.id, junk.id, PageQuery(limit=10))
    assert (junk_page.items, junk_page.more, junk_page.total) == (in_junk, False, 2)
    theirs = await storage.list_messages(other.id, inbox.id, PageQuery(limit=10))
    assert (theirs.items, theirs.more, theirs.total) == ([], False, 0)
    nowhere = await storage.list_messages(user.id, oid(), PageQuery(limit=10))
    assert (nowhere.items, nowhere.more, nowhere.total) == ([], False, 0)


async def search(storage: Storage, user_id: str, *terms: str, limit: int = 100, **query: Any) -> Slice[Message]:
    paging = {key: query.pop(key) for key in ("after", "before") if key in query}
    return await storage.search_messages(
        user_id, SearchQuery(list(terms), **query), PageQuery(limit=limit, descending=True, **paging)
    )


async def test_search_messages(storage: Storage) -> None:
    user, _, (inbox, junk, sent, trash) = await new_user(storage, "lola")
    other, _, (their_inbox, *_) = await new_user(storage, "max")
    texts = {
        "a": (inbox, search_text("Quarterly report", "Alice Adams", "Revenue grew in the third quarter")),
        "b": (inbox, search_text("Lunch on Friday", "Bob Brown", "Shall we discuss the quarterly report over lunch")),
        "c": (sent, search_text("Re: Quarterly report", "Carol Clark", "Thanks for the numbers")),
        "d": (junk, search_text("Quarterly report winner", "Spam Sender", "Claim your prize")),
        "e": (inbox, search_text("Holiday photos", "Alice Adams", "Pictures from the beach")),
    }
    found = {name: await add(storage, box, search=text) for name, (box, text) in texts.items()}
    theirs = await add(
        storage, their_inbox, search=search_text("Quarterly report", "Alice Adams", "quarterly report beach")
    )

    def names(page: Slice[Message]) -> list[str]:
        by_id = {message.id: name for name, message in found.items()}
        assert page.items == [found[by_id[item.id]] for item in page.items]
        return [by_id[item.id] for item in page.items]

    both = await search(storage, user.id, "quarterly", "report")
    assert (names(both), both.more, both.total) == (["d", "c", "b", "a"], False, 4)
    alone = await search(storage, user.id, "quarterly")
    assert (names(alone), alone.total) == (["d", "c", "b", "a"], 4)
    # Every term must be there, wherever it is (subject, contacts or body).
    assert names(await search(storage, user.id, "quarterly", "lunch")) == ["b"]
    assert names(await search(storage, user.id, "alice")) == ["e", "a"]
    assert names(await search(storage, user.id, "alice", "revenue")) == ["a"]
    assert names(await search(storage, user.id, "beach")) == ["e"]
    assert names(await search(storage, user.id, "numbers", "carol")) == ["c"]
    # Whole words only.
    assert names(await search(storage, user.id, "quarter")) == ["a"]
    nothing = await search(storage, user.id, "quarterly", "beach")
    assert (nothing.items, nothing.more, nothing.total) == ([], False, 0)
    assert (await search(storage, user.id, "zeppelin")).total == 0
    empty = await search(storage, user.id)
    assert (empty.items, empty.more, empty.total) == ([], False, 0)

    in_inbox = await search(storage, user.id, "quarterly", "report", mailbox=inbox.id)
    assert (names(in_inbox), in_inbox.total) == (["b", "a"], 2)
    assert names(await search(storage, user.id, "report", mailbox=sent.id)) == ["c"]
    assert (await search(storage, user.id, "report", mailbox=trash.id)).total == 0
    kept = await search(storage, user.id, "quarterly", "report", exclude=[junk.id, trash.id])
    assert (names(kept), kept.total) == (["c", "b", "a"], 3)
    assert names(await search(storage, user.id, "report", exclude=[junk.id, inbox.id])) == ["c"]

    # Newest first, paged by the keys the backend returns with each page.
    everything = await search(storage, user.id, "quarterly", "report")
    assert everything.keys is None or len(everything.keys) == 4
    keys = dict(zip(names(everything), everything.keys or [item.id for item in everything.items], strict=True))
    first = await search(storage, user.id, "quarterly", "report", limit=2)
    assert (names(first), first.more, first.total) == (["d", "c"], True, 4)
    second = await search(storage, user.id, "quarterly", "report", limit=2, after=keys["c"])
    assert (names(second), second.more, second.total) == (["b", "a"], False, 4)
    back = await search(storage, user.id, "quarterly", "report", limit=2, before=keys["b"])
    assert (names(back), back.more, back.total) == (["d", "c"], False, 4)
    middle = await search(storage, user.id, "quarterly", "report", limit=2, after=keys["d"])
    assert (names(middle), middle.more, middle.total) == (["c", "b"], True, 4)
    assert keys["a"] < keys["b"] < keys["c"] < keys["d"]

    # Other users' messages are never found, nor theirs ours.
    mine = await search(storage, user.id, "quarterly", "report", "beach")
    assert (mine.items, mine.total) == ([], 0)
    their = await search(storage, other.id, "quarterly")
    assert (their.items, their.total) == ([theirs], 1)
    assert (await search(storage, other.id, "lunch")).total == 0
    assert (await search(storage, user.id, "quarterly", mailbox=their_inbox.id)).total == 0


async def test_search_follows_moves_flags_and_deletions(storage: Storage) -> None:
    user, _, (inbox, junk, _, trash) = await new_user(storage, "nell")
    keep = await add(storage, inbox, search=search_text("Garden party", "Nell", "Bring lemonade"))
    move = await add(storage, inbox, search=search_text("Garden tools", "Ned", "Rake and spade"))
    drop = await add(storage, junk, search=search_text("Garden offer", "Spam", "Cheap spade"))

    flagged = await storage.update_message(user.id, keep.id, {"flags": ["\\Seen"]})
    moved = await storage.move_message(user.id, move.id, trash.id, None)
    assert flagged is not None and moved is not None
    assert await storage.delete_messages(user.id, [drop.id]) == drop.size

    everywhere = await search(storage, user.id, "garden")
    assert (everywhere.items, everywhere.total) == ([moved, flagged], 2)
    assert (await search(storage, user.id, "spade")).items == [moved]
    assert (await search(storage, user.id, "garden", mailbox=inbox.id)).items == [flagged]
    assert (await search(storage, user.id, "garden", mailbox=trash.id)).items == [moved]
    assert (await search(storage, user.id, "garden", exclude=[trash.id])).items == [flagged]
    assert (await search(storage, user.id, "cheap")).total == 0


async def test_find_thread(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "olga")
    other, _, (their_inbox, *_) = await new_user(storage, "pete")
    now = now_ms()
    since = now - timedelta(days=30)
    older = await add(
        storage, inbox, msgid="<one@example.com>", subject_key="project plan", idate=now - timedelta(days=10)
    )
    newer = await add(
        storage, junk, msgid="<two@example.com>", subject_key="project plan", idate=now - timedelta(days=2)
    )
    ancient = await add(storage, inbox, msgid=None, subject_key="old topic", idate=now - timedelta(days=40))
    await add(storage, inbox, msgid=None, subject_key="", idate=now)
    theirs = await add(storage, their_inbox, msgid="<theirs@example.com>", subject_key="their topic", idate=now)
    assert len({older.thread, newer.thread, ancient.thread, theirs.thread}) == 4

    # By Message-ID, any of several, whatever the subject and however old.
    assert await storage.find_thread(user.id, ["<missing@example.com>", "<one@example.com>"], "", since) == older.thread
    assert await storage.find_thread(user.id, ["<two@example.com>"], "unrelated", since) == newer.thread
    assert await storage.find_thread(user.id, ["<one@example.com>"], "project plan", since) == older.thread
    assert await storage.find_thread(user.id, ["<one@example.com>"], "", now + timedelta(days=1)) == older.thread

    # By subject within the window: the newest such message.
    assert await storage.find_thread(user.id, [], "project plan", since) == newer.thread
    assert await storage.find_thread(user.id, ["<missing@example.com>"], "project plan", since) == newer.thread
    assert await storage.find_thread(user.id, [], "project plan", now - timedelta(days=2)) == newer.thread
    assert await storage.find_thread(user.id, [], "project plan", now - timedelta(days=1)) is None
    assert await storage.find_thread(user.id, [], "old topic", since) is None
    assert await storage.find_thread(user.id, [], "old topic", now - timedelta(days=41)) == ancient.thread
    assert await storage.find_thread(user.id, [], "project", since) is None
    # An empty subject key never matches, not even messages without a subject.
    assert await storage.find_thread(user.id, [], "", now - timedelta(days=365)) is None
    assert await storage.find_thread(user.id, ["<missing@example.com>"], "", since) is None

    # Never another user's thread.
    assert await storage.find_thread(user.id, ["<theirs@example.com>"], "their topic", since) is None
    assert await storage.find_thread(other.id, ["<one@example.com>"], "project plan", since) is None
    assert await storage.find_thread(other.id, ["<theirs@example.com>"], "", since) == theirs.thread
    assert await storage.find_thread(other.id, [], "their topic", since) == theirs.thread


async def test_update_message_flags(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "quin")
    other, _, _ = await new_user(storage, "rosa")
    message = await add(storage, inbox, flags=["\\Flagged"])
    bystander = await add(storage, junk)
    assert await counters_of(storage, inbox, junk) == [(1, 1), (1, 1)]
    tail = await journal_tail(storage, user.id)

    seen = await storage.update_message(user.id, message.id, {"flags": ["\\Flagged", "\\Seen"]})
    assert seen is not None
    assert seen.modseq > bystander.modseq > message.modseq
    assert seen == replace(message, flags=["\\Flagged", "\\Seen"], modseq=seen.modseq)
    (entry,) = await storage.read_journal(user.id, tail, 100)
    assert exists_view(entry) == ("FETCH", inbox.id, message.id, message.uid)
    assert (entry.id, entry.data.get("flags")) == (seen.modseq, ["\\Flagged", "\\Seen"])
    assert await storage.get_message(user.id, message.id) == seen
    assert (await mailbox_of(storage, inbox)).modify_index == seen.modseq
    assert await counters_of(storage, inbox, junk) == [(1, 0), (1, 1)]

    # Keeping \Seen keeps the counter; dropping it counts the message again.
    flagged_off = await storage.update_message(user.id, message.id, {"flags": ["\\Seen"]})
    assert flagged_off is not None and flagged_off.modseq > seen.modseq
    assert await counters_of(storage, inbox) == [(1, 0)]
    unseen = await storage.update_message(user.id, message.id, {"flags": ["\\Answered"]})
    assert unseen is not None and unseen.modseq > flagged_off.modseq
    assert unseen.flags == ["\\Answered"]
    assert await counters_of(storage, inbox, junk) == [(1, 1), (1, 1)]
    entries = await storage.read_journal(user.id, tail, 100)
    assert [(entry.command, entry.id, entry.data.get("flags")) for entry in entries] == [
        ("FETCH", seen.modseq, ["\\Flagged", "\\Seen"]),
        ("FETCH", flagged_off.modseq, ["\\Seen"]),
        ("FETCH", unseen.modseq, ["\\Answered"]),
    ]
    assert (await mailbox_of(storage, inbox)).modify_index == unseen.modseq
    assert await storage.get_message(user.id, message.id) == unseen

    # The same set of flags again, in any order, is no change and journals nothing.
    both = await storage.update_message(user.id, message.id, {"flags": ["\\Answered", "\\Seen"]})
    assert both is not None
    tail = await journal_tail(storage, user.id)
    again = await storage.update_message(user.id, message.id, {"flags": ["\\Seen", "\\Answered"]})
    assert again is not None
    assert (sorted(again.flags), again.modseq) == (["\\Answered", "\\Seen"], both.modseq)
    assert await storage.read_journal(user.id, tail, 100) == []
    assert (await mailbox_of(storage, inbox)).modify_index == both.modseq
    assert await counters_of(storage, inbox) == [(1, 0)]

    assert await storage.update_message(user.id, oid(), {"flags": ["\\Seen"]}) is None
    assert await storage.update_message(other.id, bystander.id, {"flags": ["\\Seen"]}) is None
    assert await storage.get_message(user.id, bystander.id) == bystander
    assert await storage.read_journal(user.id, tail, 100) == []
    assert await counters_of(storage, junk) == [(1, 1)]


async def test_update_message_expires(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "sven")
    message = await add(storage, inbox)
    tail = await journal_tail(storage, user.id)
    later = now_ms() + timedelta(days=7)

    updated = await storage.update_message(user.id, message.id, {"expires": later})
    assert updated == replace(message, expires=later)
    assert await storage.get_message(user.id, message.id) == replace(message, expires=later)
    cleared = await storage.update_message(user.id, message.id, {"expires": None})
    assert cleared == message
    assert await storage.get_message(user.id, message.id) == message
    # Expiry is not something clients see: no journal entry, no new modseq.
    assert await storage.read_journal(user.id, tail, 100) == []

    both = await storage.update_message(user.id, message.id, {"flags": ["\\Seen"], "expires": later})
    assert both is not None
    assert both == replace(message, flags=["\\Seen"], expires=later, modseq=both.modseq)
    assert await storage.get_message(user.id, message.id) == both
    assert [entry.command for entry in await storage.read_journal(user.id, tail, 100)] == ["FETCH"]
    assert await storage.update_message(user.id, oid(), {"expires": later}) is None


async def test_move_message(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "tina")
    other, _, (their_inbox, *_) = await new_user(storage, "ugo")
    archive = make_mailbox(user, "Archive")
    await storage.create_mailbox(archive, create_event(archive))
    staying = await add(storage, inbox, size=10, flags=["\\Seen"])
    raw = b"Subject: moving\r\n\r\nbody\r\n"
    moving = await add(storage, inbox, raw=raw, expires=now_ms() + timedelta(days=1), msgid="<m@example.com>")
    resident = await add(storage, archive, size=30)
    assert await counters_of(storage, inbox, archive) == [(2, 1), (1, 1)]
    used = await storage_used(storage, user.id)
    tail = await journal_tail(storage, user.id)
    expires = now_ms() + timedelta(days=30)

    moved = await storage.move_message(user.id, moving.id, archive.id, expires)
    assert moved is not None
    assert moved.modseq > resident.modseq
    assert moved == replace(moving, mailbox=archive.id, uid=2, expires=expires, modseq=moved.modseq)
    assert await storage.get_message(user.id, moving.id) == moved
    assert await storage.get_message_source(user.id, moving.id) == raw

    expunge, exists = await storage.read_journal(user.id, tail, 100)
    assert exists_view(expunge) == ("EXPUNGE", inbox.id, moving.id, 2)
    assert exists_view(exists) == ("EXISTS", archive.id, moving.id, 2)
    assert expunge.id < exists.id == moved.modseq
    assert (exists.data.get("flags"), exists.data.get("thread")) == (moving.flags, moving.thread)

    assert await uids(storage, inbox) == [1]
    assert ids((await storage.list_messages(user.id, archive.id, PageQuery(limit=10))).items) == [
        resident.id,
        moving.id,
    ]
    assert await counters_of(storage, inbox, archive) == [(1, 0), (2, 2)]
    target = await mailbox_of(storage, archive)
    assert (target.uid_next, target.modify_index) == (3, moved.modseq)
    assert (await mailbox_of(storage, inbox)).uid_next == 3
    assert await storage_used(storage, user.id) == used

    # Back again: the next UID of the inbox, expiry cleared; a seen message leaves unseen alone.
    back = await storage.move_message(user.id, moving.id, inbox.id, None)
    assert back == replace(moving, uid=3, expires=None, modseq=back.modseq if back else 0)
    seen_moved = await storage.move_message(user.id, staying.id, junk.id, None)
    assert seen_moved is not None and (seen_moved.mailbox, seen_moved.uid) == (junk.id, 1)
    assert await counters_of(storage, inbox, archive, junk) == [(1, 1), (1, 1), (1, 0)]

    # A missing target or message changes nothing.
    tail = await journal_tail(storage, user.id)
    their_tail = await journal_tail(storage, other.id)
    before = await storage.get_message(user.id, resident.id)
    assert await storage.move_message(user.id, resident.id, oid(), None) is None
    assert await storage.move_message(user.id, resident.id, their_inbox.id, None) is None
    assert await storage.move_message(user.id, oid(), inbox.id, None) is None
    assert await storage.move_message(other.id, resident.id, their_inbox.id, None) is None
    assert await storage.get_message(user.id, resident.id) == before
    assert await storage.read_journal(user.id, tail, 100) == []
    assert await storage.read_journal(other.id, their_tail, 100) == []
    assert await counters_of(storage, inbox, archive, junk) == [(1, 1), (1, 1), (1, 0)]
    assert await counters_of(storage, their_inbox) == [(0, 0)]
    assert (await mailbox_of(storage, archive)).uid_next == 3
    assert await storage_used(storage, user.id) == used


async def test_delete_messages(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "vic")
    other, _, (their_inbox, *_) = await new_user(storage, "wes")
    a = await add(storage, inbox, size=100, flags=["\\Seen"])
    b = await add(storage, inbox, size=200)
    c = await add(storage, inbox, size=300)
    d = await add(storage, junk, size=400)
    theirs = await add(storage, their_inbox, size=500)
    assert await storage_used(storage, user.id) == 1000
    tail = await journal_tail(storage, user.id)

    assert await storage.delete_messages(user.id, [a.id, d.id, oid()]) == 500
    assert await storage_used(storage, user.id) == 500
    entries = await storage.read_journal(user.id, tail, 100)
    assert sorted(exists_view(entry) for entry in entries) == sorted(
        [("EXPUNGE", inbox.id, a.id, 1), ("EXPUNGE", junk.id, d.id, 1)]
    )
    assert all(entry.id > tail for entry in entries)
    assert await counters_of(storage, inbox, junk) == [(2, 2), (0, 0)]
    for gone in (a, d):
        assert await storage.get_message(user.id, gone.id) is None
        assert await storage.get_message_source(user.id, gone.id) is None
    assert await storage.get_message(user.id, b.id) == b
    assert await storage.get_message_source(user.id, b.id) is not None
    assert await uids(storage, inbox) == [2, 3]

    # Deleting them again, or another user's message, frees nothing.
    tail = await journal_tail(storage, user.id)
    assert await storage.delete_messages(user.id, [a.id, d.id]) == 0
    assert await storage.delete_messages(user.id, [theirs.id]) == 0
    assert await storage.delete_messages(user.id, []) == 0
    assert await storage.get_message(other.id, theirs.id) == theirs
    assert await storage_used(storage, other.id) == 500
    assert await storage_used(storage, user.id) == 500
    assert await storage.read_journal(user.id, tail, 100) == []
    their_entries = await storage.read_journal(other.id, 0, 100)
    assert [entry.command for entry in their_entries if entry.message == theirs.id] == ["EXISTS"]

    assert await storage.delete_messages(user.id, [b.id, c.id]) == 500
    assert await storage_used(storage, user.id) == 0
    assert await counters_of(storage, inbox) == [(0, 0)]
    page = await storage.list_messages(user.id, inbox.id, PageQuery(limit=10))
    assert (page.items, page.more, page.total) == ([], False, 0)


async def test_concurrent_deletion_of_one_message_frees_it_once(storage: Storage) -> None:
    user, _, (inbox, *_) = await new_user(storage, "xavi")
    kept = await add(storage, inbox, size=50)
    doomed = await add(storage, inbox, size=321)
    tail = await journal_tail(storage, user.id)

    results = await asyncio.gather(*(storage.delete_messages(user.id, [doomed.id]) for _ in range(10)))
    assert sorted(results) == [0] * 9 + [321]
    assert await storage_used(storage, user.id) == 50
    assert await counters_of(storage, inbox) == [(1, 1)]
    entries = await storage.read_journal(user.id, tail, 100)
    assert [exists_view(entry) for entry in entries] == [("EXPUNGE", inbox.id, doomed.id, doomed.uid)]
    assert await storage.get_message(user.id, kept.id) == kept


async def replay_journal(storage: Storage, user_id: str) -> dict[str, dict[int, str]]:
    """Mailbox id -> {uid: message id}, as a client following the journal would see it."""
    seen: dict[str, dict[int, str]] = {}
    for entry in await storage.read_journal(user_id, 0, 100_000):
        if entry.command == "EXISTS":
            assert entry.mailbox is not None and entry.uid is not None and entry.message is not None
            seen.setdefault(entry.mailbox, {})[entry.uid] = entry.message
        elif entry.command == "EXPUNGE":
            assert entry.mailbox is not None and entry.uid is not None
            seen.get(entry.mailbox, {}).pop(entry.uid, None)
        elif entry.command == "DELETE" and entry.mailbox is not None:
            seen.pop(entry.mailbox, None)
    return {mailbox: uids for mailbox, uids in seen.items() if uids}


async def test_concurrent_changes_keep_journal_counters_and_storage_consistent(storage: Storage) -> None:
    user, _, (inbox, junk, _, trash) = await new_user(storage, "yves")
    archive = make_mailbox(user, "Archive")
    await storage.create_mailbox(archive, create_event(archive))
    messages = [await add(storage, inbox, size=100 + n, flags=["\\Seen"] if n % 3 == 0 else []) for n in range(20)]
    targets = [archive, junk, trash]

    await asyncio.gather(
        # Moves, one message several times at once to different mailboxes.
        *(storage.move_message(user.id, messages[n].id, targets[n % 3].id, None) for n in range(8)),
        *(storage.move_message(user.id, messages[0].id, target.id, None) for target in targets),
        # Deletions, each message twice.
        *(storage.delete_messages(user.id, [messages[n].id]) for n in range(8, 12) for _ in range(2)),
        storage.delete_messages(user.id, [messages[12].id, messages[13].id]),
        # Flag changes and new messages.
        *(storage.update_message(user.id, messages[n].id, {"flags": ["\\Seen"]}) for n in range(14, 18)),
        *(storage.add_message(make_message(box, size=7), b"n" * 7, search_text(), None) for box in targets * 2),
    )

    boxes = [inbox, archive, junk, trash]
    listed: dict[str, list[Message]] = {
        box.id: (await storage.list_messages(user.id, box.id, PageQuery(limit=1000))).items for box in boxes
    }
    everything = [message for items in listed.values() for message in items]
    # Every message is in exactly one mailbox; the deleted ones in none.
    assert len(everything) == len({message.id for message in everything}) == 20 - 6 + 6
    assert not {message.id for message in everything} & set(ids(messages[8:14]))
    assert set(ids(messages[:8] + messages[14:])) <= {message.id for message in everything}
    for message in everything:
        assert await storage.get_message(user.id, message.id) == message

    # Counters, storage used and the journal all agree with the listings.
    counters = await storage.mailbox_counters(user.id, ids(boxes))
    for box in boxes:
        items = listed[box.id]
        assert counters[box.id] == MailboxCounters(len(items), sum(not m.seen for m in items)), box.path
        if items:
            assert (await mailbox_of(storage, box)).modify_index >= max(m.modseq for m in items)
    assert await storage_used(storage, user.id) == sum(m.size for m in everything)
    assert await storage.recalculate_storage(user.id) == sum(m.size for m in everything)
    assert await replay_journal(storage, user.id) == {
        box_id: {m.uid: m.id for m in items} for box_id, items in listed.items() if items
    }
    for n in range(14, 18):
        assert (await storage.get_message(user.id, messages[n].id)).flags == ["\\Seen"]  # type: ignore[union-attr]


async def test_expired_messages(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "yara")
    other, _, (their_inbox, *_) = await new_user(storage, "zack")
    now = now_ms()
    long_ago = await add(storage, inbox, expires=now - timedelta(days=3))
    just_now = await add(storage, junk, expires=now)
    await add(storage, inbox, expires=now + timedelta(milliseconds=1))
    await add(storage, inbox, expires=now + timedelta(days=1))
    await add(storage, inbox, expires=None)
    theirs = await add(storage, their_inbox, expires=now - timedelta(seconds=1))
    expected = {(user.id, long_ago.id), (user.id, just_now.id), (other.id, theirs.id)}

    found = await storage.expired_messages(now, 100)
    assert sorted(found) == sorted(expected)
    some = await storage.expired_messages(now, 2)
    assert len(some) == 2 and set(some) <= expected
    (one,) = await storage.expired_messages(now, 1)
    assert one in expected
    assert await storage.expired_messages(now - timedelta(days=4), 100) == []

    assert await storage.update_message(user.id, long_ago.id, {"expires": None}) is not None
    assert await storage.delete_messages(other.id, [theirs.id]) == theirs.size
    assert await storage.expired_messages(now, 100) == [(user.id, just_now.id)]
    assert len(await storage.expired_messages(now + timedelta(days=2), 100)) == 3


async def test_recalculate_storage(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "emma", storage_used=5)
    other, _, (their_inbox, *_) = await new_user(storage, "finn")
    assert await storage.recalculate_storage(user.id) == 0
    first = await add(storage, inbox, size=1000)
    await add(storage, inbox, size=2500, flags=["\\Seen"])
    dropped = await add(storage, junk, size=40)
    await add(storage, junk, size=60)
    await add(storage, their_inbox, size=7777)
    assert await storage_used(storage, user.id) == 3600
    assert await storage.delete_messages(user.id, [dropped.id]) == 40
    assert await storage.update_user(user.id, {"storage_used": 123}) is True

    assert await storage.recalculate_storage(user.id) == 3560
    assert await storage_used(storage, user.id) == 3560
    assert await storage.recalculate_storage(other.id) == 7777
    assert await storage_used(storage, user.id) == 3560
    await storage.move_message(user.id, first.id, junk.id, None)
    assert await storage.recalculate_storage(user.id) == 3560
    assert await storage.recalculate_storage(oid()) == 0


async def test_delete_mailbox_frees_its_messages(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "gus")
    other, _, (their_inbox, *_) = await new_user(storage, "hope")
    kept = await add(storage, inbox, size=1000, search=search_text("Keep me"))
    doomed = [
        await add(storage, junk, size=300, search=search_text("Doomed one")),
        await add(storage, junk, size=200, flags=["\\Seen"], search=search_text("Doomed two")),
    ]
    await add(storage, their_inbox, size=50)
    assert await storage_used(storage, user.id) == 1500
    tail = await journal_tail(storage, user.id)

    assert await storage.delete_mailbox(user.id, junk.id, JournalEvent("DELETE", mailbox=junk.id)) == 500
    assert await storage_used(storage, user.id) == 1000
    assert await storage.recalculate_storage(user.id) == 1000  # the messages are gone too
    assert [entry.command for entry in await storage.read_journal(user.id, tail, 100)] == ["DELETE"]
    for message in doomed:
        assert await storage.get_message(user.id, message.id) is None
        assert await storage.get_message_source(user.id, message.id) is None
    assert (await search(storage, user.id, "doomed")).total == 0
    assert (await search(storage, user.id, "keep")).items == [kept]
    page = await storage.list_messages(user.id, junk.id, PageQuery(limit=10))
    assert (page.items, page.total) == ([], 0)
    assert await storage.mailbox_counters(user.id, [inbox.id]) == {inbox.id: MailboxCounters(1, 1)}
    assert await storage.get_message(user.id, kept.id) == kept
    assert await storage_used(storage, other.id) == 50


async def test_concurrent_deletion_frees_bytes_once(storage: Storage) -> None:
    user, _, (inbox, junk, *_) = await new_user(storage, "ivy")
    await add(storage, inbox, size=100)
    await add(storage, junk, size=400)
    assert await storage_used(storage, user.id) == 500
    tail = await journal_tail(storage, user.id)

    results = await asyncio.gather(
        *(storage.delete_mailbox(user.id, junk.id, JournalEvent("DELETE", mailbox=junk.id)) for _ in range(10))
    )
    assert sorted(results) == [-1] * 9 + [400]
    assert await storage_used(storage, user.id) == 100
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
        [JournalEvent("RENAME", mailbox=box.id, data={"path": "Lists/Old", "old": {"path": "Lists"}})],
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
    # An entry about a message carries its own id as the message's modseq.
    assert [(entry.message, entry.uid, entry.modseq) for entry in entries] == [
        (None, None, None),
        (None, None, None),
        (message_id, 9, entries[2].id),
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


# Several records at once


async def test_addresses_and_asps_of_users_read_like_single_users(storage: Storage) -> None:
    user, main, _ = await new_user(storage, "rosa")
    other, other_main, _ = await new_user(storage, "sam")
    # Stored in reverse id order, so that ordering by id is not ordering by insertion.
    aliases = [make_address(user, f"rosa{n}@example.org") for n in range(3)]
    asps = [make_asp(user, f"device {n}") for n in range(3)]
    for address, asp in zip(reversed(aliases), reversed(asps), strict=True):
        await storage.add_address(address)
        await storage.add_asp(asp)
    wanted = [user.id, other.id, oid(), user.id]

    addresses = await storage.addresses_of_users(wanted)
    assert addresses == {user.id: [main, *aliases], other.id: [other_main]}
    assert addresses[user.id] == await storage.list_user_addresses(user.id)
    found = await storage.asps_of_users(wanted)
    assert found == {user.id: asps}
    assert found[user.id] == await storage.list_asps(user.id)
    assert await storage.addresses_of_users([]) == {}
    assert await storage.asps_of_users([]) == {}


async def test_batch_reads_of_more_users_than_one_query_takes(storage: Storage) -> None:
    """Hundreds of ids, a user named in two far-apart places: each user comes back once."""
    user, main, (inbox, *_) = await new_user(storage, "tara")
    other, other_main, (_, their_junk, *_) = await new_user(storage, "uma")
    asp = make_asp(other)
    await storage.add_asp(asp)
    await add(storage, inbox, flags=["\\Seen"])
    await add(storage, their_junk)
    wanted = [user.id, *(oid() for _ in range(900)), other.id, user.id]

    assert await storage.get_users(wanted) == {
        user.id: await storage.get_user(user.id),
        other.id: await storage.get_user(other.id),
    }
    assert await storage.addresses_of_users(wanted) == {user.id: [main], other.id: [other_main]}
    assert await storage.asps_of_users(wanted) == {other.id: [asp]}
    assert await storage.mailboxes_of_users(wanted) == {
        user.id: await storage.list_mailboxes(user.id),
        other.id: await storage.list_mailboxes(other.id),
    }
    mailbox_ids = [inbox.id, *(oid() for _ in range(900)), their_junk.id]
    counters = await storage.counters_of_mailboxes(mailbox_ids)
    assert counters == {mailbox_id: MailboxCounters(0, 0) for mailbox_id in mailbox_ids} | {
        inbox.id: MailboxCounters(1, 0),
        their_junk.id: MailboxCounters(1, 1),
    }
    assert await storage.mailbox_counters(user.id, mailbox_ids) == counters | {their_junk.id: MailboxCounters(0, 0)}


async def test_thread_messages(storage: Storage) -> None:
    """The oldest messages of each thread of a user, across mailboxes, oldest first."""
    user, _, (inbox, junk, *_) = await new_user(storage, "vera")
    other, _, (their_inbox, *_) = await new_user(storage, "walt")
    long, short, shared = oid(), oid(), oid()
    long_thread = [await add(storage, (inbox, junk)[n % 2], thread=long) for n in range(5)]
    short_thread = [await add(storage, junk, thread=short)]
    mine = await add(storage, inbox, thread=shared)
    theirs = await add(storage, their_inbox, thread=shared)
    await add(storage, inbox)
    threads = [(user.id, long), (user.id, short), (user.id, shared), (other.id, shared), (other.id, long)]

    assert await storage.thread_messages([*threads, (user.id, oid())], limit=3) == {
        (user.id, long): long_thread[:3],
        (user.id, short): short_thread,
        (user.id, shared): [mine],
        (other.id, shared): [theirs],
    }
    assert await storage.thread_messages([(user.id, long)], limit=100) == {(user.id, long): long_thread}
    assert await storage.thread_messages(threads, limit=0) == {}
    assert await storage.thread_messages([], limit=3) == {}


async def test_thread_messages_of_many_threads(storage: Storage) -> None:
    """Dozens of threads asked for at once, some of them without messages."""
    user, _, (inbox, *_) = await new_user(storage, "xena")
    threads = [oid() for _ in range(20)]
    stored = {thread: [await add(storage, inbox, thread=thread) for _ in range(2)] for thread in threads}
    keys = [(user.id, thread) for thread in threads]
    keys[10:10] = [(user.id, oid()) for _ in range(20)]

    found = await storage.thread_messages(keys, limit=1)
    assert found == {(user.id, thread): messages[:1] for thread, messages in stored.items()}
    found = await storage.thread_messages(keys, limit=5)
    assert found == {(user.id, thread): messages for thread, messages in stored.items()}


# Restarts


async def test_a_store_can_be_opened_again(storage_url):
    """What a restarted server does: open the same store again (indexes and schema already there)."""
    user = make_user()
    for opening in range(3):
        store = storage_from_url(storage_url)
        await store.open()
        try:
            if opening == 0:
                await store.create_user(user, make_address(user), default_mailboxes(user))
            found = await store.get_user(user.id)
            assert found is not None and found.username == user.username
        finally:
            await store.close()
