"""Assembly of the HTTP application and its background maintenance."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from yarl import URL

from merganser.config import Settings
from merganser.resolvers.context import Core
from merganser.rest_compat import add_routes
from merganser.rest_compat.http import CORE, api_middleware
from merganser.storage import storage_from_url

log = logging.getLogger("merganser")

MAINTENANCE_INTERVAL = 3600.0
SECRET_PARAMETERS = frozenset({"accesstoken", "token", "password"})


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request, with secrets in the query string blanked out."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        url = URL(request.path_qs)
        redacted = url.with_query(
            {key: "***" if key.lower() in SECRET_PARAMETERS else value for key, value in url.query.items()}
        )
        self.logger.info(
            '%s "%s %s" %d %d %.1fms',
            request.remote,
            request.method,
            redacted,
            response.status,
            response.body_length,
            time * 1000,
        )


async def _maintain(core: Core) -> None:
    """Drop expired authlog entries and failure counters, once an hour."""
    while True:
        now = datetime.now(UTC)
        try:
            await core.storage.purge_authlog(now)
            await core.storage.purge_counters(now)
        except Exception:
            log.exception("maintenance run failed; will retry")
        await asyncio.sleep(MAINTENANCE_INTERVAL)


def create_app(settings: Settings) -> web.Application:
    """The HTTP application; its storage is opened on start-up and closed on clean-up."""
    storage = storage_from_url(settings.storage_url)
    core = Core(storage=storage, settings=settings)
    app = web.Application(middlewares=[api_middleware], client_max_size=settings.max_body_size)
    app[CORE] = core

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await storage.open()
        maintenance = asyncio.create_task(_maintain(core))
        yield
        maintenance.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await maintenance
        await storage.close()

    app.cleanup_ctx.append(lifecycle)
    add_routes(app)
    return app
