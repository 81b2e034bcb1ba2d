"""Assembly of the HTTP application and its background maintenance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from merganser.config import Settings
from merganser.protocols.lmtp import start_lmtp
from merganser.resolvers import messages, security
from merganser.resolvers.context import Core
from merganser.resolvers.forwarding import Forwarder
from merganser.resolvers.parse_pool import ParsePool
from merganser.rest_compat import add_routes
from merganser.rest_compat.http import CORE, api_middleware
from merganser.schema.view import add_graphql_routes
from merganser.storage import storage_from_url
from merganser.storage.relay import RedisRelay

log = logging.getLogger("merganser")

MAINTENANCE_INTERVAL = 3600.0
LMTP_SERVER: web.AppKey[asyncio.Server] = web.AppKey("lmtp", asyncio.Server)
SECRET_PARAMETERS = frozenset({"accesstoken", "token", "password"})


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, with secrets in the query string blanked out."""

    @property
    def enabled(self) -> bool:
        """Skip building the line at all when it would be dropped."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        target: URL | str = request.path
        if request.query_string:
            url = URL(request.path_qs)
            target = url.with_query(
                {key: "***" if key.lower() in SECRET_PARAMETERS else value for key, value in url.query.items()}
            )
        self.logger.info(
            '%s "%s %s" %d %d %.1fms',
            request.remote,
            request.method,
            target,
            response.status,
            response.body_length,
            time * 1000,
        )


async def _every(seconds: float, what: str, job: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
    """Run a job now and then every ``seconds`` until ``stop`` is set; a failed run is logged and retried.

    The first run is at start-up, so a server restarted more often than the
    interval still does the work. Stopping waits for a run under way to
    finish rather than cancelling it, so shutdown never interrupts a storage
    operation half-way.
    """
    while not stop.is_set():
        try:
            await job()
        except Exception:
            log.exception("%s failed; will retry", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def _close_forwarder(core: Core) -> None:
    """Close whichever forwarder the core holds by the time the server stops."""
    if core.forwarder is not None:
        await core.forwarder.close()


async def _finish(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def create_app(settings: Settings) -> web.Application:
    """The server: the HTTP API plus, while it runs, the LMTP maildrop and background jobs.

    Storage is opened on start-up and closed on clean-up; the LMTP listener and
    the collectors share the application's core.
    """
    storage = storage_from_url(settings.storage_url)
    core = Core(storage=storage, settings=settings, forwarder=Forwarder(settings))
    app = web.Application(
        middlewares=[api_middleware], client_max_size=max(settings.max_body_size, settings.max_message_size * 2)
    )
    app[CORE] = core

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Whatever fails part-way through start-up, everything opened so far is closed.
        async with contextlib.AsyncExitStack() as opened:
            await storage.open()
            opened.push_async_callback(storage.close)
            if settings.redis:
                relay = RedisRelay(settings.redis, core.updates.journal_grew, core.updates.wake_all)
                await relay.start()
                opened.push_async_callback(relay.close)
                storage.add_journal_listener(relay.journal_grew)
                log.info("relaying live updates through Redis")
            opened.push_async_callback(_close_forwarder, core)
            # Closed after the listener (callbacks run last in, first out).
            parsers = ParsePool(settings.parse_workers)
            opened.callback(parsers.close)
            lmtp = await start_lmtp(core, parsers)
            opened.push_async_callback(_close_server, lmtp)
            app[LMTP_SERVER] = lmtp
            host, port = lmtp.sockets[0].getsockname()[:2]
            log.info("LMTP maildrop listening on %s:%d", host, port)
            stop = asyncio.Event()
            jobs = [
                asyncio.create_task(
                    _every(MAINTENANCE_INTERVAL, "authlog purge", lambda: security.purge_expired(core), stop)
                ),
                asyncio.create_task(
                    _every(
                        settings.gc_interval, "expired message collection", lambda: messages.collect_garbage(core), stop
                    )
                ),
            ]
            opened.push_async_callback(_finish, stop, jobs)
            yield

    async def end_streams(app: web.Application) -> None:
        core.updates.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_streams)
    add_routes(app)
    add_graphql_routes(app)
    return app
