"""Copies of delivered mail sent onwards: to a forward address or a target URL.

The local copy is committed before anything here runs, so a failing relay or
URL can delay or finally drop the extra copy, never the delivery itself.
Attempts are bounded and spaced out; every failure is logged (without the
message content).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import aiosmtplib

from merganser.config import Settings
from merganser.storage.base import User

log = logging.getLogger("merganser.forwarding")

REQUEST_TIMEOUT = 30.0


def parse_relay(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) of the SMTP relay."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class Forwarder:
    """Runs forwarding and uploads as background tasks, and waits for them on close."""

    def __init__(self, settings: Settings, retry_delay: float = 2.0) -> None:
        self._relay = parse_relay(settings.smtp_relay) if settings.smtp_relay else None
        self._attempts = max(1, settings.forward_attempts)
        self._retry_delay = retry_delay
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def dispatch(self, user: User, raw: bytes, sender: str) -> None:
        """Start sending copies for whatever the user asked for."""
        if user.forward:
            self._spawn(
                f"forward of a message for user {user.id}", lambda: self._relay_copy(user.forward or "", raw, sender)
            )
        if user.target_url:
            self._spawn(f"upload of a message for user {user.id}", lambda: self._upload(user.target_url or "", raw))

    def _spawn(self, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(self._with_retries(what, attempt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _with_retries(self, what: str, attempt: Callable[[], Awaitable[None]]) -> None:
        for number in range(1, self._attempts + 1):
            try:
                await attempt()
                return
            except Exception as error:
                if number == self._attempts:
                    log.error("%s failed after %d attempts, giving up: %s", what, number, error)
                    return
                delay = self._retry_delay * 2 ** (number - 1)
                log.warning(
                    "%s failed (attempt %d of %d), retrying in %.0fs: %s", what, number, self._attempts, delay, error
                )
                await asyncio.sleep(delay)

    async def _relay_copy(self, recipient: str, raw: bytes, sender: str) -> None:
        if self._relay is None:
            raise RuntimeError("no SMTP relay is configured (--smtp-relay)")
        host, port = self._relay
        await aiosmtplib.send(
            raw,
            sender=sender,
            recipients=[recipient],
            hostname=host,
            port=port,
            timeout=REQUEST_TIMEOUT,
            start_tls=False,
        )

    async def _upload(self, url: str, raw: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        async with self._session.post(url, data=raw, headers={"Content-Type": "message/rfc822"}) as response:
            if response.status >= 300:
                raise RuntimeError(f"{url} answered HTTP {response.status}")

    async def idle(self) -> None:
        """Wait until every copy in flight has been sent or given up on."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    async def close(self, timeout: float = 10.0) -> None:
        """Give copies in flight a moment to finish, then stop."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
