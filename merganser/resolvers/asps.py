"""Application-specific passwords: per-client secrets limited to some scopes.

The password is generated here, returned once and stored only as a bcrypt hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field

from merganser.errors import NotAllowedError, NotFoundError
from merganser.resolvers.context import Core
from merganser.resolvers.ids import check_id, new_id
from merganser.resolvers.inputs import IP, Input
from merganser.resolvers.lookup import get_user
from merganser.resolvers.passwords import generate_asp, hash_password
from merganser.resolvers.security import log_event
from merganser.storage.base import ApplicationPassword

# Every authentication with an ASP-shaped password is checked against each of
# the user's ASPs with bcrypt, so their number is bounded.
MAX_ASPS = 50


class CreateApplicationPassword(Input):
    description: Annotated[str, Field(min_length=1, max_length=256)]
    scopes: Annotated[list[Literal["imap", "pop3", "smtp", "*"]], Field(min_length=1, max_length=4)] = Field(
        default_factory=lambda: ["*"]
    )
    ip: IP | None = None


class ApplicationPasswordIp(Input):
    ip: IP | None = None


@dataclass(frozen=True, slots=True)
class CreatedApplicationPassword:
    asp: ApplicationPassword
    password: str


async def list_asps(core: Core, user_id: str) -> list[ApplicationPassword]:
    user = await get_user(core, user_id)
    return await core.storage.list_asps(user.id)


async def create_asp(core: Core, user_id: str, data: CreateApplicationPassword) -> CreatedApplicationPassword:
    user = await get_user(core, user_id)
    if len(await core.storage.list_asps(user.id)) >= MAX_ASPS:
        raise NotAllowedError(f"A user can have at most {MAX_ASPS} application specific passwords")
    scopes = ["*"] if "*" in data.scopes else sorted(set(data.scopes))
    password = generate_asp()
    asp = ApplicationPassword(
        id=new_id(),
        user=user.id,
        description=data.description,
        scopes=scopes,
        password_hash=await hash_password(password, core.settings.bcrypt_rounds),
        created=datetime.now(UTC),
    )
    await core.storage.add_asp(asp)
    await log_event(core, user.id, "create asp", "success", data.ip, asp=asp.id)
    return CreatedApplicationPassword(asp, password)


async def delete_asp(core: Core, user_id: str, asp_id: str, data: ApplicationPasswordIp) -> None:
    user = await get_user(core, user_id)
    if not await core.storage.delete_asp(user.id, check_id(asp_id, "application password")):
        raise NotFoundError("Unknown application specific password", "AspNotFound")
    await log_event(core, user.id, "delete asp", "success", data.ip, asp=asp_id)
