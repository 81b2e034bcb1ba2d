"""REST: authentication (POST /authenticate, GET /users/{user}/authlog)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from merganser.resolvers import auth
from merganser.resolvers.inputs import Paging
from merganser.resolvers.summaries import timestamp
from merganser.rest_compat.http import core_of, json_input, ok, page_links, query_input
from merganser.storage.base import AuthLogEntry


def _entry(entry: AuthLogEntry) -> dict[str, Any]:
    shaped: dict[str, Any] = {"id": entry.id, "action": entry.action, "result": entry.result}
    optional = {"asp": entry.asp, "scope": entry.scope, "protocol": entry.protocol}
    shaped.update({key: value for key, value in optional.items() if value is not None})
    shaped["ip"] = entry.ip
    shaped["created"] = timestamp(entry.created)
    return shaped


async def authenticate(request: web.Request) -> web.Response:
    result = await auth.authenticate(core_of(request), await json_input(request, auth.Authenticate))
    return ok(id=result.user.id, username=result.user.username, scope=result.scope, require2fa=result.require2fa)


async def list_authlog(request: web.Request) -> web.Response:
    page = await auth.list_authlog(core_of(request), request.match_info["user"], query_input(request, Paging))
    return ok(**page_links(request, page), results=[_entry(entry) for entry in page.items])


ROUTES = [
    ("POST", "/authenticate", authenticate),
    ("GET", "/users/{user}/authlog", list_authlog),
]
