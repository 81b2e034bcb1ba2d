"""The storage interface every backend implements.

Records are plain dataclasses so that the core never sees a backend's row or
document types. Methods are deliberately small and rule-free: they store and
fetch, allocate counters atomically, and append journal entries in the same
operation as the change they describe. Deciding *whether* a change is allowed
is the job of ``merganser.resolvers``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class DuplicateKeyError(Exception):
    """A unique key (username, address, mailbox path) is already taken.

    ``key`` names which one, so the core can say precisely what clashed.
    """

    def __init__(self, key: Literal["username", "address", "path"]) -> None:
        super().__init__(f"duplicate {key}")
        self.key = key


class OverQuotaError(Exception):
    """Storing a message would take the user past the quota it was stored under."""


@dataclass(slots=True)
class User:
    id: str
    username: str
    name: str
    password_hash: str
    address: str
    language: str
    quota: int
    retention: int
    recipients: int
    forwards: int
    created: datetime
    forward: str | None = None
    target_url: str | None = None
    storage_used: int = 0
    disabled: bool = False
    activated: bool = True
    twofa_enabled: bool = False
    twofa_seed: str | None = None
    twofa_pending_seed: str | None = None
    twofa_last_step: int = 0


@dataclass(slots=True)
class Address:
    id: str
    user: str
    address: str
    addrview: str
    created: datetime


@dataclass(slots=True)
class ApplicationPassword:
    id: str
    user: str
    description: str
    scopes: list[str]
    password_hash: str
    created: datetime


@dataclass(slots=True)
class AuthLogEntry:
    id: str
    user: str | None
    action: str
    result: str
    created: datetime
    expires: datetime
    ip: str | None = None
    protocol: str | None = None
    scope: str | None = None
    asp: str | None = None
    username: str | None = None


@dataclass(slots=True)
class Mailbox:
    id: str
    user: str
    path: str
    special_use: str | None
    subscribed: bool
    retention: int
    uid_validity: int
    uid_next: int
    modify_index: int
    created: datetime

    @property
    def name(self) -> str:
        """The last segment of the path, as shown to people."""
        return self.path.rsplit("/", 1)[-1]


@dataclass(slots=True)
class Message:
    """One stored message; its raw bytes are kept apart and exactly as received.

    ``summary`` holds what listings show (from, subject, date, intro, …) so a
    listing never has to parse a message. ``msgid`` and ``subject_key`` are
    what threading looks messages up by.
    """

    id: str
    user: str
    mailbox: str
    uid: int
    modseq: int
    thread: str
    size: int
    idate: datetime
    flags: list[str]
    summary: dict[str, Any]
    msgid: str | None = None
    subject_key: str = ""
    expires: datetime | None = None

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags


@dataclass(frozen=True, slots=True)
class SearchText:
    """What a message is found by: plain text per field, and its word tokens.

    Backends with a fulltext engine index the text; others store the tokens,
    which ``terms`` computes only when called, since tokenizing a message is
    a good part of the cost of delivering it.
    """

    subject: str
    contacts: str
    body: str
    terms: Callable[[], list[str]]


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Messages of a user containing every term, optionally within one mailbox."""

    terms: list[str]
    mailbox: str | None = None
    exclude: list[str] = field(default_factory=list)


@dataclass(slots=True)
class JournalEvent:
    """A change to append to a user's journal.

    Storage assigns its id; for a message event that id is also the
    message's new modseq, so modseqs grow with the journal.
    """

    command: str
    mailbox: str | None = None
    message: str | None = None
    uid: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class JournalEntry:
    id: int
    user: str
    command: str
    created: datetime
    mailbox: str | None = None
    message: str | None = None
    uid: int | None = None
    modseq: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PageQuery:
    """A keyset page request: stable while rows are added elsewhere.

    ``after``/``before`` are sort keys (record ids, or UIDs for messages in a
    mailbox) of the last item of the previous page or the first item of the
    next one. ``descending`` reverses
    the listing order (newest first).
    """

    limit: int
    after: str | int | None = None
    before: str | int | None = None
    descending: bool = False


@dataclass(slots=True)
class Slice(Generic[T]):
    """A page of records in display order.

    ``more`` tells whether further records exist beyond the slice in the
    direction of travel (after the last item for a forward page, before the
    first one for a backward page).
    """

    items: list[T]
    more: bool
    total: int
    keys: list[str | int] | None = None
    """Paging keys of the items, where the backend pages by something other
    than the record id (a search index's own row order, say)."""


@dataclass(slots=True)
class MailboxCounters:
    total: int = 0
    unseen: int = 0


class Storage(abc.ABC):
    """What the core needs from a database.

    Every backend tells its journal listeners, by user id, when that user's
    journal has grown: after the change is committed, so a listener that
    reads the journal finds it. Listeners only learn *that* something
    changed; the journal itself says what.
    """

    def __init__(self) -> None:
        self._journal_listeners: list[Callable[[str], None]] = []

    def add_journal_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(user_id)`` after each committed change that journals for that user."""
        self._journal_listeners.append(listener)

    def _journal_grew(self, user_id: str) -> None:
        for listener in self._journal_listeners:
            try:
                listener(user_id)
            except Exception:
                log.exception("journal listener failed")

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema and indexes."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the instance cannot be used afterwards."""

    # Users

    @abc.abstractmethod
    async def create_user(self, user: User, address: Address, mailboxes: list[Mailbox]) -> None:
        """Store a new user with its main address and default mailboxes.

        Raises DuplicateKeyError("username" | "address") and stores nothing
        in that case.
        """

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User | None: ...

    @abc.abstractmethod
    async def find_user_by_username(self, username: str) -> User | None:
        """Look a user up by username, case-insensitively."""

    @abc.abstractmethod
    async def list_users(self, query: str | None, page: PageQuery) -> Slice[User]:
        """Users whose username contains ``query`` (case-insensitive)."""

    @abc.abstractmethod
    async def update_user(self, user_id: str, changes: dict[str, Any]) -> bool:
        """Set the given User fields; False if the user does not exist."""

    @abc.abstractmethod
    async def claim_twofa_step(self, user_id: str, step: int) -> bool:
        """Record TOTP time step ``step`` as used if it is newer than the last one.

        Atomic compare-and-set: of two concurrent callers presenting the same
        token, exactly one gets True. This is what makes a token single-use.
        """

    @abc.abstractmethod
    async def recalculate_storage(self, user_id: str) -> int:
        """Set storage used to the sum of the user's message sizes; return it."""

    # Addresses

    @abc.abstractmethod
    async def add_address(self, address: Address) -> None:
        """Raises DuplicateKeyError("address") if ``addrview`` is taken."""

    @abc.abstractmethod
    async def get_address(self, address_id: str) -> Address | None: ...

    @abc.abstractmethod
    async def find_address(self, addrview: str) -> Address | None: ...

    @abc.abstractmethod
    async def list_user_addresses(self, user_id: str) -> list[Address]: ...

    @abc.abstractmethod
    async def search_addresses(self, query: str | None, page: PageQuery) -> Slice[Address]:
        """Addresses whose normalized form contains ``query``."""

    @abc.abstractmethod
    async def delete_address(self, user_id: str, address_id: str) -> bool: ...

    # Application-specific passwords

    @abc.abstractmethod
    async def add_asp(self, asp: ApplicationPassword) -> None: ...

    @abc.abstractmethod
    async def list_asps(self, user_id: str) -> list[ApplicationPassword]: ...

    @abc.abstractmethod
    async def delete_asp(self, user_id: str, asp_id: str) -> bool: ...

    # Authentication log

    @abc.abstractmethod
    async def add_authlog(self, entry: AuthLogEntry) -> None: ...

    @abc.abstractmethod
    async def list_authlog(self, user_id: str, now: datetime, page: PageQuery) -> Slice[AuthLogEntry]:
        """Entries of a user that have not expired at ``now``."""

    @abc.abstractmethod
    async def purge_authlog(self, now: datetime) -> int:
        """Delete entries that expired before ``now``; return how many."""

    # Failure counters for rate limiting

    @abc.abstractmethod
    async def increment_counter(self, key: str, expires: datetime) -> int:
        """Atomically add one to the counter ``key``; return the new value."""

    @abc.abstractmethod
    async def get_counter(self, key: str, now: datetime) -> int:
        """The counter's value, or 0 if it does not exist or has expired."""

    @abc.abstractmethod
    async def purge_counters(self, now: datetime) -> int: ...

    # Mailboxes

    @abc.abstractmethod
    async def list_mailboxes(self, user_id: str) -> list[Mailbox]:
        """All mailboxes of a user, ordered by path."""

    @abc.abstractmethod
    async def get_mailbox(self, user_id: str, mailbox_id: str) -> Mailbox | None: ...

    @abc.abstractmethod
    async def create_mailbox(self, mailbox: Mailbox, event: JournalEvent) -> None:
        """Store a mailbox and journal its creation.

        Raises DuplicateKeyError("path") if the user already has that path.
        """

    @abc.abstractmethod
    async def rename_mailboxes(self, user_id: str, renames: list[tuple[str, str]], events: list[JournalEvent]) -> None:
        """Apply (mailbox id, new path) pairs and journal them.

        Raises DuplicateKeyError("path") if a new path is taken; on the
        embedded backend nothing is changed in that case.
        """

    @abc.abstractmethod
    async def update_mailbox(self, user_id: str, mailbox_id: str, changes: dict[str, Any]) -> bool:
        """Set Mailbox fields that need no journal entry (retention, subscribed)."""

    @abc.abstractmethod
    async def delete_mailbox(self, user_id: str, mailbox_id: str, event: JournalEvent) -> int:
        """Delete a mailbox and its messages and journal it.

        Returns the number of bytes freed (already subtracted from the user's
        storage used); -1 if the mailbox did not exist.
        """

    @abc.abstractmethod
    async def mailbox_counters(self, user_id: str, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        """Total and unseen message counts for several mailboxes at once."""

    # Messages

    @abc.abstractmethod
    async def add_message(self, message: Message, raw: bytes, search: SearchText, quota: int | None) -> Message | None:
        """Store a message under the next UID of its mailbox and journal it.

        ``message.uid`` and ``message.modseq`` are ignored: the UID is
        allocated here (strictly increasing per mailbox, never reused, also
        under concurrency) and the modseq is the id of the EXISTS journal
        entry written with it. The mailbox's ``uid_next``, ``modify_index``
        and counters and the user's storage used move with it. With ``quota``
        set, raises OverQuotaError and stores nothing if storage used plus the
        message size would exceed it. Returns the stored message, or None if
        the mailbox no longer exists.
        """

    @abc.abstractmethod
    async def get_message(self, user_id: str, message_id: str) -> Message | None: ...

    @abc.abstractmethod
    async def get_message_source(self, user_id: str, message_id: str) -> bytes | None: ...

    @abc.abstractmethod
    async def list_messages(self, user_id: str, mailbox_id: str, page: PageQuery) -> Slice[Message]:
        """Messages of a mailbox in UID order; the page keys are UIDs (ints).

        Costs must not grow with the mailbox: pages are found through the
        (mailbox, uid) index and ``total`` comes from the mailbox's counter.
        """

    @abc.abstractmethod
    async def search_messages(self, user_id: str, query: SearchQuery, page: PageQuery) -> Slice[Message]:
        """Messages matching every term, newest first.

        The backend chooses the paging keys (message ids, or the positions in
        its search index) and returns them in ``Slice.keys``.
        """

    @abc.abstractmethod
    async def find_thread(self, user_id: str, msgids: list[str], subject_key: str, since: datetime) -> str | None:
        """The thread of the user's message whose Message-ID is one of ``msgids``,
        else of the newest message with ``subject_key`` received at or after
        ``since`` (only if ``subject_key`` is not empty), else None."""

    @abc.abstractmethod
    async def update_message(self, user_id: str, message_id: str, changes: dict[str, Any]) -> Message | None:
        """Set ``flags`` and/or ``expires`` (None clears it).

        A change of flags is journaled as FETCH with a new modseq and moves
        the mailbox's modify index and unseen counter. Returns the updated
        message, or None if it does not exist.
        """

    @abc.abstractmethod
    async def move_message(
        self, user_id: str, message_id: str, target_mailbox_id: str, expires: datetime | None
    ) -> Message | None:
        """Move a message: it gets the next UID of the target and leaves the source.

        Journaled as EXPUNGE in the source and EXISTS in the target; counters
        of both mailboxes follow; ``expires`` replaces the old value. Returns
        the moved message, or None if the message or the target is gone.
        """

    @abc.abstractmethod
    async def delete_messages(self, user_id: str, message_ids: list[str]) -> int:
        """Delete messages, journaling EXPUNGE for each; return the bytes freed."""

    @abc.abstractmethod
    async def expired_messages(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(user id, message id) of up to ``limit`` messages whose ``expires`` has passed."""

    # Journal

    @abc.abstractmethod
    async def read_journal(self, user_id: str, after: int, limit: int) -> list[JournalEntry]:
        """Journal entries with id greater than ``after``, oldest first."""

    @abc.abstractmethod
    async def last_journal_id(self, user_id: str) -> int:
        """The id of the user's newest committed journal entry, 0 if there is none."""

    # Several records at once, for front ends that resolve nested fields of many
    # parents in one go (GraphQL's DataLoaders): one call instead of one per parent.

    @abc.abstractmethod
    async def get_users(self, user_ids: list[str]) -> dict[str, User]:
        """The users among ``user_ids`` that exist, by id."""

    @abc.abstractmethod
    async def mailboxes_of_users(self, user_ids: list[str]) -> dict[str, list[Mailbox]]:
        """Every mailbox of each given user, ordered by path; a user with none has no entry."""

    @abc.abstractmethod
    async def addresses_of_users(self, user_ids: list[str]) -> dict[str, list[Address]]:
        """Each given user's addresses, in ``list_user_addresses`` order; a user with none has no entry."""

    @abc.abstractmethod
    async def asps_of_users(self, user_ids: list[str]) -> dict[str, list[ApplicationPassword]]:
        """Each given user's application passwords, in ``list_asps`` order; a user with none has no entry."""

    @abc.abstractmethod
    async def counters_of_mailboxes(self, mailbox_ids: list[str]) -> dict[str, MailboxCounters]:
        """Total and unseen counts of mailboxes of any users, by id; unknown ids count zero."""

    @abc.abstractmethod
    async def list_messages_of_mailboxes(self, listings: list[tuple[str, str, PageQuery]]) -> list[Slice[Message]]:
        """A page of each (user id, mailbox id, page), in the order given, exactly as ``list_messages`` pages."""

    @abc.abstractmethod
    async def thread_messages(self, threads: list[tuple[str, str]], limit: int) -> dict[tuple[str, str], list[Message]]:
        """The oldest ``limit`` messages of each (user id, thread id), oldest first; a thread with none has no entry."""

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> bool:
        """Delete a user and everything stored for it: addresses, application passwords,
        mailboxes, messages, journal and authlog. False if the user did not exist."""
