"""The MongoDB backend, through pymongo's native asyncio client.

It has to work on MongoDB and on FerretDB v1 (SQLite handler), which the tests
use. That rules out transactions, so every change that touches several
documents is ordered such that a failure part-way leaves nothing visible that
breaks a rule: a user whose address turns out to be taken is deleted again, a
rename checks for taken paths before it moves anything, a message's bytes are
charged and its source stored before the message document makes it visible
(and given back if that fails), and a mailbox is deleted before its messages
so that a message put into it meanwhile is noticed and removed again.

FerretDB v1 also has no atomic read-modify-write: ``findAndModify`` and
``update`` read the document and write it back whole, so two concurrent
``$inc`` on one document can both return the same value, and an update of one
field can put back an old value of another field that a concurrent update just
changed. Its atomic operations are inserts (a unique index refuses the second
one) and deletes (the count says whether this caller removed the document).
Everything that must happen exactly once is therefore built on a unique insert:

* a journal entry takes the id after the user's newest one and retries if a
  concurrent append got it first, so ids also become visible in order;
* a failure counter is a set of slot documents numbered 1..n, one per increment;
* a TOTP step is claimed by inserting a marker keyed by user and step;
* a UID is claimed by inserting ``uids`` document ``mailbox:uid``; claims stay
  until the mailbox is deleted, so a UID is never handed out twice;
* moving or deleting a message first claims its place, ``mailbox:uid:gone``,
  so that of concurrent moves and deletions of one message one goes ahead and
  the others follow it to where it went;
* storage used is a chain of ``usage`` versions ``user:000000000042``, each
  holding the value after one change: a change reads the newest version,
  checks the quota and inserts the next one, and the unique ``_id`` turns that
  into a compare-and-set. Before the first version the user document's
  ``storage_used`` holds the value; after it, that field is never written.

Numbered documents are found by ``_id`` lookups, the one query FerretDB v1
answers from an index: starting from a hint, a run of claims or versions is
probed forward, galloping and then bisecting. The hints (``usage`` document
``user``, ``mailbox_state`` document ``mailbox``) are raised best-effort and may
lag; nothing relies on them being exact. They, and each mailbox's modify
index, live in documents of their own so that frequent message writes never
rewrite a user or mailbox document and undo a concurrent change to it. A
message document is written by moves and by flag updates; an update that
undid a concurrent move puts the move right again (see ``_redo_move``).

Old usage versions are pruned; see ``_after_usage_version`` for why that is
safe. Raw messages, up to 50 MiB, exceed MongoDB's 16 MB document limit, so
``sources`` holds them in 1 MiB chunks ``key:n``, read back by ``_id``; GridFS
would find chunks by a query that FerretDB v1 answers by scanning every chunk
of every message. Search matches the stored ``terms``, without diacritics, with ``$all``.

FerretDB v1 has no TTL indexes either, so expired authentication log entries
and counters are hidden by a filter on ``expires`` and removed by the purge
methods.

Ids are the caller's ObjectId strings stored as string ``_id``; fixed-length
hex sorts like the ObjectIds, which keyset paging by ``_id`` relies on. Dates
are BSON dates, read back as UTC-aware datetimes.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime, timedelta
from functools import cache, partial, wraps
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

import pymongo.errors
from bson import Binary, ObjectId
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
    Message,
    OverQuotaError,
    PageQuery,
    SearchQuery,
    SearchText,
    Slice,
    Storage,
    User,
)

Document = dict[str, Any]
Record = TypeVar("Record", User, Address, ApplicationPassword, AuthLogEntry, Mailbox, Message)
Owned = TypeVar("Owned", Address, ApplicationPassword, Mailbox)
Item = TypeVar("Item")
Result = TypeVar("Result")

DEFAULT_DATABASE = "merganser"
WRITABLE_USER_FIELDS = frozenset(field.name for field in fields(User)) - {"id", "created"}
WRITABLE_MAILBOX_FIELDS = frozenset({"retention", "subscribed"})
WRITABLE_MESSAGE_FIELDS = frozenset({"flags", "expires"})

SOURCE_CHUNK = 1 << 20
# Per-document operations (chunk reads, message deletions) run this many at a time.
BATCH = 32
# Usage versions: the newest USAGE_KEEP always stay; older ones go once they
# are USAGE_PRUNE_AGE old, checked every USAGE_PRUNE_EVERY versions. A change
# acts only on a read of the newest version younger than USAGE_READ_AGE seconds.
USAGE_KEEP = 8
USAGE_PRUNE_EVERY = 16
USAGE_PRUNE_AGE = timedelta(hours=1)
USAGE_READ_AGE = 60.0
# A mover or deleter waiting for another one to take a message away looks
# again after LEAVE_POLL seconds; a claim to take it that is LEAVE_TIMEOUT old
# was left by a caller that failed half-way and is taken over.
LEAVE_POLL = 0.01
LEAVE_TIMEOUT = timedelta(minutes=1)

# Listings and lookups of messages leave out the search terms, which can be long.
MESSAGE_PROJECTION = {"terms": 0}

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
        IndexModel([("user", ASCENDING), ("_id", ASCENDING)]),
        IndexModel([("user", ASCENDING), ("msgid", ASCENDING)]),
        IndexModel([("user", ASCENDING), ("subject_key", ASCENDING), ("idate", ASCENDING)]),
        IndexModel([("user", ASCENDING), ("thread", ASCENDING), ("_id", ASCENDING)]),
        IndexModel("expires"),
        IndexModel([("user", ASCENDING), ("terms", ASCENDING)]),
    ],
    "journal": [
        IndexModel([("user", ASCENDING), ("seq", ASCENDING)], unique=True),
        IndexModel([("user", ASCENDING), ("mailbox", ASCENDING), ("seq", ASCENDING)]),
    ],
}


# Documents and records


@cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in fields(cls) if field.name != "id")


def _document(record: User | Address | ApplicationPassword | AuthLogEntry | Mailbox | Message) -> Document:
    """A record as stored: its fields under their own names, ``id`` as ``_id``."""
    document = asdict(record)
    document["_id"] = document.pop("id")
    return document


def _user_document(user: User) -> Document:
    """The user plus ``unameview``, the lower-cased username its unique index is on.

    Its ``storage_used`` holds only until the user's first usage version;
    from then on the value lives in the ``usage`` chain and the field stays as it is.
    """
    return {**_document(user), "unameview": user.username.lower()}


def _message_document(message: Message, terms: list[str], source: str, chunks: int) -> Document:
    """The message plus its search ``terms`` and where its raw bytes are: ``chunks`` chunks under key ``source``."""
    return {**_document(message), "terms": _search_terms(terms), "source": source, "chunks": chunks}


def _search_terms(terms: Iterable[str]) -> list[str]:
    """Terms without diacritics, as stored and as searched for, so that "käse" finds "kase" and back.

    The embedded backend's fulltext index ignores diacritics too
    (``remove_diacritics``); both backends must find the same messages.
    """
    return list(dict.fromkeys(map(_without_diacritics, terms)))


def _without_diacritics(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(char for char in decomposed if not unicodedata.combining(char)))


def _record(cls: type[Record], document: Document) -> Record:
    """The record a document holds, leaving out stored extras such as ``unameview``."""
    return cls(id=document["_id"], **{name: document[name] for name in _field_names(cls)})


def _records(cls: type[Record], documents: Slice[Document]) -> Slice[Record]:
    return Slice([_record(cls, document) for document in documents.items], documents.more, documents.total)


def _journal_document(user_id: str, seq: int, event: JournalEvent, created: datetime) -> Document:
    """The entry as stored; a message event's modseq is its own id, so modseqs grow with the journal."""
    return {"user": user_id, "seq": seq, **asdict(event), "modseq": seq if event.message else None, "created": created}


def _journal_entry(document: Document) -> JournalEntry:
    return JournalEntry(id=document["seq"], **{name: document[name] for name in _field_names(JournalEntry)})


def _expunged(mailbox_id: str, message_id: str, uid: int) -> JournalEvent:
    return JournalEvent("EXPUNGE", mailbox=mailbox_id, message=message_id, uid=uid)


def _slot_id(key: str, seq: int) -> str:
    """The ``_id`` of a counter slot: FerretDB v1 can only look documents up quickly by ``_id``."""
    return f"{key}#{seq}"


def _uid_id(mailbox_id: str, uid: int) -> str:
    return f"{mailbox_id}:{uid}"


def _leaving_id(mailbox_id: str, uid: int) -> str:
    """The claim to take the message at ``uid`` away; it is kept, and deleted, with the UID claims."""
    return f"{mailbox_id}:{uid}:gone"


def _usage_id(user_id: str, version: int) -> str:
    """Zero-padded so that a user's versions sort by number under ``_id``, which finds the newest one."""
    return f"{user_id}:{version:012d}"


def _chunk_id(source: str, number: int) -> str:
    return f"{source}:{number}"


def _numbered(owner: str, below: str | None = None) -> Document:
    """A filter for the numbered documents ``owner:…`` of one owner, optionally only those sorting below ``below``."""
    return {"_id": {"$gt": f"{owner}:", "$lt": below or f"{owner};"}}


def _contains(field: str, query: str | None) -> Document:
    """A filter for ``field`` containing ``query`` literally; everything when there is no query."""
    return {field: {"$regex": re.escape(query.lower())}} if query else {}


def _by_user(records: Iterable[Owned]) -> dict[str, list[Owned]]:
    """Records grouped by their user, each group in the order the records came in."""
    found: dict[str, list[Owned]] = {}
    for record in records:
        found.setdefault(record.user, []).append(record)
    return found


async def _each(items: Iterable[Item], work: Callable[[Item], Awaitable[Result]]) -> list[Result]:
    """``work`` for every item, BATCH at a time: many round trips in parallel without flooding the server."""
    pending = list(items)
    results: list[Result] = []
    for start in range(0, len(pending), BATCH):
        results.extend(await asyncio.gather(*(work(item) for item in pending[start : start + BATCH])))
    return results


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


class _MailboxGone(Exception):
    """Raised when a UID was claimed in a mailbox that has been deleted."""


_ANNOUNCE: ContextVar[set[str] | None] = ContextVar("merganser_announce", default=None)
P = ParamSpec("P")
R = TypeVar("R")


def _announced(
    method: Callable[Concatenate[MongoStorage, P], Awaitable[R]],
) -> Callable[Concatenate[MongoStorage, P], Awaitable[R]]:
    """Tell journal listeners of the users this operation journaled for only once it is over.

    Without transactions an entry is stored before the change it describes
    is complete (EXISTS before the message document is inserted), so
    announcing it at once would send a listener to a message it cannot read
    yet. Held back, the announcement covers the common case of one writer
    per user: a feed woken by this operation reads the journal after the
    operation finished its change or took it back (a failed ``add_message``
    journals EXPUNGE after its EXISTS). Listeners are told on failure too.

    It does not hide the entries themselves: each is readable as soon as it
    is stored. A feed that reads the journal while the operation is under
    way, because a concurrent journaled change of the same user announced
    itself or a wake came through the Redis relay, gets the entries early:
    it may briefly see EXISTS for a message it cannot read yet, and then,
    should the operation fail, EXPUNGE for it. A process that dies in
    between leaves such an EXISTS unanswered. Front ends treat a message
    they cannot read as not there.
    """

    @wraps(method)
    async def announcing(self: MongoStorage, *args: P.args, **kwargs: P.kwargs) -> R:
        users: set[str] = set()
        token = _ANNOUNCE.set(users)
        try:
            return await method(self, *args, **kwargs)
        finally:
            _ANNOUNCE.reset(token)
            for user_id in users:
                self._journal_grew(user_id)

    return announcing


class MongoStorage(Storage):
    """Storage in a MongoDB (or FerretDB) database named by the URL's path."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._client: AsyncMongoClient[Document] | None = None
        self._db: AsyncDatabase[Document] | None = None

    async def open(self) -> None:
        self._client = AsyncMongoClient(self.url, tz_aware=True, tzinfo=UTC)
        self._db = self._client.get_default_database(DEFAULT_DATABASE)
        for name, indexes in INDEXES.items():
            # Only the missing ones: FerretDB v1 drops the connection when asked
            # to create an index that already exists, as on every restart.
            existing = {index["name"] async for index in await self._db[name].list_indexes()}
            missing = [index for index in indexes if index.document["name"] not in existing]
            if missing:
                await self._db[name].create_indexes(missing)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        self._client = self._db = None

    def _collection(self, name: str) -> AsyncCollection[Document]:
        assert self._db is not None, "storage is not open"
        return self._db[name]

    async def _page(
        self, collection: str, match: Document, page: PageQuery, key: str = "_id", projection: Document | None = None
    ) -> Slice[Document]:
        """Keyset paging by ``key`` (``_id``, or ``uid`` within a mailbox) shared by every paged listing.

        A backward page is read towards the start of the listing, from the
        item before ``page.before``, and then put back in display order.
        """
        backward = page.before is not None
        edge = page.before if backward else page.after
        ascending = page.descending == backward
        query = dict(match)
        if edge is not None:
            query[key] = {"$gt" if ascending else "$lt": edge}
        coll = self._collection(collection)
        cursor = coll.find(query, projection).sort(key, ASCENDING if ascending else DESCENDING).limit(page.limit + 1)
        documents = await cursor.to_list()
        more = len(documents) > page.limit
        documents = documents[: page.limit]
        if backward:
            documents.reverse()
        total = await coll.count_documents(match)
        return Slice(documents, more, total)

    async def _find(self, collection: str, query: Document, cls: type[Record], sort: str = "_id") -> list[Record]:
        documents = await self._collection(collection).find(query).sort(sort, ASCENDING).to_list()
        return [_record(cls, document) for document in documents]

    async def _find_one(self, collection: str, query: Document, cls: type[Record]) -> Record | None:
        document = await self._collection(collection).find_one(query)
        return _record(cls, document) if document else None

    async def _delete_one(self, collection: str, query: Document) -> bool:
        result = await self._collection(collection).delete_one(query)
        return result.deleted_count > 0

    async def _run_end(self, collection: str, key: Callable[[int], str], start: int) -> tuple[int, Document | None]:
        """Where a run of documents numbered ``start``, ``start + 1``, … ends, found by ``_id`` lookups.

        Returns the first missing number and the document before it (None if
        ``start`` itself is missing). Galloping and then bisecting takes a few
        lookups even when ``start`` lags far behind. It relies on the run
        having no gaps, which holds for UID claims and usage versions: each is
        only inserted once the one before it exists.
        """
        coll = self._collection(collection)
        document = await coll.find_one({"_id": key(start)})
        if document is None:
            return start, None
        low, step = start, 1
        while (found := await coll.find_one({"_id": key(low + step)})) is not None:
            low, document, step = low + step, found, step * 2
        high = low + step
        while high - low > 1:
            middle = (low + high) // 2
            if (found := await coll.find_one({"_id": key(middle)})) is not None:
                low, document = middle, found
            else:
                high = middle
        return high, document

    async def _raise_fields(self, collection: str, document_id: str, values: dict[str, int]) -> bool:
        """Raise fields of a hint document to at least ``values``, creating it if needed; whether it changed.

        Two concurrent upserts of a missing document both insert on FerretDB
        v1; the loser's DuplicateKeyError means the document exists now, so
        it raises the fields there.
        """
        coll = self._collection(collection)
        try:
            result = await coll.update_one({"_id": document_id}, {"$max": values}, upsert=True)
        except pymongo.errors.DuplicateKeyError:
            result = await coll.update_one({"_id": document_id}, {"$max": values})
        return result.modified_count > 0 or result.upserted_id is not None

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

    async def _user(self, document: Document | None) -> User | None:
        """The user a document holds, with storage used taken from the usage chain once there is one."""
        if document is None:
            return None
        user = _record(User, document)
        _, used = await self._usage_head(user.id)
        if used is not None:
            user.storage_used = used
        return user

    async def get_user(self, user_id: str) -> User | None:
        return await self._user(await self._collection("users").find_one({"_id": user_id}))

    async def find_user_by_username(self, username: str) -> User | None:
        return await self._user(await self._collection("users").find_one({"unameview": username.lower()}))

    async def list_users(self, query: str | None, page: PageQuery) -> Slice[User]:
        documents = await self._page("users", _contains("unameview", query), page)
        users = await asyncio.gather(*(self._user(document) for document in documents.items))
        return Slice([user for user in users if user is not None], documents.more, documents.total)

    async def update_user(self, user_id: str, changes: dict[str, Any]) -> bool:
        """Set fields on the user document, except storage used, which becomes a new usage version."""
        unknown = set(changes) - WRITABLE_USER_FIELDS
        if unknown:
            raise ValueError(f"not writable user fields: {sorted(unknown)}")
        users = self._collection("users")
        values = {name: value for name, value in changes.items() if name != "storage_used"}
        if "username" in values:
            values["unameview"] = values["username"].lower()
        if values:
            try:
                result = await users.update_one({"_id": user_id}, {"$set": values})
            except pymongo.errors.OperationFailure as error:
                raise _duplicate_key(error, "username") from None
            found = result.matched_count > 0
        else:
            found = await users.find_one({"_id": user_id}, {"_id": 1}) is not None
        if found and "storage_used" in changes:
            await self._move_usage(user_id, absolute=changes["storage_used"])
        if "twofa_last_step" in values:
            # Steps after the new last one are claimable again.
            await self._collection("twofa_steps").delete_many(
                {"user": user_id, "step": {"$gt": values["twofa_last_step"]}}
            )
        return found

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
        if await self._collection("users").find_one({"_id": user_id}, {"_id": 1}) is None:
            return 0
        used = await self._message_bytes({"user": user_id})
        return await self._move_usage(user_id, absolute=used)

    # Storage used

    async def _usage_head(self, user_id: str, start: int | None = None) -> tuple[int, int | None]:
        """The newest usage version of a user and its value; (0, None) before the first one.

        Probing starts at ``start``, a version known to exist, or else at the
        one the hint document names. Should that version have been pruned
        (the hint fell far behind), the newest one is found by a range query on
        ``_id`` instead, which MongoDB answers from the ``_id`` index and
        FerretDB by scanning the small, pruned collection.
        """
        usage = self._collection("usage")
        if start is None:
            hint = await usage.find_one({"_id": user_id})
            start = hint["version"] if hint else 0
        _, head = await self._run_end("usage", partial(_usage_id, user_id), max(start, 1))
        if head is None and start > 0:
            head = await usage.find_one(_numbered(user_id), sort=[("_id", DESCENDING)])
        return (head["version"], head["used"]) if head else (0, None)

    async def _move_usage(
        self, user_id: str, delta: int = 0, *, absolute: int | None = None, quota: int | None = None
    ) -> int:
        """Change storage used by ``delta`` (or set it to ``absolute``); return the new value.

        The change is the next usage version, inserted under the number after
        the newest one read: of concurrent changes that read the same version
        only one can insert, the others read on from the version they lost.
        That makes it a compare-and-set, so ``quota`` (OverQuotaError if the
        new value would exceed it) holds under concurrency, also on FerretDB.
        """
        usage = self._collection("usage")
        start: int | None = None
        while True:
            read_at = time.monotonic()
            version, used = await self._usage_head(user_id, start)
            if used is None:
                user = await self._collection("users").find_one({"_id": user_id}, {"storage_used": 1})
                used = user["storage_used"] if user else 0
            value = used + delta if absolute is None else absolute
            if quota is not None and value > quota:
                raise OverQuotaError
            if time.monotonic() - read_at > USAGE_READ_AGE:
                start = None
                continue
            start = version + 1
            try:
                await usage.insert_one(
                    {"_id": _usage_id(user_id, start), "version": start, "used": value, "created": datetime.now(UTC)}
                )
            except pymongo.errors.DuplicateKeyError:
                continue
            await self._after_usage_version(user_id, start)
            return value

    async def _after_usage_version(self, user_id: str, version: int) -> None:
        """Point the hint at a new version and, now and then, prune old versions.

        Pruning is what could break the compare-and-set: once a version is
        gone, a change that read the version before it would be able to insert
        it again. A version is therefore only pruned once it is USAGE_PRUNE_AGE
        old, and a change acts only on a read younger than USAGE_READ_AGE, so
        it cannot have read the version before a pruned one as the newest.
        The newest USAGE_KEEP versions always stay, whatever their age.
        """
        await self._raise_fields("usage", user_id, {"version": version})
        if version % USAGE_PRUNE_EVERY == 0:
            await self._collection("usage").delete_many(
                {
                    **_numbered(user_id, below=_usage_id(user_id, version - USAGE_KEEP)),
                    "created": {"$lt": datetime.now(UTC) - USAGE_PRUNE_AGE},
                }
            )

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
        return _records(Address, await self._page("addresses", _contains("addrview", query), page))

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
        match = {"user": user_id, "expires": {"$gt": now}}
        return _records(AuthLogEntry, await self._page("authlog", match, page))

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

    async def _with_state(self, document: Document) -> Document:
        """A mailbox document with the UID hint and modify index its state document has raised."""
        state = await self._collection("mailbox_state").find_one({"_id": document["_id"]})
        if state is not None:
            for name in ("uid_next", "modify_index"):
                document[name] = max(document[name], state.get(name, 0))
        return document

    async def _mailbox(self, document: Document) -> Mailbox:
        """The mailbox a document holds; its ``uid_next`` follows the UID claims past a lagging hint."""
        document = await self._with_state(document)
        document["uid_next"], _ = await self._run_end("uids", partial(_uid_id, document["_id"]), document["uid_next"])
        return _record(Mailbox, document)

    async def _open_mailbox(self, user_id: str, mailbox_id: str) -> Document | None:
        """The mailbox document with its state, for putting a message in; None if it does not exist."""
        document = await self._collection("mailboxes").find_one({"_id": mailbox_id, "user": user_id})
        return await self._with_state(document) if document else None

    async def list_mailboxes(self, user_id: str) -> list[Mailbox]:
        documents = await self._collection("mailboxes").find({"user": user_id}).sort("path", ASCENDING).to_list()
        return list(await asyncio.gather(*(self._mailbox(document) for document in documents)))

    async def get_mailbox(self, user_id: str, mailbox_id: str) -> Mailbox | None:
        document = await self._collection("mailboxes").find_one({"_id": mailbox_id, "user": user_id})
        return await self._mailbox(document) if document else None

    async def _append_journal(self, user_id: str, event: JournalEvent) -> int:
        """Store the event under the id after the user's newest entry; return that id.

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
            announce = _ANNOUNCE.get()
            if announce is None:
                self._journal_grew(user_id)
            else:
                announce.add(user_id)
            return seq

    @_announced
    async def create_mailbox(self, mailbox: Mailbox, event: JournalEvent) -> None:
        try:
            await self._collection("mailboxes").insert_one(_document(mailbox))
        except pymongo.errors.OperationFailure as error:
            raise _duplicate_key(error, "path") from None
        await self._append_journal(mailbox.user, event)

    @_announced
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

    @_announced
    async def delete_mailbox(self, user_id: str, mailbox_id: str, event: JournalEvent) -> int:
        """Delete the mailbox first, then each of its messages, then its UID claims and state.

        Of two concurrent deletions only one removes the mailbox. A message
        that is put into the mailbox after its messages were listed here is
        removed by whoever put it there (see ``_lost_to_deletion``); each
        message is deleted on its own so that exactly one caller frees it.
        """
        if not await self._delete_one("mailboxes", {"_id": mailbox_id, "user": user_id}):
            return -1
        listed = await self._collection("messages").find({"user": user_id, "mailbox": mailbox_id}, {"_id": 1}).to_list()
        taken = await _each(
            listed, lambda document: self._take_message({"_id": document["_id"], "mailbox": mailbox_id})
        )
        freed = await self._release(user_id, [document for document in taken if document is not None])
        await self._collection("uids").delete_many(_numbered(mailbox_id))
        await self._collection("mailbox_state").delete_one({"_id": mailbox_id})
        await self._append_journal(user_id, event)
        return freed

    async def _count_by_mailbox(self, match: Document) -> dict[str, int]:
        cursor = await self._collection("messages").aggregate(
            [{"$match": match}, {"$group": {"_id": "$mailbox", "count": {"$sum": 1}}}]
        )
        return {group["_id"]: group["count"] for group in await cursor.to_list()}

    async def mailbox_counters(self, user_id: str, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        return await self._counters({"user": user_id}, mailbox_ids)

    async def _counters(self, match: Document, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        """Count all and seen messages separately: FerretDB v1 has no ``$cond`` to do both in one pass."""
        if not mailbox_ids:
            return {}
        match = {**match, "mailbox": {"$in": mailbox_ids}}
        totals = await self._count_by_mailbox(match)
        seen = await self._count_by_mailbox({**match, "flags": "\\Seen"})
        return {
            mailbox_id: MailboxCounters(
                total=totals.get(mailbox_id, 0), unseen=totals.get(mailbox_id, 0) - seen.get(mailbox_id, 0)
            )
            for mailbox_id in mailbox_ids
        }

    # Messages

    async def _claim_uid(self, user_id: str, mailbox_id: str, start: int) -> int:
        """Claim the first free UID of a mailbox at or after ``start``, the mailbox's UID hint.

        The claim's unique ``_id`` gives each UID to one caller only. Claims
        stay until the mailbox is deleted, so a UID is never handed out again,
        not even after its message (the highest one, say) is gone. Deleting a
        mailbox deletes its claims after the mailbox, so a claim that finds the
        mailbox still there was not made after its claims were deleted, where
        it could take a UID a message still has; otherwise _MailboxGone.
        """
        uids = self._collection("uids")
        key = partial(_uid_id, mailbox_id)
        uid = start
        while True:
            uid, _ = await self._run_end("uids", key, uid)
            try:
                await uids.insert_one({"_id": key(uid)})
            except pymongo.errors.DuplicateKeyError:
                uid += 1
                continue
            break
        if await self._collection("mailboxes").find_one({"_id": mailbox_id, "user": user_id}, {"_id": 1}) is None:
            await uids.delete_one({"_id": key(uid)})
            raise _MailboxGone
        return uid

    async def _settle_mailbox(self, user_id: str, mailbox_id: str, uid: int | None = None) -> None:
        """After a message event, raise the mailbox's UID hint past ``uid`` and its modify index.

        The modify index is raised to the newest message event journaled for
        the mailbox, again and again until raising changes nothing: like in
        ``_raise_twofa_last_step``, a concurrent write on FerretDB v1 can put
        back an older value, and whichever change of the mailbox settles last
        stores the newest one.
        """
        journal = self._collection("journal")
        while True:
            newest = await journal.find_one(
                {"user": user_id, "mailbox": mailbox_id, "modseq": {"$ne": None}},
                {"seq": 1},
                sort=[("seq", DESCENDING)],
            )
            values = {"modify_index": newest["seq"] if newest else 0}
            if uid is not None:
                values["uid_next"] = uid + 1
            if not await self._raise_fields("mailbox_state", mailbox_id, values):
                return

    async def _store_source(self, source: str, raw: bytes) -> None:
        """Store raw bytes as chunks ``source:0``, ``source:1``, … of SOURCE_CHUNK bytes."""
        chunks = [
            {"_id": _chunk_id(source, number), "data": Binary(raw[offset : offset + SOURCE_CHUNK])}
            for number, offset in enumerate(range(0, len(raw), SOURCE_CHUNK))
        ]
        if chunks:
            await self._collection("sources").insert_many(chunks)

    async def _drop_source(self, document: Document) -> None:
        """Delete a message's chunks one by one: FerretDB v1 would scan the whole collection for ``$in``."""
        sources = self._collection("sources")
        await _each(
            range(document.get("chunks", 0)),
            lambda number: sources.delete_one({"_id": _chunk_id(document["source"], number)}),
        )

    async def _release(self, user_id: str, documents: list[Document]) -> int:
        """Drop the sources of messages this call deleted and give back their bytes; return the bytes."""
        await _each(documents, self._drop_source)
        freed = sum(document["size"] for document in documents)
        if freed:
            await self._move_usage(user_id, -freed)
        return freed

    async def _depart(self, match: Document) -> Document | None:
        """The message ``match`` finds, once this call holds the claim to take it from where it is.

        Moving and deleting change where a message is (or whether it is) by
        an update or a delete that FerretDB v1 does not apply atomically, so
        they first claim the message's place with a unique insert. Of
        concurrent moves and deletions one goes ahead; the others wait until
        the message has left that place and then act on it where it went, as
        if they had come after. Returns None if the message is gone. The
        claim is for good: the caller must go on to move or delete the
        message; a claim whose caller failed before that is taken over once it
        is LEAVE_TIMEOUT old.
        """
        messages, uids = self._collection("messages"), self._collection("uids")
        while (document := await messages.find_one(match, MESSAGE_PROJECTION)) is not None:
            claim = _leaving_id(document["mailbox"], document["uid"])
            try:
                await uids.insert_one({"_id": claim, "at": datetime.now(UTC)})
            except pymongo.errors.DuplicateKeyError:
                await uids.delete_one({"_id": claim, "at": {"$lt": datetime.now(UTC) - LEAVE_TIMEOUT}})
                await asyncio.sleep(LEAVE_POLL)
                continue
            return document
        return None

    async def _take_message(self, match: Document) -> Document | None:
        """Delete the message ``match`` finds and return it; None if another caller took it first."""
        document = await self._depart(match)
        if document is not None:
            await self._delete_one("messages", {"_id": document["_id"]})
        return document

    async def _lost_to_deletion(self, message: Message) -> bool:
        """Whether the message's mailbox was deleted while the message was put in; if so, remove it again.

        ``delete_mailbox`` removes the mailbox before it lists the messages, so
        a message put in after that listing is noticed here, and one put in
        before it is deleted there; only one of the two deletes it.
        """
        mailbox = {"_id": message.mailbox, "user": message.user}
        if await self._collection("mailboxes").find_one(mailbox, {"_id": 1}) is not None:
            return False
        document = await self._take_message({"_id": message.id, "mailbox": message.mailbox})
        if document is not None:
            await self._append_journal(message.user, _expunged(message.mailbox, message.id, message.uid))
            await self._release(message.user, [document])
        return True

    @_announced
    async def add_message(self, message: Message, raw: bytes, search: SearchText, quota: int | None) -> Message | None:
        """Charge the bytes, store the source, claim a UID, journal EXISTS and only then insert the message.

        A failure before the message is inserted takes all of it back: the
        source, the bytes and, if EXISTS went out, an EXPUNGE for it. Its
        UID claim stays, so that UID is skipped.
        """
        mailbox = await self._open_mailbox(message.user, message.mailbox)
        if mailbox is None:
            return None
        await self._move_usage(message.user, message.size, quota=quota)
        # A key of its own, not the message id, so that taking a failed message back
        # can never touch the source of another message (a reused id, say).
        source = {"source": str(ObjectId()), "chunks": -(-len(raw) // SOURCE_CHUNK), "size": message.size}
        stored: Message | None = None
        try:
            await self._store_source(source["source"], raw)
            uid = await self._claim_uid(message.user, message.mailbox, mailbox["uid_next"])
            exists = JournalEvent(
                "EXISTS",
                mailbox=message.mailbox,
                message=message.id,
                uid=uid,
                data={"flags": list(message.flags), "thread": message.thread},
            )
            stored = replace(message, uid=uid, modseq=await self._append_journal(message.user, exists))
            document = _message_document(stored, search.terms(), source["source"], source["chunks"])
            await self._collection("messages").insert_one(document)
        except _MailboxGone:
            await self._release(message.user, [source])
            return None
        except BaseException:
            if stored is not None:
                await self._append_journal(message.user, _expunged(stored.mailbox, stored.id, stored.uid))
            await self._release(message.user, [source])
            raise
        if await self._lost_to_deletion(stored):
            return None
        await self._settle_mailbox(message.user, message.mailbox, uid)
        return stored

    async def get_message(self, user_id: str, message_id: str) -> Message | None:
        document = await self._collection("messages").find_one({"_id": message_id, "user": user_id}, MESSAGE_PROJECTION)
        return _record(Message, document) if document else None

    async def get_message_source(self, user_id: str, message_id: str) -> bytes | None:
        """The chunks, read by ``_id`` in parallel; None if the message is gone or goes while being read."""
        document = await self._collection("messages").find_one(
            {"_id": message_id, "user": user_id}, {"source": 1, "chunks": 1}
        )
        if document is None:
            return None
        sources = self._collection("sources")
        chunks = await _each(
            range(document.get("chunks", 0)),
            lambda number: sources.find_one({"_id": _chunk_id(document["source"], number)}),
        )
        if any(chunk is None for chunk in chunks):
            return None
        return b"".join(chunk["data"] for chunk in chunks if chunk is not None)

    async def list_messages(self, user_id: str, mailbox_id: str, page: PageQuery) -> Slice[Message]:
        return await self._message_page(user_id, mailbox_id, page)

    async def _message_page(self, user_id: str, mailbox_id: str, page: PageQuery) -> Slice[Message]:
        """Keyset pages on the unique (mailbox, uid) index; the total is counted, as no counter is kept."""
        match = {"user": user_id, "mailbox": mailbox_id}
        return _records(Message, await self._page("messages", match, page, key="uid", projection=MESSAGE_PROJECTION))

    async def search_messages(self, user_id: str, query: SearchQuery, page: PageQuery) -> Slice[Message]:
        """Messages whose stored terms include every query term, keyed by id (ids grow with time)."""
        if not query.terms:
            return Slice([], False, 0)
        match: Document = {"user": user_id, "terms": {"$all": _search_terms(query.terms)}}
        mailbox: Document = {}
        if query.mailbox is not None:
            mailbox["$eq"] = query.mailbox
        if query.exclude:
            mailbox["$nin"] = list(query.exclude)
        if mailbox:
            match["mailbox"] = mailbox
        return _records(Message, await self._page("messages", match, page, projection=MESSAGE_PROJECTION))

    async def find_thread(self, user_id: str, msgids: list[str], subject_key: str, since: datetime) -> str | None:
        messages = self._collection("messages")
        if msgids:
            document = await messages.find_one({"user": user_id, "msgid": {"$in": msgids}}, {"thread": 1})
            if document is not None:
                return document["thread"]
        if not subject_key:
            return None
        document = await messages.find_one(
            {"user": user_id, "subject_key": subject_key, "idate": {"$gte": since}},
            {"thread": 1},
            sort=[("idate", DESCENDING)],
        )
        return document["thread"] if document else None

    @_announced
    async def update_message(self, user_id: str, message_id: str, changes: dict[str, Any]) -> Message | None:
        """Set flags and/or expiry; a change of flags is journaled first, as its id is the new modseq.

        Concurrent updates of one message may lose one another's changes on
        FerretDB v1 (the last write wins), but each change of flags is journaled.
        """
        unknown = set(changes) - WRITABLE_MESSAGE_FIELDS
        if unknown:
            raise ValueError(f"not writable message fields: {sorted(unknown)}")
        messages = self._collection("messages")
        document = await messages.find_one({"_id": message_id, "user": user_id}, MESSAGE_PROJECTION)
        if document is None:
            return None
        message = _record(Message, document)
        values: Document = {}
        if "expires" in changes:
            message.expires = values["expires"] = changes["expires"]
        flags = list(changes.get("flags", message.flags))
        flagged = sorted(flags) != sorted(message.flags)
        if flagged:
            fetch = JournalEvent(
                "FETCH", mailbox=message.mailbox, message=message.id, uid=message.uid, data={"flags": list(flags)}
            )
            message.flags = values["flags"] = flags
            message.modseq = values["modseq"] = await self._append_journal(user_id, fetch)
        if values:
            result = await messages.update_one({"_id": message_id, "user": user_id}, {"$set": values})
            if result.matched_count == 0:
                return None
            for name, value in (await self._redo_move(document, values)).items():
                setattr(message, name, value)
        if flagged:
            await self._settle_mailbox(user_id, document["mailbox"])
        return message

    async def _redo_move(self, document: Document, values: Document) -> Document:
        """Move the message again if an update of it, written over a concurrent move, put it back.

        On FerretDB v1 an update writes back the whole document it read, so
        one that read the message before a move and wrote after it returns the
        message to the place it left. A mover notes the new place on its claim
        before it moves the message; if the place this update read has such a
        claim, the message goes there again, keeping the ``values`` this update
        set. Returns the fields that changed.
        """
        claim = await self._collection("uids").find_one({"_id": _leaving_id(document["mailbox"], document["uid"])})
        if claim is None or "to" not in claim:
            return {}
        redo = {**claim["to"], **values, "modseq": max(claim["to"]["modseq"], values.get("modseq", 0))}
        where = {name: document[name] for name in ("_id", "mailbox", "uid")}
        result = await self._collection("messages").update_one(where, {"$set": redo})
        return redo if result.matched_count else {}

    @_announced
    async def move_message(
        self, user_id: str, message_id: str, target_mailbox_id: str, expires: datetime | None
    ) -> Message | None:
        """Claim a UID in the target and the message's place, journal EXPUNGE and EXISTS, then move it.

        The UID comes first: once the place is claimed the message must move.
        """
        match = {"_id": message_id, "user": user_id}
        target = await self._open_mailbox(user_id, target_mailbox_id)
        if target is None or await self._collection("messages").find_one(match, {"_id": 1}) is None:
            return None
        try:
            uid = await self._claim_uid(user_id, target_mailbox_id, target["uid_next"])
        except _MailboxGone:
            return None
        document = await self._depart(match)
        if document is None:
            return None
        message = _record(Message, document)
        source, old_uid = message.mailbox, message.uid
        await self._append_journal(user_id, _expunged(source, message_id, old_uid))
        exists = JournalEvent(
            "EXISTS",
            mailbox=target_mailbox_id,
            message=message_id,
            uid=uid,
            data={"flags": list(message.flags), "thread": message.thread},
        )
        moved = replace(
            message,
            mailbox=target_mailbox_id,
            uid=uid,
            modseq=await self._append_journal(user_id, exists),
            expires=expires,
        )
        destination = {"mailbox": moved.mailbox, "uid": moved.uid, "modseq": moved.modseq, "expires": expires}
        await self._collection("uids").update_one({"_id": _leaving_id(source, old_uid)}, {"$set": {"to": destination}})
        await self._collection("messages").update_one({"_id": message_id}, {"$set": destination})
        await self._settle_mailbox(user_id, source)
        if await self._lost_to_deletion(moved):
            return None
        await self._settle_mailbox(user_id, target_mailbox_id, uid)
        return moved

    @_announced
    async def delete_messages(self, user_id: str, message_ids: list[str]) -> int:
        """Delete each message on its own; only the caller whose delete removed it journals it and frees it."""
        taken = await _each(message_ids, lambda message_id: self._take_message({"_id": message_id, "user": user_id}))
        documents = [document for document in taken if document is not None]
        for document in documents:
            await self._append_journal(user_id, _expunged(document["mailbox"], document["_id"], document["uid"]))
        await _each({document["mailbox"] for document in documents}, partial(self._settle_mailbox, user_id))
        return await self._release(user_id, documents)

    async def expired_messages(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        if limit <= 0:
            return []  # MongoDB reads a limit of 0 as no limit
        cursor = self._collection("messages").find({"expires": {"$lte": now}}, {"user": 1}).limit(limit)
        return [(document["user"], document["_id"]) for document in await cursor.to_list()]

    # Journal

    async def last_journal_id(self, user_id: str) -> int:
        newest = await self._collection("journal").find_one({"user": user_id}, {"seq": 1}, sort=[("seq", DESCENDING)])
        return newest["seq"] if newest else 0

    async def read_journal(self, user_id: str, after: int, limit: int) -> list[JournalEntry]:
        if limit <= 0:
            return []  # MongoDB reads a limit of 0 as no limit
        cursor = self._collection("journal").find({"user": user_id, "seq": {"$gt": after}})
        documents = await cursor.sort("seq", ASCENDING).limit(limit).to_list()
        return [_journal_entry(document) for document in documents]

    # Several records at once

    async def get_users(self, user_ids: list[str]) -> dict[str, User]:
        documents = await self._collection("users").find({"_id": {"$in": user_ids}}).to_list()
        users = await _each(documents, self._user)
        return {user.id: user for user in users if user is not None}

    async def mailboxes_of_users(self, user_ids: list[str]) -> dict[str, list[Mailbox]]:
        cursor = self._collection("mailboxes").find({"user": {"$in": user_ids}}).sort("path", ASCENDING)
        return _by_user(await _each(await cursor.to_list(), self._mailbox))

    async def addresses_of_users(self, user_ids: list[str]) -> dict[str, list[Address]]:
        return _by_user(await self._find("addresses", {"user": {"$in": user_ids}}, Address))

    async def asps_of_users(self, user_ids: list[str]) -> dict[str, list[ApplicationPassword]]:
        return _by_user(await self._find("asps", {"user": {"$in": user_ids}}, ApplicationPassword))

    async def counters_of_mailboxes(self, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        """Counted like ``mailbox_counters``, for mailboxes of any users."""
        return await self._counters({}, mailbox_ids)

    async def list_messages_of_mailboxes(self, listings: list[tuple[str, str, PageQuery]]) -> list[Slice[Message]]:
        """Each page on the (mailbox, uid) index, several at a time: FerretDB v1 cannot limit per group."""
        return await _each(listings, lambda listing: self._message_page(*listing))

    async def thread_messages(self, threads: list[tuple[str, str]], limit: int) -> dict[tuple[str, str], list[Message]]:
        """One query per thread, several at a time, each reading at most ``limit`` off the (user, thread, _id) index.

        One query for all threads would fetch every message of a long thread,
        and FerretDB v1 cannot limit per group. FerretDB v1 answers only
        ``_id`` lookups from an index, so there each of these queries scans
        the messages, as ``list_messages_of_mailboxes`` does per listing.
        """
        if limit <= 0:
            return {}  # MongoDB reads a limit of 0 as no limit
        messages = self._collection("messages")

        async def oldest(key: tuple[str, str]) -> list[Document]:
            user_id, thread_id = key
            cursor = messages.find({"user": user_id, "thread": thread_id}, MESSAGE_PROJECTION)
            return await cursor.sort("_id", ASCENDING).limit(limit).to_list()

        wanted = list(dict.fromkeys(threads))
        return {
            key: [_record(Message, document) for document in documents]
            for key, documents in zip(wanted, await _each(wanted, oldest), strict=True)
            if documents
        }

    async def delete_user(self, user_id: str) -> bool:
        """Addresses go first, so that no more mail is delivered, then the user document.

        Each mailbox is then deleted as ``delete_mailbox`` does, which also
        removes a message whose delivery was under way; what is left of the
        user's bookkeeping goes last.
        """
        await self._collection("addresses").delete_many({"user": user_id})
        if not await self._delete_one("users", {"_id": user_id}):
            return False
        for document in await self._collection("mailboxes").find({"user": user_id}, {"path": 1}).to_list():
            event = JournalEvent("DELETE", mailbox=document["_id"], data={"path": document["path"]})
            await self.delete_mailbox(user_id, document["_id"], event)
        for name in ("asps", "twofa_steps", "authlog", "journal"):
            await self._collection(name).delete_many({"user": user_id})
        await self._collection("usage").delete_many(_numbered(user_id))
        await self._collection("usage").delete_one({"_id": user_id})
        return True
