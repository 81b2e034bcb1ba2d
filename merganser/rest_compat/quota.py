"""REST: quota (POST /users/{user}/quota/reset)."""

from __future__ import annotations

from aiohttp import web

from merganser.resolvers import quota
from merganser.resolvers.inputs import Empty
from merganser.rest_compat.http import body, core_of, ok


async def reset(request: web.Request) -> web.Response:
    Empty.from_json(await body(request))
    return ok(storageUsed=await quota.reset(core_of(request), request.match_info["user"]))


ROUTES = [("POST", "/users/{user}/quota/reset", reset)]
