"""Authentication: master passwords, application-specific passwords and scopes.

Rules, from the reference: the master password works for every scope unless
2FA is enabled, in which case it only works for ``master`` (and the caller
must then ask for a token). Application-specific passwords never work for
``master`` and only for the scopes they were created with. Every attempt,
successful or not, is written to the user's authlog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field

from merganser.errors import AuthenticationError, ValidationError
from merganser.resolvers.context import Core
from merganser.resolvers.inputs import IP, Input, Paging, Password, Text
from merganser.resolvers.lookup import get_user
from merganser.resolvers.normalize import normalize_address
from merganser.resolvers.paging import PageResult, paginate
from merganser.resolvers.passwords import verify_password
from merganser.resolvers.security import check_rate_limit, count_failure, log_event
from merganser.storage.base import AuthLogEntry, User

Scope = Literal["master", "imap", "pop3", "smtp"]
_ASP_SHAPE = re.compile(r"[a-z]{16}")


class Authenticate(Input):
    username: Annotated[str, Field(min_length=1, max_length=320)]
    password: Password
    scope: Scope = "master"
    protocol: Text | None = None
    ip: IP | None = None


@dataclass(frozen=True, slots=True)
class AuthResult:
    user: User
    scope: str
    require2fa: bool
    asp: str | None


async def _find_account(core: Core, username: str) -> User | None:
    """Accept a username or any of the user's addresses."""
    if "@" not in username:
        return await core.storage.find_user_by_username(username)
    try:
        addrview = normalize_address(username).addrview
    except ValidationError:
        return None
    address = await core.storage.find_address(addrview)
    return await core.storage.get_user(address.user) if address else None


async def _match_asp(core: Core, user: User, password: str, scope: str) -> str | None:
    """The id of the application-specific password that matches, if any."""
    candidate = password.replace(" ", "").lower()
    if not _ASP_SHAPE.fullmatch(candidate):
        return None
    for asp in await core.storage.list_asps(user.id):
        if ("*" in asp.scopes or scope in asp.scopes) and await verify_password(
            candidate, asp.password_hash, core.settings.bcrypt_rounds
        ):
            return asp.id
    return None


async def authenticate(core: Core, data: Authenticate) -> AuthResult:
    user = await _find_account(core, data.username)
    await check_rate_limit(
        core,
        user.id if user else None,
        data.ip,
        "authentication",
        protocol=data.protocol,
        scope=data.scope,
        username=None if user else data.username,
    )
    rounds = core.settings.bcrypt_rounds
    master_ok = await verify_password(data.password, user.password_hash if user else None, rounds)
    if user is None:
        await count_failure(core, None, data.ip)
        await log_event(
            core,
            None,
            "authentication",
            "fail",
            data.ip,
            protocol=data.protocol,
            scope=data.scope,
            username=data.username,
        )
        raise AuthenticationError("Authentication failed")

    asp = None
    failure = None
    if user.disabled:
        failure = "Authentication failed"
    elif master_ok and data.scope != "master" and user.twofa_enabled:
        failure = (
            "The master password can not be used for this scope while 2FA is enabled;"
            " use an application specific password"
        )
    elif not master_ok:
        asp = await _match_asp(core, user, data.password, data.scope) if data.scope != "master" else None
        if asp is None:
            failure = "Authentication failed"
            await count_failure(core, user.id, data.ip)

    await log_event(
        core,
        user.id,
        "authentication",
        "fail" if failure else "success",
        data.ip,
        protocol=data.protocol,
        scope=data.scope,
        asp=asp,
    )
    if failure:
        raise AuthenticationError(failure)
    require2fa = asp is None and data.scope == "master" and user.twofa_enabled
    return AuthResult(user, data.scope, require2fa, asp)


async def list_authlog(core: Core, user_id: str, data: Paging) -> PageResult[AuthLogEntry]:
    user = await get_user(core, user_id)
    now = datetime.now(UTC)
    return await paginate(
        "authlog",
        data,
        lambda page: core.storage.list_authlog(user.id, now, page),
        lambda entry: entry.id,
        descending=True,
    )
