"""Messages: delivery, listing, reading, flags, moves, expiry and search.

A message is stored exactly as received (plus a ``Delivered-To`` header on
delivery) so its source can be served byte for byte; what listings show is
extracted once, at delivery, into the message's summary. Details such as the
HTML body and attachments are read from the source when asked for, so they can
never disagree with it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, field_validator

from merganser.errors import NotAllowedError, NotFoundError, QuotaExceededError, ValidationError
from merganser.resolvers.context import Core
from merganser.resolvers.ids import check_id, new_id
from merganser.resolvers.inputs import Input, Paging
from merganser.resolvers.lookup import get_user
from merganser.resolvers.mailboxes import INBOX, THIRTY_DAYS_MS, find_mailbox
from merganser.resolvers.normalize import normalize_address
from merganser.resolvers.paging import PageResult, page_query, page_result, paginate
from merganser.resolvers.parse_pool import ParsePool
from merganser.resolvers.parsing import (
    AttachmentInfo,
    Contact,
    Digest,
    ParsedMessage,
    digest_message,
    find_attachment,
    normalize_subject,
    parse_message,
    search_terms,
    tokenize_query,
)
from merganser.storage.base import Mailbox, Message, OverQuotaError, PageQuery, SearchQuery, SearchText, Slice, User

T = TypeVar("T")
FLAGS = {"seen": "\\Seen", "flagged": "\\Flagged", "draft": "\\Draft", "deleted": "\\Deleted"}
THREAD_WINDOW = timedelta(days=30)
# Parsing a large message takes long enough to stall other connections, so it
# moves to a worker thread; small ones are parsed in place, which is cheaper.
THREAD_PARSE_THRESHOLD = 256 * 1024
# Recipient addresses seen lately, with their lookup form: validating one
# costs more than looking it up, and an MTA names the same few many times.
ADDRESS_CACHE_SIZE = 4096
SEARCH_BODY_LIMIT = 256 * 1024
GC_BATCH = 500
_ATTACHMENT_ID = re.compile(r"ATT\d{5}")
_EXCLUDED_FROM_SEARCH = ("\\Trash", "\\Junk")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message parsed once for every recipient it is delivered to."""

    raw: bytes
    digest: Digest
    search: SearchText


@dataclass(frozen=True, slots=True)
class MessageDetails:
    message: Message
    parsed: ParsedMessage


def _contact(contact: Contact | None) -> dict[str, str] | None:
    return {"address": contact.address, "name": contact.name} if contact else None


def _summary(digest: Digest) -> dict[str, Any]:
    return {
        "from": _contact(digest.from_),
        "to": [_contact(contact) for contact in digest.to],
        "cc": [_contact(contact) for contact in digest.cc],
        "subject": digest.subject,
        "messageId": digest.message_id,
        "date": digest.date.isoformat() if digest.date else None,
        "intro": digest.intro,
        "attachments": digest.attachments,
    }


def _search_text(digest: Digest) -> SearchText:
    people = [digest.from_, *digest.to, *digest.cc]
    contacts = " ".join(f"{person.name} {person.address}" for person in people if person)
    return SearchText(digest.subject, contacts, digest.text[:SEARCH_BODY_LIMIT], partial(search_terms, digest))


async def prepare(raw: bytes, parsers: ParsePool | None = None) -> Prepared:
    """Parse a message, in a worker process if ``parsers`` can; malformed MIME still yields a usable result."""
    digest = await parsers.digest(raw) if parsers is not None else None
    if digest is None:
        digest = await _in_process(digest_message, raw)
    return Prepared(raw, digest, _search_text(digest))


def _expiry(mailbox: Mailbox, now: datetime) -> datetime | None:
    """When a message arriving in the mailbox now expires under its retention."""
    return now + timedelta(milliseconds=mailbox.retention) if mailbox.retention else None


async def _thread(core: Core, user_id: str, digest: Digest, now: datetime) -> str:
    """Join the thread the message replies to, or one with the same subject lately."""
    references = list(dict.fromkeys([*digest.in_reply_to, *digest.references]))
    subject = normalize_subject(digest.subject)
    found = await core.storage.find_thread(user_id, references, subject, now - THREAD_WINDOW)
    return found or new_id()


async def store(
    core: Core, user: User, mailbox: Mailbox, prepared: Prepared, flags: list[str], idate: datetime | None = None
) -> Message:
    """Store a prepared message in a mailbox, within the user's quota."""
    now = datetime.now(UTC)
    digest = prepared.digest
    message = Message(
        id=new_id(),
        user=user.id,
        mailbox=mailbox.id,
        uid=0,
        modseq=0,
        thread=await _thread(core, user.id, digest, now),
        size=len(prepared.raw),
        idate=idate or now,
        flags=flags,
        summary=_summary(digest),
        msgid=digest.message_id,
        subject_key=normalize_subject(digest.subject),
        expires=_expiry(mailbox, now),
    )
    try:
        stored = await core.storage.add_message(message, prepared.raw, prepared.search, user.quota)
    except OverQuotaError:
        raise QuotaExceededError(f"Mailbox is full: storing {message.size} bytes would exceed the quota") from None
    if stored is None:
        raise NotFoundError("Unknown mailbox", "MailboxNotFound")
    return stored


# Delivery


@lru_cache(maxsize=ADDRESS_CACHE_SIZE)
def _addrview(address: str) -> str:
    return normalize_address(address).addrview


async def resolve_recipient(core: Core, address: str) -> User:
    """The active user an address belongs to, or an error saying why there is none."""
    try:
        addrview = _addrview(address)
    except ValidationError:
        raise NotFoundError(f"Unknown recipient {address!r}", "UserNotFound") from None
    found = await core.storage.find_address(addrview)
    user = await core.storage.get_user(found.user) if found else None
    if user is None:
        raise NotFoundError(f"Unknown recipient {address!r}", "UserNotFound")
    if user.disabled:
        raise NotAllowedError(f"Mailbox {address!r} is disabled", "UserDisabled")
    return user


def _with_delivered_to(raw: bytes, address: str) -> bytes:
    """Prepend the header, ending it the way the message's own first line ends."""
    end = raw.find(b"\n")
    newline = b"\r\n" if end > 0 and raw[end - 1 : end] == b"\r" else b"\n"
    return b"Delivered-To: " + address.encode() + newline + raw


async def deliver(core: Core, user: User, recipient: str, prepared: Prepared, sender: str) -> Message:
    """Deliver to a user's INBOX, then hand copies to forwarding if the user asked."""
    inbox = next((mailbox for mailbox in await core.storage.list_mailboxes(user.id) if mailbox.path == INBOX), None)
    if inbox is None:
        raise NotFoundError("The user has no INBOX", "MailboxNotFound")
    raw = _with_delivered_to(prepared.raw, recipient)
    stored = await store(core, user, inbox, Prepared(raw, prepared.digest, prepared.search), [])
    if core.forwarder is not None:
        core.forwarder.dispatch(user, raw, sender)
    return stored


# Upload


def _parse_date(value: Any) -> Any:
    """Accept an ISO 8601 date or a millisecond timestamp, as UTC when no zone is given."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expected an ISO 8601 date or a timestamp in milliseconds") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**47:
            raise ValueError("timestamp out of range")
        return datetime.fromtimestamp(value / 1000, UTC)
    return value


class MessageOptions(Input):
    """Flags and the received date of a message added through the API."""

    seen: bool = False
    flagged: bool = False
    draft: bool = False
    deleted: bool = False
    date: datetime | None = None

    _date = field_validator("date", mode="before")(lambda value: _parse_date(value))


class UploadMessage(MessageOptions):
    raw: Annotated[str, Field(min_length=1)]


def _flags(data: MessageOptions | UpdateMessage, current: list[str] | None = None) -> list[str]:
    """Flags after applying the given booleans; other flags are kept."""
    flags = dict.fromkeys(current or [])
    for name, flag in FLAGS.items():
        value = getattr(data, name)
        if value is True:
            flags[flag] = None
        elif value is False:
            flags.pop(flag, None)
    return list(flags)


async def upload(core: Core, user_id: str, mailbox_id: str, options: MessageOptions, raw: bytes) -> Message:
    """Add a message through the API (a draft, a sent copy, an import)."""
    mailbox = await find_mailbox(core, user_id, mailbox_id)
    user = await get_user(core, user_id)
    if not raw.strip():
        raise ValidationError("The message is empty")
    if len(raw) > core.settings.max_message_size:
        raise ValidationError(f"Message is larger than {core.settings.max_message_size} bytes")
    return await store(core, user, mailbox, await prepare(raw), _flags(options), options.date)


# Reading


class ListMessages(Paging):
    order: Literal["asc", "desc"] = "desc"


def _listing(mailbox_id: str) -> str:
    """The name a mailbox's message listing gives its cursors."""
    return f"messages:{mailbox_id}"


def message_page_query(mailbox_id: str, data: ListMessages) -> PageQuery:
    """What to fetch for a page of a mailbox's messages: by UID, newest first unless ``order`` says otherwise."""
    return page_query(data, _listing(mailbox_id), data.order == "desc", numeric=True)


def message_page(mailbox_id: str, data: ListMessages, query: PageQuery, found: Slice[Message]) -> PageResult[Message]:
    """The page ``query`` (from ``message_page_query``) found, with its cursors."""
    return page_result(_listing(mailbox_id), data, query, found, lambda message: message.uid)


async def list_messages(
    core: Core, user_id: str, mailbox_id: str, data: ListMessages
) -> tuple[Mailbox, PageResult[Message]]:
    mailbox = await find_mailbox(core, user_id, mailbox_id)
    query = message_page_query(mailbox.id, data)
    found = await core.storage.list_messages(mailbox.user, mailbox.id, query)
    return mailbox, message_page(mailbox.id, data, query, found)


async def find_message(core: Core, user_id: str, mailbox_id: str, message_id: str) -> tuple[Mailbox, Message]:
    """A message of the user in the given mailbox; anything else is not found."""
    mailbox = await find_mailbox(core, user_id, mailbox_id)
    message = await core.storage.get_message(mailbox.user, check_id(message_id, "message"))
    if message is None or message.mailbox != mailbox.id:
        raise NotFoundError("Unknown message", "MessageNotFound")
    return mailbox, message


async def _source_of(core: Core, message: Message) -> bytes:
    raw = await core.storage.get_message_source(message.user, message.id)
    if raw is None:
        raise NotFoundError("Unknown message", "MessageNotFound")
    return raw


async def source(core: Core, user_id: str, mailbox_id: str, message_id: str) -> bytes:
    """The message exactly as stored."""
    _, message = await find_message(core, user_id, mailbox_id, message_id)
    return await _source_of(core, message)


async def _in_process(parse: Callable[[bytes], T], raw: bytes) -> T:
    if len(raw) > THREAD_PARSE_THRESHOLD:
        return await asyncio.to_thread(parse, raw)
    return parse(raw)


async def get_message(core: Core, user_id: str, mailbox_id: str, message_id: str) -> MessageDetails:
    _, message = await find_message(core, user_id, mailbox_id, message_id)
    return await details(core, message)


async def details(core: Core, message: Message) -> MessageDetails:
    """What only the source tells of a message the caller already found (HTML, text, attachments)."""
    return MessageDetails(message, await _in_process(parse_message, await _source_of(core, message)))


async def attachment(
    core: Core, user_id: str, mailbox_id: str, message_id: str, attachment_id: str
) -> tuple[AttachmentInfo, bytes]:
    if not _ATTACHMENT_ID.fullmatch(attachment_id):
        raise ValidationError(f"Invalid attachment id {attachment_id!r}: expected ATT followed by 5 digits")
    raw = await source(core, user_id, mailbox_id, message_id)
    found = await asyncio.to_thread(find_attachment, raw, attachment_id)
    if found is None:
        raise NotFoundError("Unknown attachment", "AttachmentNotFound")
    return found


# Changes


class UpdateMessage(Input):
    seen: bool | None = None
    flagged: bool | None = None
    draft: bool | None = None
    deleted: bool | None = None
    expires: datetime | Literal[False] | None = None
    newMailbox: str | None = None

    _expires = field_validator("expires", mode="before")(lambda value: _parse_date(value))


def _capped(mailbox: Mailbox, expires: datetime | None, now: datetime) -> datetime | None:
    """Trash and Junk keep nothing longer than their retention, whatever was asked."""
    if mailbox.special_use not in ("\\Trash", "\\Junk"):
        return expires
    cap = now + timedelta(milliseconds=mailbox.retention or THIRTY_DAYS_MS)
    return min(expires, cap) if expires else cap


@dataclass(frozen=True, slots=True)
class UpdateResult:
    message: Message
    moved: bool


async def update_message(
    core: Core, user_id: str, mailbox_id: str, message_id: str, data: UpdateMessage
) -> UpdateResult:
    mailbox, message = await find_message(core, user_id, mailbox_id, message_id)
    target = await find_mailbox(core, user_id, data.newMailbox) if data.newMailbox else None
    now = datetime.now(UTC)
    changes: dict[str, Any] = {}
    flags = _flags(data, message.flags)
    if flags != message.flags:
        changes["flags"] = flags
    if data.expires is not None:
        changes["expires"] = _capped(mailbox, data.expires or None, now)
    if changes:
        updated = await core.storage.update_message(message.user, message.id, changes)
        if updated is None:
            raise NotFoundError("Unknown message", "MessageNotFound")
        message = updated
    if target is None or target.id == message.mailbox:
        return UpdateResult(message, moved=False)
    expires = message.expires if data.expires is not None else _expiry(target, now)
    moved = await core.storage.move_message(message.user, message.id, target.id, _capped(target, expires, now))
    if moved is None:
        raise NotFoundError("Unknown message or mailbox", "MessageNotFound")
    return UpdateResult(moved, moved=True)


async def delete_message(core: Core, user_id: str, mailbox_id: str, message_id: str) -> None:
    """Delete a message for good (a concurrent delete of the same one is no error)."""
    _, message = await find_message(core, user_id, mailbox_id, message_id)
    await core.storage.delete_messages(message.user, [message.id])


async def collect_garbage(core: Core, now: datetime | None = None) -> int:
    """Delete every message whose expiry has passed; return how many went."""
    now = now or datetime.now(UTC)
    deleted = 0
    while batch := await core.storage.expired_messages(now, GC_BATCH):
        by_user: dict[str, list[str]] = {}
        for user_id, message_id in batch:
            by_user.setdefault(user_id, []).append(message_id)
        for user_id, message_ids in by_user.items():
            await core.storage.delete_messages(user_id, message_ids)
        deleted += len(batch)
        if len(batch) < GC_BATCH:
            break
    return deleted


# Search


class SearchMessages(Paging):
    query: Annotated[str, Field(min_length=1, max_length=1024)]
    mailbox: str | None = None


async def search(core: Core, user_id: str, data: SearchMessages) -> PageResult[Message]:
    """Account-wide search; Trash and Junk are left out unless asked for by mailbox."""
    user = await get_user(core, user_id)
    terms = tokenize_query(data.query)
    if not terms:
        raise ValidationError("query: no searchable words")
    if data.mailbox is not None:
        mailbox = await find_mailbox(core, user.id, data.mailbox)
        query = SearchQuery(terms, mailbox=mailbox.id)
    else:
        excluded = [
            mailbox.id
            for mailbox in await core.storage.list_mailboxes(user.id)
            if mailbox.special_use in _EXCLUDED_FROM_SEARCH
        ]
        query = SearchQuery(terms, exclude=excluded)
    return await paginate(
        "search",
        data,
        lambda page: core.storage.search_messages(user.id, query, page),
        lambda message: message.id,
        descending=True,
        numeric=None,
    )
