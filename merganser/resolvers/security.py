"""The authentication log and rate limiting of failed attempts.

Failures are counted per user and per client IP in fixed windows held by the
storage, so every server process sharing a store enforces the same limits.
A limited caller is refused before any password is checked, which keeps a
brute-force attempt from learning anything while it is locked out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from merganser.errors import RateLimitedError
from merganser.resolvers.context import Core
from merganser.resolvers.ids import new_id
from merganser.storage.base import AuthLogEntry

AUTHLOG_TTL = timedelta(days=30)


async def log_event(
    core: Core,
    user_id: str | None,
    action: str,
    result: str,
    ip: str | None,
    *,
    protocol: str | None = None,
    scope: str | None = None,
    asp: str | None = None,
    username: str | None = None,
) -> None:
    """Append one authlog entry; entries disappear after 30 days."""
    now = datetime.now(UTC)
    await core.storage.add_authlog(
        AuthLogEntry(
            id=new_id(),
            user=user_id,
            action=action,
            result=result,
            created=now,
            expires=now + AUTHLOG_TTL,
            ip=ip,
            protocol=protocol,
            scope=scope,
            asp=asp,
            username=username,
        )
    )


def _keys(core: Core, user_id: str | None, ip: str | None) -> list[tuple[str, int]]:
    settings = core.settings
    keys = []
    if user_id:
        keys.append((f"authfail:user:{user_id}", settings.auth_failures_per_user))
    if ip:
        keys.append((f"authfail:ip:{ip}", settings.auth_failures_per_ip))
    return keys


async def check_rate_limit(core: Core, user_id: str | None, ip: str | None, action: str, **details: str | None) -> None:
    """Refuse (and log) the attempt if the user or the IP has failed too often lately."""
    now = datetime.now(UTC)
    for key, limit in _keys(core, user_id, ip):
        if await core.storage.get_counter(key, now) >= limit:
            await log_event(core, user_id, action, "rate limited", ip, **details)
            subject = "account" if key.startswith("authfail:user:") else "address"
            raise RateLimitedError(
                f"Too many failed authentication attempts for this {subject}; try again later",
                retry_after=core.settings.auth_failure_window,
            )


async def count_failure(core: Core, user_id: str | None, ip: str | None) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=core.settings.auth_failure_window)
    for key, _ in _keys(core, user_id, ip):
        await core.storage.increment_counter(key, expires)


async def purge_expired(core: Core, now: datetime | None = None) -> None:
    """Drop authlog entries past their 30 days and failure counters whose window has closed."""
    now = now or datetime.now(UTC)
    await core.storage.purge_authlog(now)
    await core.storage.purge_counters(now)
