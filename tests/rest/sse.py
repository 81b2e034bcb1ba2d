"""A small Server-Sent Events reader for the update stream tests.

It parses the wire format itself (``data:``, ``id:``, comment lines, blank line
ends an event) so the tests check exactly what a browser's EventSource would
receive.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass
class Event:
    id: int | None
    data: dict[str, Any] | None
    comment: str | None = None


async def read_event(response: aiohttp.ClientResponse, timeout: float = 10.0) -> Event | None:
    """The next event or comment block, or None when the stream ends."""
    data: list[bytes] = []
    event_id: int | None = None
    comment: str | None = None
    async with asyncio.timeout(timeout):
        while True:
            line = await response.content.readline()
            if not line:
                return None
            line = line.rstrip(b"\r\n")
            if not line:
                if data or event_id is not None or comment is not None:
                    return Event(event_id, orjson.loads(b"\n".join(data)) if data else None, comment)
                continue
            if line.startswith(b":"):
                comment = line[1:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip())
            elif line.startswith(b"id:"):
                event_id = int(line[3:].strip())


async def next_update(response: aiohttp.ClientResponse, timeout: float = 10.0) -> Event:
    """The next journal event, skipping heartbeats; fails if the stream ends or none comes within ``timeout``.

    One deadline covers the whole wait: heartbeats do not restart it, so a
    stream that only ever sends heartbeats fails here instead of hanging.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await read_event(response, timeout)
                assert event is not None, "the update stream ended"
                if event.data is not None:
                    return event
    except TimeoutError:
        raise AssertionError(f"no update within {timeout:g} s (heartbeats aside)") from None


async def updates(response: aiohttp.ClientResponse, count: int, timeout: float = 10.0) -> list[Event]:
    return [await next_update(response, timeout) for _ in range(count)]


async def assert_quiet(response: aiohttp.ClientResponse, seconds: float) -> None:
    """No journal event arrives within ``seconds`` (heartbeats are fine)."""
    try:
        async with asyncio.timeout(seconds):
            event = await next_update(response, seconds + 1)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected update {event}")
