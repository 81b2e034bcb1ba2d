"""REST: addresses (GET /addresses and /users/{user}/addresses[/{address}])."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from merganser.resolvers import addresses
from merganser.resolvers.summaries import timestamp
from merganser.rest_compat.http import core_of, json_input, json_response, ok, page_links, query_input


def _view(view: addresses.AddressView) -> dict[str, Any]:
    return {
        "id": view.address.id,
        "address": view.address.address,
        "main": view.main,
        "created": timestamp(view.address.created),
    }


async def search_addresses(request: web.Request) -> web.Response:
    data = query_input(request, addresses.ListAddresses)
    page = await addresses.search_addresses(core_of(request), data)
    results = [{"id": item.id, "address": item.address, "user": item.user} for item in page.items]
    return ok(query=data.query or "", **page_links(request, page), results=results)


async def list_user_addresses(request: web.Request) -> web.Response:
    found = await addresses.list_user_addresses(core_of(request), request.match_info["user"])
    return ok(results=[_view(view) for view in found])


async def get_address(request: web.Request) -> web.Response:
    match = request.match_info
    view = await addresses.get_address(core_of(request), match["user"], match["address"])
    return json_response({"success": True, **_view(view)})


async def create_address(request: web.Request) -> web.Response:
    data = await json_input(request, addresses.CreateAddress)
    address = await addresses.create_address(core_of(request), request.match_info["user"], data)
    return ok(id=address.id)


async def update_address(request: web.Request) -> web.Response:
    data = await json_input(request, addresses.UpdateAddress)
    await addresses.update_address(core_of(request), request.match_info["user"], request.match_info["address"], data)
    return ok()


async def delete_address(request: web.Request) -> web.Response:
    await addresses.delete_address(core_of(request), request.match_info["user"], request.match_info["address"])
    return ok()


ROUTES = [
    ("GET", "/addresses", search_addresses),
    ("GET", "/users/{user}/addresses", list_user_addresses),
    ("POST", "/users/{user}/addresses", create_address),
    ("GET", "/users/{user}/addresses/{address}", get_address),
    ("PUT", "/users/{user}/addresses/{address}", update_address),
    ("DELETE", "/users/{user}/addresses/{address}", delete_address),
]
