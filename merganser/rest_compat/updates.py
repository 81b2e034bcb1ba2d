"""REST: the updates stream (GET /users/{user}/updates) and the /public/ demo page.

The stream is Server-Sent Events in the reference's format: each journal entry
is a ``data:`` line of JSON followed by ``id:``, its journal id. A client that
reconnects sends the last id it saw as ``Last-Event-ID`` (browsers do this by
themselves) or ``since``, and receives every entry after it, read from the
journal. Idle streams get a comment line every ``heartbeat_interval`` seconds,
which also finds clients that went away without closing; a client that cannot
take a write within two intervals, or that falls a whole buffer behind, is
disconnected and resumes from its last id when it reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import HttpVersion11, web

from merganser.errors import ValidationError
from merganser.resolvers import updates
from merganser.resolvers.hub import SubscriberTooSlow
from merganser.resolvers.inputs import Count, Input
from merganser.rest_compat.http import core_of, query_input
from merganser.storage.base import JournalEntry

log = logging.getLogger(__name__)

PUBLIC = Path(__file__).parent / "public"
HEARTBEAT = b": heartbeat\n\n"
FRAME_CACHE_SIZE = 4096
UNTIMED_WRITE = 32 * 1024
_FRAMES: OrderedDict[tuple[str, int], bytes] = OrderedDict()
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class StreamQuery(Input):
    since: Count | None = None


def _resume_from(request: web.Request) -> int | None:
    """Where the client left off: ``Last-Event-ID`` wins over ``since``."""
    since = query_input(request, StreamQuery).since
    header = request.headers.get("Last-Event-ID", "").strip()
    if not header:
        return since
    if not header.isdigit() or len(header) > 18:
        raise ValidationError("Last-Event-ID must be an id this stream sent")
    return int(header)


def _frame(entry: JournalEntry) -> bytes:
    """An entry's event, encoded once however many streams send it (they share the entry)."""
    key = (entry.user, entry.id)
    frame = _FRAMES.get(key)
    if frame is None:
        frame = b"data: " + orjson.dumps(updates.event_payload(entry)) + b"\nid: " + str(entry.id).encode() + b"\n\n"
        _FRAMES[key] = frame
        if len(_FRAMES) > FRAME_CACHE_SIZE:
            _FRAMES.popitem(last=False)
    return frame


async def _send(request: web.Request, response: web.StreamResponse, data: bytes, stall: float) -> None:
    """Write, giving up after ``stall`` seconds if the client stopped reading.

    A write that fits in the socket's free buffer cannot block, so the timer
    (a task per write) is only set up when the client is already behind.
    """
    transport = request.transport
    if transport is not None and transport.get_write_buffer_size() + len(data) < UNTIMED_WRITE:
        await response.write(data)
    else:
        await asyncio.wait_for(response.write(data), timeout=stall)


def _writer(request: web.Request) -> Callable[[list[JournalEntry]], bool]:
    """Write events from the feed without waking the stream's task, while the socket keeps up.

    Each write is one complete HTTP/1.1 chunk, as the response's own writes
    are, so the two interleave into a valid chunked body.
    """

    def write(entries: list[JournalEntry]) -> bool:
        transport = request.transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        data = b"".join(map(_frame, entries))
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True

    return write


async def stream(request: web.Request) -> web.StreamResponse:
    core = core_of(request)
    subscription = await updates.subscribe(core, request.match_info["user"], _resume_from(request))
    async with subscription:
        response = web.StreamResponse(headers=STREAM_HEADERS)
        if request.version >= HttpVersion11:
            response.enable_chunked_encoding()
        else:
            # Without chunks, only closing the connection tells the client where the stream ends.
            response.force_close()
        await response.prepare(request)
        if response.chunked:
            subscription.send_directly(_writer(request))
        interval = core.settings.heartbeat_interval
        try:
            while True:
                batch = await subscription.next_batch(timeout=interval)
                if subscription.closed:
                    break
                data = b"".join(map(_frame, batch)) if batch else HEARTBEAT
                await _send(request, response, data, stall=2 * interval)
        except SubscriberTooSlow:
            log.info("update stream of %s fell behind after id %d; ended", subscription.user_id, subscription.last_id)
        except TimeoutError:
            log.info("update stream of %s stopped taking writes; disconnected", subscription.user_id)
        except ConnectionError:
            return response
        # End the stream (the client reconnects from its last id); a client
        # that takes no writes is cut off instead.
        try:
            await asyncio.wait_for(response.write_eof(), timeout=interval)
        except (TimeoutError, ConnectionError):
            if request.transport is not None:
                request.transport.close()
    return response


async def public_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PUBLIC / "index.html")


ROUTES = [
    ("GET", "/users/{user}/updates", stream),
    ("GET", "/public/", public_page),
]
