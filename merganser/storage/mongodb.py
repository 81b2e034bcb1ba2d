"""The MongoDB backend, through pymongo's native asyncio client.

It has to work on MongoDB and on FerretDB v1 (SQLite handler), which the tests
use. That rules out transactions, so every change that touches several
documents is ordered such that a failure part-way leaves nothing visible that
breaks a rule: a user whose address turns out to be taken is deleted again, a
rename checks for taken paths before it moves anything, and a mailbox is
deleted before its messages so that only one of two concurrent deletions frees
their bytes.

FerretDB v1 also has no atomic read-modify-write: ``findAndModify`` and
``update`` read the document and write it back whole, so two concurrent
``$inc`` on one document can both return the same value. Its atomic
operations are inserts (a unique index refuses the second one) and deletes (the
count says whether this caller removed the document). Everything that must hand
out a value exactly once is therefore built on a unique insert:

* a journal entry takes the id after the user's newest one and retries if a
  concurrent append got it first, so ids also become visible in order;
* a failure counter is a set of slot documents numbered 1..n, one per increment;
* a TOTP step is claimed by inserting a marker keyed by user and step.

FerretDB v1 has no TTL indexes either, so expired authentication log entries
and counters are hidden by a filter on ``expires`` and removed by the purge
methods.

Ids are the caller's ObjectId strings stored as string ``_id``; fixed-length
hex sorts like the ObjectIds, which keyset paging by ``_id`` relies on. Dates
are BSON dates, read back as UTC-aware datetimes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, TypeVar

import pymongo.errors
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from merganser.storage.base import (
    Address,
    ApplicationPassword,
    AuthLogEntry,
    DuplicateKeyError,
    JournalEntry,
    JournalEvent,
    Mailbox,
    MailboxCounters,
    PageQuery,
    Slice,
    Storage,
    User,
)

Document = dict[str, Any]
Record = TypeVar("Record", User, Address, ApplicationPassword, AuthLogEntry, Mailbox)

DEFAULT_DATABASE = "merganser"
WRITABLE_USER_FIELDS = frozenset(field.name for field in fields(User)) - {"id", "created"}
WRITABLE_MAILBOX_FIELDS = frozenset({"retention", "subscribed"})

INDEXES: dict[str, list[IndexModel]] = {
    "users": [IndexModel("unameview", unique=True)],
    "addresses": [IndexModel("addrview", unique=True), IndexModel("user")],
    "asps": [IndexModel("user")],
    "authlog": [IndexModel([("user", ASCENDING), ("_id", ASCENDING)]), IndexModel("expires")],
    "counters": [IndexModel([("key", ASCENDING), ("expires", ASCENDING)]), IndexModel("expires")],
    "twofa_steps": [IndexModel("user")],
    "mailboxes": [IndexModel([("user", ASCENDING), ("path", ASCENDING)], unique=True)],
    "messages": [
        IndexModel([("mailbox", ASCENDING), ("uid", ASCENDING)], unique=True),
        IndexModel([("user", ASCENDING), ("mailbox", ASCENDING)]),
    ],
    "journal": [IndexModel([("user", ASCENDING), ("seq", ASCENDING)], unique=True)],
}


# Documents and records


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in fields(cls) if field.name != "id")


def _document(record: User | Address | ApplicationPassword | AuthLogEntry | Mailbox) -> Document:
    """A record as stored: its fields under their own names, ``id`` as ``_id``."""
    document = asdict(record)
    document["_id"] = document.pop("id")
    return document


def _user_document(user: User) -> Document:
    """The user plus ``unameview``, the lower-cased username its unique index is on."""
    return {**_document(user), "unameview": user.username.lower()}


def _record(cls: type[Record], document: Document) -> Record:
    """The record a document holds, leaving out stored extras such as ``unameview``."""
    return cls(id=document["_id"], **{name: document[name] for name in _field_names(cls)})


def _journal_document(user_id: str, seq: int, event: JournalEvent, created: datetime) -> Document:
    return {"user": user_id, "seq": seq, **asdict(event), "created": created}


def _journal_entry(document: Document) -> JournalEntry:
    return JournalEntry(id=document["seq"], **{name: document[name] for name in _field_names(JournalEntry)})


def _slot_id(key: str, seq: int) -> str:
    """The ``_id`` of a counter slot: FerretDB v1 can only look documents up quickly by ``_id``."""
    return f"{key}#{seq}"


def _contains(field: str, query: str | None) -> Document:
    """A filter for ``field`` containing ``query`` literally; everything when there is no query."""
    return {field: {"$regex": re.escape(query.lower())}} if query else {}


# Errors


def _is_duplicate(error: pymongo.errors.OperationFailure) -> bool:
    """Whether a write hit a unique index.

    FerretDB v1 reports an update that breaks a unique index as an internal
    error carrying SQLite's message rather than as error 11000.
    """
    return error.code == 11000 or (error.code == 1 and "UNIQUE constraint failed" in str(error))


def _duplicate_key(
    error: pymongo.errors.OperationFailure, key: Literal["username", "address", "path"]
) -> DuplicateKeyError:
    """Translate a unique-index failure on the collection whose unique key is ``key``.

    Each collection has one unique key besides ``_id``. MongoDB names the index
    that clashed and an ``_id`` clash (a caller reusing an id) is re-raised as
    it is; FerretDB does not say, so there the clash is taken to be ``key``.
    """
    details = error.details or {}
    if not _is_duplicate(error) or details.get("keyPattern") == {"_id": 1}:
        raise error
    return DuplicateKeyError(key)


class MongoStorage(Storage):
    """Storage in a MongoDB (or FerretDB) database named by the URL's path."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: AsyncMongoClient[Document] | None = None
        self._db: AsyncDatabase[Document] | None = None

    async def open(self) -> None:
        self._client = AsyncMongoClient(self.url, tz_aware=True, tzinfo=UTC)
        self._db = self._client.get_default_database(DEFAULT_DATABASE)
        for name, indexes in INDEXES.items():
            await self._db[name].create_indexes(indexes)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = self._db = None

    def _collection(self, name: str) -> AsyncCollection[Document]:
        assert self._db is not None, "storage is not open"
        return self._db[name]

    async def _page(self, collection: str, match: Document, page: PageQuery, cls: type[Record]) -> Slice[Record]:
        """Keyset paging by ``_id`` shared by every paged listing.

        A backward page is read towards the start of the listing, from the
        item before ``page.before``, and then put back in display order.
        """
        backward = page.before is not None
        key = page.before if backward else page.after
        ascending = page.descending == backward
        query = dict(match)
        if key is not None:
            query["_id"] = {"$gt" if ascending else "$lt": key}
        coll = self._collection(collection)
        cursor = coll.find(query).sort("_id", ASCENDING if ascending else DESCENDING).limit(page.limit + 1)
        documents = await cursor.to_list()
        more = len(documents) > page.limit
        documents = documents[: page.limit]
        if backward:
            documents.reverse()
        total = await coll.count_documents(match)
        return Slice([_record(cls, document) for document in documents], more, total)

    async def _find(self, collection: str, query: Document, cls: type[Record], sort: str = "_id") -> list[Record]:
        documents = await self._collection(collection).find(query).sort(sort, ASCENDING).to_list()
        return [_record(cls, document) for document in documents]

    async def _find_one(self, collection: str, query: Document, cls: type[Record]) -> Record | None:
        document = await self._collection(collection).find_one(query)
        return _record(cls, document) if document else None

    async def _delete_one(self, collection: str, query: Document) -> bool:
        result = await self._collection(collection).delete_one(query)
        return result.deleted_count > 0

    # Users

    async def create_user(self, user: User, address: Address, mailboxes: list[Mailbox]) -> None:
        try:
            await self._collection("users").insert_one(_user_document(user))
        except pymongo.errors.OperationFailure as error:
            raise _duplicate_key(error, "username") from None
        try:
            await self.add_address(address)
            if mailboxes:
                await self._collection("mailboxes").insert_many([_document(mailbox) for mailbox in mailboxes])
        except BaseException:
            await self._discard_new_user(user.id)
            raise

    async def _discard_new_user(self, user_id: str) -> None:
        """Undo a half-created user; the user document goes last so the username stays taken until then."""
        await self._collection("mailboxes").delete_many({"user": user_id})
        await self._collection("addresses").delete_many({"user": user_id})
        await self._collection("users").delete_one({"_id": user_id})

    async def get_user(self, user_id: str) -> User | None:
        return await self._find_one("users", {"_id": user_id}, User)

    async def find_user_by_username(self, username: str) -> User | None:
        return await self._find_one("users", {"unameview": username.lower()}, User)

    async def list_users(self, query: str | None, page: PageQuery) -> Slice[User]:
        return await self._page("users", _contains("unameview", query), page, User)

    async def update_user(self, user_id: str, changes: dict[str, Any]) -> bool:
        unknown = set(changes) - WRITABLE_USER_FIELDS
        if unknown:
            raise ValueError(f"not writable user fields: {sorted(unknown)}")
        values = dict(changes)
        if "username" in values:
            values["unameview"] = values["username"].lower()
        try:
            result = await self._collection("users").update_one({"_id": user_id}, {"$set": values})
        except pymongo.errors.OperationFailure as error:
            raise _duplicate_key(error, "username") from None
        if "twofa_last_step" in values:
            # Steps after the new last one are claimable again.
            await self._collection("twofa_steps").delete_many(
                {"user": user_id, "step": {"$gt": values["twofa_last_step"]}}
            )
        return result.matched_count > 0

    async def claim_twofa_step(self, user_id: str, step: int) -> bool:
        """Claim the step with a unique marker, then raise the user's last step to it.

        Markers, not a conditional update, make the claim exclusive: FerretDB
        v1 evaluates an update's condition and writes the document back in
        separate steps. A marker of a newer step refuses this one even where
        the user's last step does not show it yet, which also covers an older
        marker that was dropped after a newer step was claimed.
        """
        user = await self._collection("users").find_one({"_id": user_id}, {"twofa_last_step": 1})
        if user is None or user["twofa_last_step"] >= step:
            return False
        markers = self._collection("twofa_steps")
        try:
            await markers.insert_one({"_id": f"{user_id}:{step}", "user": user_id, "step": step})
        except pymongo.errors.DuplicateKeyError:
            return False
        if await markers.find_one({"user": user_id, "step": {"$gt": step}}) is not None:
            return False
        await self._raise_twofa_last_step(user_id)
        await markers.delete_many({"user": user_id, "step": {"$lt": step}})
        return True

    async def _raise_twofa_last_step(self, user_id: str) -> None:
        """Raise the user's last step to the newest claimed one until no write of another claim undoes it.

        On FerretDB v1 a concurrent claim of an older step can write its value
        over a newer one; every claim ends with a check made after its last
        write, so once claims stop the newest step is what is stored.
        """
        markers, users = self._collection("twofa_steps"), self._collection("users")
        while True:
            newest = await markers.find_one({"user": user_id}, sort=[("step", DESCENDING)])
            if newest is None:
                return
            result = await users.update_one(
                {"_id": user_id, "twofa_last_step": {"$lt": newest["step"]}},
                {"$set": {"twofa_last_step": newest["step"]}},
            )
            if result.modified_count == 0:
                return

    async def _message_bytes(self, match: Document) -> int:
        cursor = await self._collection("messages").aggregate(
            [{"$match": match}, {"$group": {"_id": None, "size": {"$sum": "$size"}}}]
        )
        groups = await cursor.to_list()
        return groups[0]["size"] if groups else 0

    async def recalculate_storage(self, user_id: str) -> int:
        used = await self._message_bytes({"user": user_id})
        result = await self._collection("users").update_one({"_id": user_id}, {"$set": {"storage_used": used}})
        return used if result.matched_count else 0

    # Addresses

    async def add_address(self, address: Address) -> None:
        try:
            await self._collection("addresses").insert_one(_document(address))
        except pymongo.errors.OperationFailure as error:
            raise _duplicate_key(error, "address") from None

    async def get_address(self, address_id: str) -> Address | None:
        return await self._find_one("addresses", {"_id": address_id}, Address)

    async def find_address(self, addrview: str) -> Address | None:
        return await self._find_one("addresses", {"addrview": addrview}, Address)

    async def list_user_addresses(self, user_id: str) -> list[Address]:
        return await self._find("addresses", {"user": user_id}, Address)

    async def search_addresses(self, query: str | None, page: PageQuery) -> Slice[Address]:
        return await self._page("addresses", _contains("addrview", query), page, Address)

    async def delete_address(self, user_id: str, address_id: str) -> bool:
        return await self._delete_one("addresses", {"_id": address_id, "user": user_id})

    # Application-specific passwords

    async def add_asp(self, asp: ApplicationPassword) -> None:
        await self._collection("asps").insert_one(_document(asp))

    async def list_asps(self, user_id: str) -> list[ApplicationPassword]:
        return await self._find("asps", {"user": user_id}, ApplicationPassword)

    async def delete_asp(self, user_id: str, asp_id: str) -> bool:
        return await self._delete_one("asps", {"_id": asp_id, "user": user_id})

    # Authentication log

    async def add_authlog(self, entry: AuthLogEntry) -> None:
        await self._collection("authlog").insert_one(_document(entry))

    async def list_authlog(self, user_id: str, now: datetime, page: PageQuery) -> Slice[AuthLogEntry]:
        return await self._page("authlog", {"user": user_id, "expires": {"$gt": now}}, page, AuthLogEntry)

    async def purge_authlog(self, now: datetime) -> int:
        result = await self._collection("authlog").delete_many({"expires": {"$lte": now}})
        return result.deleted_count

    # Failure counters

    async def increment_counter(self, key: str, expires: datetime) -> int:
        """Insert the counter's next slot; its number is the new value.

        Slots 1..n of a live counter share the expiry that the first increment
        of the window set; slots of an expired window are removed first so that
        their numbers can be used again. The live count is only a first guess:
        a number that a concurrent increment took sends this one on to the next.
        """
        counters = self._collection("counters")
        now = datetime.now(UTC)
        expired = {"key": key, "expires": {"$lte": now}}
        await counters.delete_many(expired)
        seq = await counters.count_documents({"key": key, "expires": {"$gt": now}}) + 1
        window: datetime | None = None
        while True:
            if seq > 1 and window is None:
                first = await counters.find_one({"_id": _slot_id(key, 1)})
                if first is None or first["expires"] <= now:
                    await counters.delete_many(expired)
                    seq = 1
                    continue
                window = first["expires"]
            slot = {"_id": _slot_id(key, seq), "key": key, "seq": seq, "expires": window if seq > 1 else expires}
            try:
                await counters.insert_one(slot)
            except pymongo.errors.DuplicateKeyError:
                seq += 1
                continue
            return seq

    async def get_counter(self, key: str, now: datetime) -> int:
        return await self._collection("counters").count_documents({"key": key, "expires": {"$gt": now}})

    async def purge_counters(self, now: datetime) -> int:
        """Delete expired slots; count each counter once, by its first slot."""
        counters = self._collection("counters")
        result = await counters.delete_many({"seq": 1, "expires": {"$lte": now}})
        await counters.delete_many({"expires": {"$lte": now}})
        return result.deleted_count

    # Mailboxes

    async def list_mailboxes(self, user_id: str) -> list[Mailbox]:
        return await self._find("mailboxes", {"user": user_id}, Mailbox, sort="path")

    async def get_mailbox(self, user_id: str, mailbox_id: str) -> Mailbox | None:
        return await self._find_one("mailboxes", {"_id": mailbox_id, "user": user_id}, Mailbox)

    async def _append_journal(self, user_id: str, event: JournalEvent) -> None:
        """Store the event under the id after the user's newest entry.

        The unique (user, seq) index lets only one of several concurrent
        appends have an id; the others move on to the next one. An id is only
        tried once the one before it is stored, so a reader never finds a gap
        that is filled later. Ids continue from the newest stored entry, so
        pruning the journal must keep each user's newest entry.
        """
        journal = self._collection("journal")
        created = datetime.now(UTC)
        newest = await journal.find_one({"user": user_id}, {"seq": 1}, sort=[("seq", DESCENDING)])
        seq = newest["seq"] + 1 if newest else 1
        while True:
            try:
                await journal.insert_one(_journal_document(user_id, seq, event, created))
            except pymongo.errors.DuplicateKeyError:
                seq += 1
                continue
            return

    async def create_mailbox(self, mailbox: Mailbox, event: JournalEvent) -> None:
        try:
            await self._collection("mailboxes").insert_one(_document(mailbox))
        except pymongo.errors.OperationFailure as error:
            raise _duplicate_key(error, "path") from None
        await self._append_journal(mailbox.user, event)

    async def rename_mailboxes(self, user_id: str, renames: list[tuple[str, str]], events: list[JournalEvent]) -> None:
        """Rename after checking every new path is free.

        Without a transaction a clash found half-way could not be undone, so
        paths held by mailboxes outside this call are checked first. Mailboxes
        whose current path another rename of this call takes (a swap) are first
        parked on a path no client can create, so the unique index never sees
        two mailboxes on one path. A mailbox created concurrently on a new path
        can still make a later rename fail after earlier ones were applied.
        """
        mailboxes = self._collection("mailboxes")
        targets = dict(renames)
        new_paths = set(targets.values())
        clash = await mailboxes.find_one(
            {"user": user_id, "path": {"$in": list(new_paths)}, "_id": {"$nin": list(targets)}}
        )
        if clash is not None or len(new_paths) < len(targets):
            raise DuplicateKeyError("path")
        current = await mailboxes.find({"user": user_id, "_id": {"$in": list(targets)}}).to_list()
        parked = [doc["_id"] for doc in current if doc["path"] in new_paths and targets[doc["_id"]] != doc["path"]]
        try:
            for mailbox_id in parked:
                await mailboxes.update_one({"_id": mailbox_id, "user": user_id}, {"$set": {"path": f"\0{mailbox_id}"}})
            for mailbox_id, path in renames:
                await mailboxes.update_one({"_id": mailbox_id, "user": user_id}, {"$set": {"path": path}})
        except pymongo.errors.OperationFailure as error:
            raise _duplicate_key(error, "path") from None
        for event in events:
            await self._append_journal(user_id, event)

    async def update_mailbox(self, user_id: str, mailbox_id: str, changes: dict[str, Any]) -> bool:
        unknown = set(changes) - WRITABLE_MAILBOX_FIELDS
        if unknown:
            raise ValueError(f"not writable mailbox fields: {sorted(unknown)}")
        result = await self._collection("mailboxes").update_one({"_id": mailbox_id, "user": user_id}, {"$set": changes})
        return result.matched_count > 0

    async def delete_mailbox(self, user_id: str, mailbox_id: str, event: JournalEvent) -> int:
        """Delete the mailbox first: of two concurrent deletions only one removes it and frees its bytes."""
        if not await self._delete_one("mailboxes", {"_id": mailbox_id, "user": user_id}):
            return -1
        match = {"user": user_id, "mailbox": mailbox_id}
        freed = await self._message_bytes(match)
        await self._collection("messages").delete_many(match)
        if freed:
            await self._collection("users").update_one({"_id": user_id}, {"$inc": {"storage_used": -freed}})
        await self._append_journal(user_id, event)
        return freed

    async def _count_by_mailbox(self, match: Document) -> dict[str, int]:
        cursor = await self._collection("messages").aggregate(
            [{"$match": match}, {"$group": {"_id": "$mailbox", "count": {"$sum": 1}}}]
        )
        return {group["_id"]: group["count"] for group in await cursor.to_list()}

    async def mailbox_counters(self, user_id: str, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        """Count all and seen messages separately: FerretDB v1 has no ``$cond`` to do both in one pass."""
        if not mailbox_ids:
            return {}
        match = {"user": user_id, "mailbox": {"$in": mailbox_ids}}
        totals = await self._count_by_mailbox(match)
        seen = await self._count_by_mailbox({**match, "flags": "\\Seen"})
        return {
            mailbox_id: MailboxCounters(
                total=totals.get(mailbox_id, 0), unseen=totals.get(mailbox_id, 0) - seen.get(mailbox_id, 0)
            )
            for mailbox_id in mailbox_ids
        }

    # Journal

    async def read_journal(self, user_id: str, after: int, limit: int) -> list[JournalEntry]:
        if limit <= 0:
            return []  # MongoDB reads a limit of 0 as no limit
        cursor = self._collection("journal").find({"user": user_id, "seq": {"$gt": after}})
        documents = await cursor.sort("seq", ASCENDING).limit(limit).to_list()
        return [_journal_entry(document) for document in documents]
