"""The REST compatibility layer: the WildDuck HTTP API over merganser's core.

One module per section of the reference. Handlers parse input into the core's
models, call a resolver and shape the JSON; they hold no rules of their own.
"""

from __future__ import annotations

from aiohttp import web

from merganser.rest_compat import (
    addresses,
    asps,
    authentication,
    mailboxes,
    messages,
    quota,
    twofa,
    updates,
    users,
)

SECTIONS = (users, authentication, twofa, asps, addresses, mailboxes, messages, quota, updates)


def add_routes(app: web.Application) -> None:
    """Register every endpoint, also under ``/user/`` where the reference uses it."""
    for section in SECTIONS:
        for method, path, handler in section.ROUTES:
            app.router.add_route(method, path, handler)
            if path.startswith("/users/"):
                app.router.add_route(method, "/user/" + path.removeprefix("/users/"), handler)
