"""Mailboxes: the default set, paths, renames and deletion rules.

Paths use ``/`` as the separator. Parents need not exist, as in the reference.
``INBOX`` is matched case-insensitively (as IMAP requires) and can be neither
renamed nor deleted; special-use mailboxes cannot be deleted either, because
mail clients rely on finding them.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field

from merganser.errors import ConflictError, NotAllowedError, NotFoundError, ValidationError
from merganser.resolvers.context import Core
from merganser.resolvers.ids import check_id, new_id
from merganser.resolvers.inputs import Count, Input
from merganser.resolvers.lookup import get_user
from merganser.storage.base import DuplicateKeyError, JournalEvent, Mailbox, MailboxCounters

INBOX = "INBOX"
SEPARATOR = "/"
MAX_PATH_LENGTH = 1024
MAX_SEGMENT_LENGTH = 255
MAX_DEPTH = 32
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000

SPECIAL_USES = ("\\Sent", "\\Drafts", "\\Junk", "\\Trash", "\\Archive")
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "en": ("Sent Mail", "Drafts", "Junk", "Trash", "Archive"),
    "et": ("Saadetud kirjad", "Mustandid", "Rämpspost", "Prügikast", "Arhiiv"),
    "de": ("Gesendet", "Entwürfe", "Spam", "Papierkorb", "Archiv"),
}
CAPPED_RETENTION = frozenset({"\\Junk", "\\Trash"})

_last_uid_validity = 0


def next_uid_validity() -> int:
    """A UIDVALIDITY that differs from every earlier one handed out here.

    IMAP clients discard their cache when it changes, so a mailbox deleted and
    created again within the same second must still get a new value.
    """
    global _last_uid_validity
    _last_uid_validity = max(_last_uid_validity + 1, int(time.time()))
    return _last_uid_validity


def capped_retention(retention: int, special_use: str | None) -> int:
    """Trash and Junk keep messages for 30 days at most."""
    if special_use in CAPPED_RETENTION:
        return min(retention, THIRTY_DAYS_MS) if retention else THIRTY_DAYS_MS
    return retention


def default_mailboxes(user_id: str, language: str, retention: int) -> list[Mailbox]:
    """The mailboxes every new user gets, named in the user's language."""
    names = DEFAULT_NAMES.get(language.split("-")[0].lower(), DEFAULT_NAMES["en"])
    now = datetime.now(UTC)
    specials: list[tuple[str, str | None]] = [(INBOX, None), *zip(names, SPECIAL_USES, strict=True)]
    return [
        Mailbox(
            id=new_id(),
            user=user_id,
            path=path,
            special_use=special_use,
            subscribed=True,
            retention=capped_retention(retention, special_use),
            uid_validity=next_uid_validity(),
            uid_next=1,
            modify_index=0,
            created=now,
        )
        for path, special_use in specials
    ]


def normalize_path(value: str) -> str:
    """Validate a mailbox path and bring it to its canonical form."""
    path = unicodedata.normalize("NFC", value)
    if not path or len(path) > MAX_PATH_LENGTH:
        raise ValidationError(f"path: must be 1 to {MAX_PATH_LENGTH} characters")
    segments = path.split(SEPARATOR)
    if len(segments) > MAX_DEPTH:
        raise ValidationError(f"path: at most {MAX_DEPTH} levels")
    for segment in segments:
        if not segment.strip():
            raise ValidationError("path: empty folder name (check for doubled, leading or trailing slashes)")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise ValidationError(f"path: folder names are limited to {MAX_SEGMENT_LENGTH} characters")
        if any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in segment):
            raise ValidationError("path: control characters are not allowed")
    if segments[0].upper() == INBOX:
        segments[0] = INBOX
    return SEPARATOR.join(segments)


Retention = Count | Literal[False]


class ListMailboxes(Input):
    counters: bool = False


class CreateMailbox(Input):
    path: Annotated[str, Field(max_length=MAX_PATH_LENGTH * 4)]
    retention: Retention = 0
    subscribed: bool = True


class UpdateMailbox(Input):
    path: Annotated[str, Field(max_length=MAX_PATH_LENGTH * 4)] | None = None
    retention: Retention | None = None
    subscribed: bool | None = None


@dataclass(frozen=True, slots=True)
class MailboxView:
    mailbox: Mailbox
    counters: MailboxCounters | None


def display_order(mailboxes: list[Mailbox]) -> list[Mailbox]:
    """INBOX first, then by path, as mail clients list folders."""
    return sorted(mailboxes, key=lambda mailbox: (mailbox.path != INBOX, mailbox.path))


async def list_mailboxes(core: Core, user_id: str, data: ListMailboxes) -> list[MailboxView]:
    user = await get_user(core, user_id)
    mailboxes = display_order(await core.storage.list_mailboxes(user.id))
    if not data.counters:
        return [MailboxView(mailbox, None) for mailbox in mailboxes]
    found = await core.storage.mailbox_counters(user.id, [mailbox.id for mailbox in mailboxes])
    return [MailboxView(mailbox, found[mailbox.id]) for mailbox in mailboxes]


async def find_mailbox(core: Core, user_id: str, mailbox_id: str) -> Mailbox:
    user = await get_user(core, user_id)
    mailbox = await core.storage.get_mailbox(user.id, check_id(mailbox_id, "mailbox"))
    if mailbox is None:
        raise NotFoundError("Unknown mailbox", "MailboxNotFound")
    return mailbox


async def get_mailbox(core: Core, user_id: str, mailbox_id: str) -> MailboxView:
    mailbox = await find_mailbox(core, user_id, mailbox_id)
    found = await core.storage.mailbox_counters(mailbox.user, [mailbox.id])
    return MailboxView(mailbox, found[mailbox.id])


async def create_mailbox(core: Core, user_id: str, data: CreateMailbox) -> Mailbox:
    user = await get_user(core, user_id)
    path = normalize_path(data.path)
    mailbox = Mailbox(
        id=new_id(),
        user=user.id,
        path=path,
        special_use=None,
        subscribed=data.subscribed,
        retention=int(data.retention),
        uid_validity=next_uid_validity(),
        uid_next=1,
        modify_index=0,
        created=datetime.now(UTC),
    )
    event = JournalEvent("CREATE", mailbox=mailbox.id, data={"path": path, "name": mailbox.name})
    try:
        await core.storage.create_mailbox(mailbox, event)
    except DuplicateKeyError:
        raise ConflictError(f"Mailbox {path!r} already exists", "MailboxExists") from None
    return mailbox


async def update_mailbox(core: Core, user_id: str, mailbox_id: str, data: UpdateMailbox) -> None:
    mailbox = await find_mailbox(core, user_id, mailbox_id)
    changes: dict[str, object] = {}
    if data.retention is not None:
        changes["retention"] = capped_retention(int(data.retention), mailbox.special_use)
    if data.subscribed is not None:
        changes["subscribed"] = data.subscribed
    if data.path is not None:
        await _rename(core, mailbox, normalize_path(data.path))
    if changes:
        await core.storage.update_mailbox(mailbox.user, mailbox.id, changes)


async def _rename(core: Core, mailbox: Mailbox, path: str) -> None:
    """Rename a mailbox and, as IMAP does, every mailbox below it."""
    if path == mailbox.path:
        return
    if mailbox.path == INBOX:
        raise NotAllowedError("INBOX can not be renamed")
    if path == INBOX or path.startswith(mailbox.path + SEPARATOR):
        raise NotAllowedError(f"Can not rename {mailbox.path!r} to {path!r}")
    prefix = mailbox.path + SEPARATOR
    moved = [
        (other, path + other.path[len(mailbox.path) :])
        for other in await core.storage.list_mailboxes(mailbox.user)
        if other.id == mailbox.id or other.path.startswith(prefix)
    ]
    if any(len(new_path) > MAX_PATH_LENGTH for _, new_path in moved):
        raise ValidationError(f"path: renaming would make a path longer than {MAX_PATH_LENGTH} characters")
    events = [
        JournalEvent(
            "RENAME",
            mailbox=other.id,
            data={"path": new_path, "name": new_path.rsplit(SEPARATOR, 1)[-1], "oldPath": other.path},
        )
        for other, new_path in moved
    ]
    try:
        await core.storage.rename_mailboxes(mailbox.user, [(other.id, new_path) for other, new_path in moved], events)
    except DuplicateKeyError:
        raise ConflictError(f"Mailbox {path!r} already exists", "MailboxExists") from None


async def delete_mailbox(core: Core, user_id: str, mailbox_id: str) -> None:
    mailbox = await find_mailbox(core, user_id, mailbox_id)
    if mailbox.path == INBOX or mailbox.special_use:
        raise NotAllowedError(f"Special mailbox {mailbox.path!r} can not be deleted")
    event = JournalEvent("DELETE", mailbox=mailbox.id, data={"path": mailbox.path})
    if await core.storage.delete_mailbox(mailbox.user, mailbox.id, event) < 0:
        raise NotFoundError("Unknown mailbox", "MailboxNotFound")
