"""REST: user accounts (GET/POST /users, GET/PUT /users/{user})."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from merganser.resolvers import lookup, users
from merganser.rest_compat.http import core_of, json_input, json_response, ok, page_links, query_input
from merganser.storage.base import User


def _retention(value: int) -> int | bool:
    return value or False


def _summary(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "address": user.address,
        "quota": {"allowed": user.quota, "used": user.storage_used},
        "disabled": user.disabled,
    }


def _details(user: User) -> dict[str, Any]:
    return {
        "success": True,
        "id": user.id,
        "username": user.username,
        "name": user.name,
        "address": user.address,
        "language": user.language,
        "forward": user.forward or False,
        "targetUrl": user.target_url or False,
        "retention": _retention(user.retention),
        "enabled2fa": user.twofa_enabled,
        "limits": {
            "quota": {"allowed": user.quota, "used": user.storage_used},
            "recipients": {"allowed": user.recipients, "used": 0, "ttl": False},
            "forwards": {"allowed": user.forwards, "used": 0, "ttl": False},
        },
        "activated": user.activated,
        "disabled": user.disabled,
    }


async def list_users(request: web.Request) -> web.Response:
    data = query_input(request, users.ListUsers)
    page = await users.list_users(core_of(request), data)
    return ok(query=data.query or "", **page_links(request, page), results=[_summary(user) for user in page.items])


async def get_user(request: web.Request) -> web.Response:
    user = await lookup.get_user(core_of(request), request.match_info["user"])
    return json_response(_details(user))


async def create_user(request: web.Request) -> web.Response:
    user = await users.create_user(core_of(request), await json_input(request, users.CreateUser))
    return ok(id=user.id)


async def update_user(request: web.Request) -> web.Response:
    data = await json_input(request, users.UpdateUser)
    await users.update_user(core_of(request), request.match_info["user"], data)
    return ok()


ROUTES = [
    ("GET", "/users", list_users),
    ("POST", "/users", create_user),
    ("GET", "/users/{user}", get_user),
    ("PUT", "/users/{user}", update_user),
]
