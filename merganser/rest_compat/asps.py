"""REST: application-specific passwords (/users/{user}/asps)."""

from __future__ import annotations

from aiohttp import web

from merganser.resolvers import asps
from merganser.resolvers.summaries import timestamp
from merganser.rest_compat.http import core_of, json_input, ok, query_input


async def list_asps(request: web.Request) -> web.Response:
    found = await asps.list_asps(core_of(request), request.match_info["user"])
    results = [
        {"id": asp.id, "description": asp.description, "scopes": asp.scopes, "created": timestamp(asp.created)}
        for asp in found
    ]
    return ok(results=results)


async def create_asp(request: web.Request) -> web.Response:
    data = await json_input(request, asps.CreateApplicationPassword)
    created = await asps.create_asp(core_of(request), request.match_info["user"], data)
    return ok(id=created.asp.id, password=created.password)


async def delete_asp(request: web.Request) -> web.Response:
    data = query_input(request, asps.ApplicationPasswordIp)
    await asps.delete_asp(core_of(request), request.match_info["user"], request.match_info["asp"], data)
    return ok()


ROUTES = [
    ("GET", "/users/{user}/asps", list_asps),
    ("POST", "/users/{user}/asps", create_asp),
    ("DELETE", "/users/{user}/asps/{asp}", delete_asp),
]
