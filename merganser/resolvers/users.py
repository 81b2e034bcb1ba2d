"""User accounts: creation with defaults, lookup, listing and updates."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from yarl import URL

from merganser.errors import AuthenticationError, ConflictError, NotFoundError, ValidationError
from merganser.resolvers.context import Core
from merganser.resolvers.ids import new_id
from merganser.resolvers.inputs import IP, Count, Input, Paging, Password, Text
from merganser.resolvers.lookup import get_user
from merganser.resolvers.mailboxes import Retention, default_mailboxes
from merganser.resolvers.normalize import normalize_address
from merganser.resolvers.paging import PageResult, paginate
from merganser.resolvers.passwords import MAX_PASSWORD_BYTES, hash_password, verify_password
from merganser.resolvers.security import check_rate_limit, count_failure, log_event
from merganser.storage.base import Address, DuplicateKeyError, User

_USERNAME = re.compile(r"[A-Za-z0-9]+")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{1,8})?")


def _check_username(value: str) -> str:
    if not _USERNAME.fullmatch(value):
        raise ValueError("use only letters and digits")
    return value


def _check_password(value: str) -> str:
    if len(value.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"at most {MAX_PASSWORD_BYTES} bytes")
    return value


def _check_language(value: str) -> str:
    if not _LANGUAGE.fullmatch(value):
        raise ValueError("expected a language code such as 'en' or 'et'")
    return value.lower().replace("_", "-")


def _check_email(value: str) -> str:
    try:
        return normalize_address(value).display
    except ValidationError as error:
        raise ValueError(error.message) from None


def _check_url(value: str) -> str:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("expected an http:// or https:// URL")
    return value


Username = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_check_username)]
NewPassword = Annotated[Password, AfterValidator(_check_password)]
Language = Annotated[str, Field(max_length=16), AfterValidator(_check_language)]
Email = Annotated[str, Field(max_length=320), AfterValidator(_check_email)]
TargetUrl = Annotated[str, Field(max_length=2048), AfterValidator(_check_url)]


class CreateUser(Input):
    username: Username
    password: NewPassword
    address: Email | None = None
    name: Text = ""
    forward: Email | None = None
    targetUrl: TargetUrl | None = None
    quota: Count | None = None
    retention: Retention = 0
    language: Language = "en"
    recipients: Count | None = None
    forwards: Count | None = None
    ip: IP | None = None


class UpdateUser(Input):
    name: Text | None = None
    password: NewPassword | None = None
    existingPassword: Password | None = None
    forward: Literal[""] | Email | None = None
    targetUrl: Literal[""] | TargetUrl | None = None
    quota: Count | None = None
    retention: Retention | None = None
    language: Language | None = None
    recipients: Count | None = None
    forwards: Count | None = None
    disabled: bool | None = None
    ip: IP | None = None


class ListUsers(Paging):
    query: Annotated[str, Field(max_length=128)] | None = None


async def list_users(core: Core, data: ListUsers) -> PageResult[User]:
    query = data.query.strip() if data.query else None
    return await paginate("users", data, lambda page: core.storage.list_users(query, page), lambda user: user.id)


async def create_user(core: Core, data: CreateUser) -> User:
    settings = core.settings
    address = normalize_address(data.address or f"{data.username.lower()}@{settings.domain}")
    now = datetime.now(UTC)
    user = User(
        id=new_id(),
        username=data.username,
        name=data.name,
        password_hash=await hash_password(data.password, settings.bcrypt_rounds),
        address=address.display,
        language=data.language,
        quota=settings.default_quota if data.quota is None else data.quota,
        retention=int(data.retention),
        recipients=settings.default_recipients if data.recipients is None else data.recipients,
        forwards=settings.default_forwards if data.forwards is None else data.forwards,
        created=now,
        forward=data.forward,
        target_url=data.targetUrl,
    )
    main = Address(new_id(), user.id, address.display, address.addrview, now)
    try:
        await core.storage.create_user(user, main, default_mailboxes(user.id, user.language, user.retention))
    except DuplicateKeyError as error:
        if error.key == "username":
            raise ConflictError("This username already exists", "UserExistsError") from None
        raise ConflictError("This email address already exists", "AddressExists") from None
    await log_event(core, user.id, "account created", "success", data.ip)
    return user


_FIELDS = {
    "name": "name",
    "forward": "forward",
    "targetUrl": "target_url",
    "quota": "quota",
    "retention": "retention",
    "language": "language",
    "recipients": "recipients",
    "forwards": "forwards",
    "disabled": "disabled",
}


async def update_user(core: Core, user_id: str, data: UpdateUser) -> None:
    """Apply the given fields; with ``existingPassword`` only if it verifies."""
    user = await get_user(core, user_id)
    if data.existingPassword is not None:
        await check_rate_limit(core, user.id, data.ip, "password check")
        if not await verify_password(data.existingPassword, user.password_hash, core.settings.bcrypt_rounds):
            await count_failure(core, user.id, data.ip)
            await log_event(core, user.id, "password check", "fail", data.ip)
            raise AuthenticationError("Password verification failed")
    changes: dict[str, object] = {}
    for field, column in _FIELDS.items():
        value = getattr(data, field)
        if value is None:
            continue
        if field in ("forward", "targetUrl"):
            value = value or None
        elif field == "retention":
            value = int(value)
        changes[column] = value
    if data.password is not None:
        changes["password_hash"] = await hash_password(data.password, core.settings.bcrypt_rounds)
    if changes and not await core.storage.update_user(user.id, changes):
        raise NotFoundError("This user does not exist", "UserNotFound")
    if data.password is not None:
        await log_event(core, user.id, "password change", "success", data.ip)


async def delete_user(core: Core, user_id: str) -> None:
    """Delete an account and everything stored for it; its addresses become free for others to take.

    The user's live update streams end too: their journal is gone and will
    never grow again.
    """
    user = await get_user(core, user_id)
    if not await core.storage.delete_user(user.id):
        raise NotFoundError("This user does not exist", "UserNotFound")
    core.updates.end_user(user.id)
