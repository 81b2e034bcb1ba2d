"""REST: two-factor authentication (POST, PUT, DELETE, GET /users/{user}/2fa)."""

from __future__ import annotations

from aiohttp import web

from merganser.resolvers import twofa
from merganser.rest_compat.http import core_of, json_input, ok, query_input


async def setup(request: web.Request) -> web.Response:
    data = await json_input(request, twofa.SetupTwoFactor)
    return ok(qrcode=await twofa.setup(core_of(request), request.match_info["user"], data))


async def enable(request: web.Request) -> web.Response:
    data = await json_input(request, twofa.TwoFactorToken)
    await twofa.enable(core_of(request), request.match_info["user"], data)
    return ok()


async def disable(request: web.Request) -> web.Response:
    data = query_input(request, twofa.TwoFactorIp)
    await twofa.disable(core_of(request), request.match_info["user"], data)
    return ok()


async def check(request: web.Request) -> web.Response:
    data = query_input(request, twofa.TwoFactorToken)
    await twofa.check(core_of(request), request.match_info["user"], data)
    return ok()


ROUTES = [
    ("POST", "/users/{user}/2fa", setup),
    ("PUT", "/users/{user}/2fa", enable),
    ("DELETE", "/users/{user}/2fa", disable),
    ("GET", "/users/{user}/2fa", check),
]
