"""GraphQL input types, and their conversion to the core's input models.

Each input type mirrors one of the core's models field for field, under the
same names, and is handed to that model's ``from_json``: the core checks every
value (types, ranges, formats) exactly as it checks a REST body, so GraphQL
and REST accept and refuse the same things with the same messages. A field
left out is left out of the core's input too. An explicit ``null`` means the
same, except where a field documents that null clears a value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import strawberry
from strawberry.types.unset import UNSET

from merganser.resolvers.inputs import Input, with_default_ip
from merganser.schema.scalars import DateTimeInput, Long

InputT = TypeVar("InputT", bound=Input)


def core_input(
    model: type[InputT],
    given: object | None = None,
    *,
    remote: str | None = None,
    nulls: Mapping[str, object] | None = None,
    **extra: object,
) -> InputT:
    """The core's ``model`` from a GraphQL input object and extra arguments.

    Unset fields are left out; ``nulls`` names fields whose explicit null
    stands for a value of the core (``expires: null`` clears the expiry).
    ``ip`` defaults to ``remote``, the connecting address, as in REST.
    """
    data: dict[str, Any] = {}
    if given is not None:
        for field in dataclasses.fields(given):  # type: ignore[arg-type]
            data[field.name] = getattr(given, field.name)
    data.update(extra)
    cleared = nulls or {}
    values = {
        name: cleared[name] if value is None and name in cleared else value
        for name, value in data.items()
        if value is not UNSET and (value is not None or name in cleared)
    }
    return model.from_json(with_default_ip(model, values, remote))


def page_input(model: type[InputT], first: int, after: str | None, **extra: object) -> InputT:
    """A paging model of the core: ``first`` is its ``limit``, ``after`` its ``next`` cursor."""
    return core_input(model, limit=first, next=after, **extra)


@strawberry.input(description="A new account; the address defaults to username@domain.")
class CreateUserInput:
    username: str
    password: str
    address: str | None = UNSET
    name: str | None = UNSET
    forward: str | None = UNSET
    targetUrl: str | None = UNSET
    quota: Long | None = UNSET
    retention: Long | None = UNSET
    language: str | None = UNSET
    recipients: Long | None = UNSET
    forwards: Long | None = UNSET
    ip: str | None = UNSET


@strawberry.input(description='Fields to change; "" clears `forward` and `targetUrl`.')
class UpdateUserInput:
    name: str | None = UNSET
    password: str | None = UNSET
    existingPassword: str | None = strawberry.field(
        default=UNSET, description="Required to verify before anything changes, when given."
    )
    forward: str | None = UNSET
    targetUrl: str | None = UNSET
    quota: Long | None = UNSET
    retention: Long | None = UNSET
    language: str | None = UNSET
    recipients: Long | None = UNSET
    forwards: Long | None = UNSET
    disabled: bool | None = UNSET
    ip: str | None = UNSET


@strawberry.input
class AuthenticateInput:
    username: str = strawberry.field(description="A username or any address of the user.")
    password: str
    scope: str | None = strawberry.field(default=UNSET, description="master (default), imap, pop3 or smtp.")
    protocol: str | None = UNSET
    ip: str | None = UNSET


@strawberry.input
class SetupTwoFactorInput:
    issuer: str | None = UNSET
    ip: str | None = UNSET


@strawberry.input
class TwoFactorTokenInput:
    token: str = strawberry.field(description="The 6 digits the authenticator app shows.")
    ip: str | None = UNSET


@strawberry.input(description="The client an action is logged for; defaults to the connecting address.")
class ClientInput:
    ip: str | None = UNSET


@strawberry.input
class CreateApplicationPasswordInput:
    description: str
    scopes: list[str] | None = strawberry.field(default=UNSET, description="imap, pop3, smtp or * (the default).")
    ip: str | None = UNSET


@strawberry.input
class CreateAddressInput:
    address: str
    main: bool | None = UNSET


@strawberry.input
class UpdateAddressInput:
    main: bool = strawberry.field(description="Only true: make this the main address.")


@strawberry.input
class CreateMailboxInput:
    path: str = strawberry.field(description="Folders separated by /; parents need not exist.")
    retention: Long | None = UNSET
    subscribed: bool | None = UNSET


@strawberry.input(description="Fields to change; a new path also renames the mailboxes below.")
class UpdateMailboxInput:
    path: str | None = UNSET
    retention: Long | None = UNSET
    subscribed: bool | None = UNSET


@strawberry.input(description="A message to add, as RFC 822 text.")
class UploadMessageInput:
    raw: str
    seen: bool | None = UNSET
    flagged: bool | None = UNSET
    draft: bool | None = UNSET
    deleted: bool | None = UNSET
    date: DateTimeInput | None = strawberry.field(default=UNSET, description="When it arrived; default now.")


@strawberry.input(description="Flags to set or clear, a new expiry, or a mailbox to move to.")
class UpdateMessageInput:
    seen: bool | None = UNSET
    flagged: bool | None = UNSET
    draft: bool | None = UNSET
    deleted: bool | None = UNSET
    expires: DateTimeInput | None = strawberry.field(default=UNSET, description="null clears the expiry.")
    newMailbox: strawberry.ID | None = UNSET
