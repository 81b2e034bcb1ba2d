"""The GraphQL object types, each made from the core's records.

Fields a client reads on every request (a user's settings and limits, a
message's summary) are plain attributes, filled when the object is made, so
resolving them costs nothing beyond copying. Fields that need more work (a
user's mailboxes, a mailbox's counters and messages, a message's thread and
body) are resolvers that run only when asked for, through the request's
DataLoaders so that many parents cost one storage call per level.

Secrets never appear: there is no field for password hashes, 2FA seeds or
application passwords (the one exception, a new application password, is
returned once by the mutation that creates it, as REST does).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Generic, TypeVar

import strawberry
from strawberry import ID, Private

from merganser.errors import NotFoundError
from merganser.resolvers import auth, mailboxes, messages, updates
from merganser.resolvers.addresses import AddressView
from merganser.resolvers.inputs import DEFAULT_PAGE_SIZE, Paging
from merganser.resolvers.messages import ListMessages
from merganser.resolvers.paging import PageResult
from merganser.resolvers.parsing import AttachmentInfo
from merganser.resolvers.summaries import flag_states, sent_date
from merganser.resolvers.updates import event_payload
from merganser.schema.context import Info
from merganser.schema.inputs import page_input
from merganser.schema.scalars import DateTime, Long
from merganser.storage.base import ApplicationPassword as ApplicationPasswordRecord
from merganser.storage.base import AuthLogEntry as AuthLogEntryRecord
from merganser.storage.base import JournalEntry
from merganser.storage.base import Mailbox as MailboxRecord
from merganser.storage.base import Message as MessageRecord
from merganser.storage.base import User as UserRecord

T = TypeVar("T")
R = TypeVar("R")


# Connections


@strawberry.type(description="Where a page sits in its listing; pass endCursor as `after` for the next page.")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type(description="One item of a page with the cursor that continues the listing after it.")
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type(description="A page of a listing; `totalCount` counts the whole listing.")
class Connection(Generic[T]):
    total_count: int
    page_info: PageInfo
    nodes: list[T]
    cursor_of: Private[Callable[[int], str]]

    @strawberry.field(description="The items with their cursors (`nodes` is the same without them).")
    def edges(self) -> list[Edge[T]]:
        return [Edge(cursor=self.cursor_of(index), node=node) for index, node in enumerate(self.nodes)]


def connection(page: PageResult[R], make: Callable[[R], T]) -> Connection[T]:
    """A keyset page of the core as a connection; item cursors continue the listing like REST's ``next``."""
    last = len(page.items) - 1
    return Connection(
        total_count=page.total,
        page_info=PageInfo(
            has_next_page=page.next is not None,
            has_previous_page=page.previous is not None,
            start_cursor=page.cursor(0) if page.items else None,
            end_cursor=page.cursor(last) if page.items else None,
        ),
        nodes=[make(item) for item in page.items],
        cursor_of=page.cursor,
    )


# Users


@strawberry.type(description="Storage: the quota and what the user's messages take.")
class Quota:
    allowed: Long
    used: Long


@strawberry.type(description="A daily sending limit; usage is not counted yet, so `used` is 0 and `ttl` null.")
class Allowance:
    allowed: Long
    used: Long
    ttl: Long | None


@strawberry.type
class Limits:
    quota: Quota
    recipients: Allowance
    forwards: Allowance


@strawberry.type(description="A user account (the fields of REST's GET /users/{id}).")
class User:
    id: ID
    username: str
    name: str
    address: str = strawberry.field(description="The main address.")
    language: str
    forward: str | None
    target_url: str | None
    retention: Long | None = strawberry.field(description="Milliseconds new messages are kept; null for ever.")
    enabled2fa: bool
    limits: Limits
    activated: bool
    disabled: bool
    created: DateTime
    record: Private[UserRecord]

    @classmethod
    def from_record(cls, user: UserRecord) -> User:
        return cls(
            id=ID(user.id),
            username=user.username,
            name=user.name,
            address=user.address,
            language=user.language,
            forward=user.forward,
            target_url=user.target_url,
            retention=Long(user.retention) if user.retention else None,
            enabled2fa=user.twofa_enabled,
            limits=Limits(
                quota=Quota(allowed=Long(user.quota), used=Long(user.storage_used)),
                recipients=Allowance(allowed=Long(user.recipients), used=Long(0), ttl=None),
                forwards=Allowance(allowed=Long(user.forwards), used=Long(0), ttl=None),
            ),
            activated=user.activated,
            disabled=user.disabled,
            created=DateTime(user.created),
            record=user,
        )

    @strawberry.field(description="Every address of the user, the main one flagged.")
    async def addresses(self, info: Info) -> list[Address]:
        return [Address.from_view(view) for view in await info.context.loaders.addresses.load(self.record)]

    @strawberry.field(description="The user's mailboxes, INBOX first.")
    async def mailboxes(self, info: Info) -> list[Mailbox]:
        return [Mailbox.from_record(mailbox) for mailbox in await info.context.loaders.mailboxes.load(self.id)]

    @strawberry.field(description="One mailbox of the user.")
    async def mailbox(self, info: Info, id: ID) -> Mailbox:
        return Mailbox.from_record(await mailboxes.find_mailbox(info.context.core, self.id, id))

    @strawberry.field(description="Application-specific passwords (never the passwords themselves).")
    async def application_passwords(self, info: Info) -> list[ApplicationPassword]:
        found = await info.context.loaders.asps.load(self.id)
        return [ApplicationPassword.from_record(asp) for asp in found]

    @strawberry.field(description="Authentication and security events, newest first.")
    async def authlog(
        self, info: Info, first: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> Connection[AuthLogEntry]:
        page = await auth.list_authlog(info.context.core, self.id, page_input(Paging, first, after))
        return connection(page, AuthLogEntry.from_record)

    @strawberry.field(
        description="Messages containing every word of `query`, newest first; Trash and Junk only when named."
    )
    async def search(
        self,
        info: Info,
        query: str,
        mailbox: ID | None = None,
        first: int = DEFAULT_PAGE_SIZE,
        after: str | None = None,
    ) -> Connection[Message]:
        data = page_input(messages.SearchMessages, first, after, query=query, mailbox=mailbox)
        return connection(await messages.search(info.context.core, self.id, data), Message.from_record)


# Addresses


@strawberry.type(description="An email address of a user.")
class Address:
    id: ID
    address: str
    main: bool = strawberry.field(description="Whether this is the user's main address.")
    created: DateTime
    user_id: Private[str]

    @classmethod
    def from_view(cls, view: AddressView) -> Address:
        address = view.address
        return cls(
            id=ID(address.id),
            address=address.address,
            main=view.main,
            created=DateTime(address.created),
            user_id=address.user,
        )

    @strawberry.field(description="The user the address belongs to.")
    async def user(self, info: Info) -> User | None:
        found = await info.context.loaders.users.load(self.user_id)
        return User.from_record(found) if found else None


# Application passwords and the authentication log


@strawberry.type(description="An application-specific password: a secret for one mail client, limited to scopes.")
class ApplicationPassword:
    id: ID
    description: str
    scopes: list[str]
    created: DateTime

    @classmethod
    def from_record(cls, asp: ApplicationPasswordRecord) -> ApplicationPassword:
        return cls(id=ID(asp.id), description=asp.description, scopes=list(asp.scopes), created=DateTime(asp.created))


@strawberry.type(description="A new application-specific password; `password` is shown this once only.")
class CreatedApplicationPassword:
    application_password: ApplicationPassword
    password: str


@strawberry.type(description="An authentication or security event of a user.")
class AuthLogEntry:
    id: ID
    action: str
    result: str
    scope: str | None
    protocol: str | None
    asp: ID | None = strawberry.field(description="The application-specific password used, if one was.")
    ip: str | None
    created: DateTime

    @classmethod
    def from_record(cls, entry: AuthLogEntryRecord) -> AuthLogEntry:
        return cls(
            id=ID(entry.id),
            action=entry.action,
            result=entry.result,
            scope=entry.scope,
            protocol=entry.protocol,
            asp=ID(entry.asp) if entry.asp else None,
            ip=entry.ip,
            created=DateTime(entry.created),
        )


@strawberry.type(description="A successful authentication.")
class AuthResult:
    id: ID
    username: str
    scope: str
    require2fa: bool = strawberry.field(description="A 2FA token must be checked (checkTwoFactor) to finish.")
    user: User

    @classmethod
    def from_result(cls, result: auth.AuthResult) -> AuthResult:
        return cls(
            id=ID(result.user.id),
            username=result.user.username,
            scope=result.scope,
            require2fa=result.require2fa,
            user=User.from_record(result.user),
        )


@strawberry.type(description="A started 2FA enrolment: scan the QR code, then confirm with enableTwoFactor.")
class TwoFactorSetup:
    qrcode: str = strawberry.field(description="A data: URL of a PNG image.")


# Mailboxes and messages


@strawberry.enum(description="Listing order by UID.")
class MessageOrder(Enum):
    ASC = "asc"
    DESC = "desc"


@strawberry.type(description="A mailbox (folder) of a user.")
class Mailbox:
    id: ID
    name: str
    path: str
    special_use: str | None
    modify_index: Long
    subscribed: bool
    retention: Long | None = strawberry.field(description="Milliseconds messages arriving here are kept.")
    uid_validity: Long
    uid_next: Long
    user_id: Private[str]

    @classmethod
    def from_record(cls, mailbox: MailboxRecord) -> Mailbox:
        return cls(
            id=ID(mailbox.id),
            name=mailbox.name,
            path=mailbox.path,
            special_use=mailbox.special_use,
            modify_index=Long(mailbox.modify_index),
            subscribed=mailbox.subscribed,
            retention=Long(mailbox.retention) if mailbox.retention else None,
            uid_validity=Long(mailbox.uid_validity),
            uid_next=Long(mailbox.uid_next),
            user_id=mailbox.user,
        )

    @strawberry.field(description="How many messages the mailbox holds.")
    async def total(self, info: Info) -> int:
        return (await info.context.loaders.counters.load(self.id)).total

    @strawberry.field(description="How many of them are not seen.")
    async def unseen(self, info: Info) -> int:
        return (await info.context.loaders.counters.load(self.id)).unseen

    @strawberry.field(description="The mailbox's messages by UID, newest first unless `order` says otherwise.")
    async def messages(
        self,
        info: Info,
        first: int = DEFAULT_PAGE_SIZE,
        after: str | None = None,
        order: MessageOrder = MessageOrder.DESC,
    ) -> Connection[Message]:
        data = page_input(ListMessages, first, after, order=order.value)
        page = await info.context.loaders.message_pages.load((self.user_id, self.id, data))
        return connection(page, Message.from_record)

    @strawberry.field(description="One message of the mailbox.")
    async def message(self, info: Info, id: ID) -> Message:
        _, found = await messages.find_message(info.context.core, self.user_id, self.id, id)
        return Message.from_record(found)


@strawberry.type(description="A name and an address, from a message's headers.")
class Contact:
    name: str
    address: str

    @classmethod
    def from_summary(cls, value: dict[str, str]) -> Contact:
        return cls(name=value.get("name", ""), address=value.get("address", ""))


def _contacts(values: list[dict[str, str] | None]) -> list[Contact]:
    return [Contact.from_summary(value) for value in values if value]


@strawberry.type(description="A part of a message shown as an attachment.")
class Attachment:
    id: str = strawberry.field(description="ATT00001… as REST's attachment URL uses it.")
    filename: str
    content_type: str
    disposition: str
    size: int = strawberry.field(description="Bytes of the decoded content.")

    @classmethod
    def from_info(cls, info: AttachmentInfo) -> Attachment:
        return cls(
            id=info.id,
            filename=info.filename,
            content_type=info.content_type,
            disposition=info.disposition,
            size=info.size,
        )


@strawberry.type(description="A stored message; `html`, `text` and `attachments` read its source, so cost more.")
class Message:
    id: ID
    mailbox_id: ID
    thread_id: ID
    uid: Long
    size: Long = strawberry.field(description="Bytes of the stored message.")
    from_: Contact | None = strawberry.field(name="from")
    to: list[Contact]
    cc: list[Contact]
    subject: str
    date: DateTime = strawberry.field(description="The Date header, or when the message arrived if it has none.")
    intro: str = strawberry.field(description="The start of the text.")
    has_attachments: bool
    seen: bool
    flagged: bool
    draft: bool
    deleted: bool
    flags: list[str] = strawberry.field(description="Every IMAP flag of the message.")
    message_id: str | None = strawberry.field(description="The Message-ID header.")
    expires: DateTime | None
    user_id: Private[str]
    record: Private[MessageRecord]

    @classmethod
    def from_record(cls, message: MessageRecord) -> Message:
        summary: dict[str, Any] = message.summary
        flags = flag_states(message)
        sender = summary.get("from")
        return cls(
            id=ID(message.id),
            mailbox_id=ID(message.mailbox),
            thread_id=ID(message.thread),
            uid=Long(message.uid),
            size=Long(message.size),
            from_=Contact.from_summary(sender) if sender else None,
            to=_contacts(summary.get("to", [])),
            cc=_contacts(summary.get("cc", [])),
            subject=summary.get("subject", ""),
            date=DateTime(sent_date(message)),
            intro=summary.get("intro", ""),
            has_attachments=bool(summary.get("attachments")),
            seen=flags["seen"],
            flagged=flags["flagged"],
            draft=flags["draft"],
            deleted=flags["deleted"],
            flags=list(message.flags),
            message_id=summary.get("messageId"),
            expires=DateTime(message.expires) if message.expires else None,
            user_id=message.user,
            record=message,
        )

    @strawberry.field(description="The thread the message belongs to.")
    def thread(self) -> Thread:
        return Thread(id=self.thread_id, user_id=self.user_id)

    @strawberry.field(description="The HTML parts (plain text converted when there is no HTML).")
    async def html(self, info: Info) -> list[str]:
        return list((await self._details(info)).parsed.html)

    @strawberry.field(description="The plain text.")
    async def text(self, info: Info) -> str:
        return (await self._details(info)).parsed.text

    @strawberry.field(description="Attachments; download them from REST's attachments URL.")
    async def attachments(self, info: Info) -> list[Attachment]:
        return [Attachment.from_info(item) for item in (await self._details(info)).parsed.attachments]

    async def _details(self, info: Info) -> messages.MessageDetails:
        return await info.context.loaders.details.load(self.record)


@strawberry.type(description="Messages that belong together: replies, or the same subject within 30 days.")
class Thread:
    id: ID
    user_id: Private[str]

    @strawberry.field(description="The thread's messages, oldest first (at most the first 100).")
    async def messages(self, info: Info) -> list[Message]:
        found = await info.context.loaders.threads.load((self.user_id, self.id))
        return [Message.from_record(message) for message in found]


# Live updates


UpdateCommand = strawberry.enum(
    Enum("UpdateCommand", {command: command for command in updates.COMMANDS}),
    description="What a journal entry records.",
)


@strawberry.type(description="One entry of a user's journal: a change to a mailbox or a message.")
class UpdateEvent:
    id: int = strawberry.field(description="The journal id; resume after it with `since`.")
    command: UpdateCommand
    mailbox_id: ID | None
    message_id: ID | None
    uid: Long | None
    modseq: Long | None
    flags: list[str] | None
    thread_id: ID | None
    path: str | None
    name: str | None
    old_path: str | None
    created: DateTime
    payload: strawberry.scalars.JSON = strawberry.field(description="The entry as the SSE stream sends it.")

    @classmethod
    def from_entry(cls, entry: JournalEntry) -> UpdateEvent:
        data = entry.data
        return cls(
            id=entry.id,
            command=UpdateCommand(entry.command),
            mailbox_id=ID(entry.mailbox) if entry.mailbox else None,
            message_id=ID(entry.message) if entry.message else None,
            uid=Long(entry.uid) if entry.uid is not None else None,
            modseq=Long(entry.modseq) if entry.modseq is not None else None,
            flags=list(data["flags"]) if "flags" in data else None,
            thread_id=ID(data["thread"]) if "thread" in data else None,
            path=data.get("path"),
            name=data.get("name"),
            old_path=data.get("oldPath"),
            created=DateTime(entry.created),
            payload=event_payload(entry),
        )


@strawberry.type(description="A message arrived (EXISTS), changed flags (FETCH) or left a mailbox (EXPUNGE).")
class MessageEvent:
    id: int = strawberry.field(description="The journal id; resume after it with `since`.")
    command: UpdateCommand
    mailbox_id: ID
    message_id: ID
    uid: Long
    modseq: Long | None
    flags: list[str] | None
    thread_id: ID | None
    created: DateTime
    user_id: Private[str]

    @classmethod
    def from_entry(cls, entry: JournalEntry) -> MessageEvent:
        data = entry.data
        return cls(
            id=entry.id,
            command=UpdateCommand(entry.command),
            mailbox_id=ID(entry.mailbox or ""),
            message_id=ID(entry.message or ""),
            uid=Long(entry.uid or 0),
            modseq=Long(entry.modseq) if entry.modseq is not None else None,
            flags=list(data["flags"]) if "flags" in data else None,
            thread_id=ID(data["thread"]) if "thread" in data else None,
            created=DateTime(entry.created),
            user_id=entry.user,
        )

    @strawberry.field(description="The message as it is now; null once it has left this mailbox.")
    async def message(self, info: Info) -> Message | None:
        try:
            _, found = await messages.find_message(info.context.core, self.user_id, self.mailbox_id, self.message_id)
        except NotFoundError:
            return None
        return Message.from_record(found)


@strawberry.type(description="A mailbox was created, renamed or deleted.")
class MailboxEvent:
    id: int = strawberry.field(description="The journal id; resume after it with `since`.")
    command: UpdateCommand
    mailbox_id: ID
    path: str
    name: str | None
    old_path: str | None
    created: DateTime

    @classmethod
    def from_entry(cls, entry: JournalEntry) -> MailboxEvent:
        data = entry.data
        return cls(
            id=entry.id,
            command=UpdateCommand(entry.command),
            mailbox_id=ID(entry.mailbox or ""),
            path=data.get("path", ""),
            name=data.get("name"),
            old_path=data.get("oldPath"),
            created=DateTime(entry.created),
        )
