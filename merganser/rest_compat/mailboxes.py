"""REST: mailboxes (/users/{user}/mailboxes[/{mailbox}])."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from merganser.resolvers import mailboxes
from merganser.rest_compat.http import core_of, json_input, json_response, ok, query_input


def _view(view: mailboxes.MailboxView) -> dict[str, Any]:
    mailbox = view.mailbox
    shaped: dict[str, Any] = {
        "id": mailbox.id,
        "name": mailbox.name,
        "path": mailbox.path,
        "specialUse": mailbox.special_use,
        "modifyIndex": mailbox.modify_index,
        "subscribed": mailbox.subscribed,
        "retention": mailbox.retention or False,
    }
    if view.counters is not None:
        shaped["total"] = view.counters.total
        shaped["unseen"] = view.counters.unseen
    return shaped


async def list_mailboxes(request: web.Request) -> web.Response:
    data = query_input(request, mailboxes.ListMailboxes)
    found = await mailboxes.list_mailboxes(core_of(request), request.match_info["user"], data)
    results = [_view(view) for view in found]
    if data.counters:
        # The reference shows the counters listing under "mailboxes" and the plain
        # one under "results"; both keys are sent so either kind of client works.
        return ok(results=results, mailboxes=results)
    return ok(results=results)


async def get_mailbox(request: web.Request) -> web.Response:
    view = await mailboxes.get_mailbox(core_of(request), request.match_info["user"], request.match_info["mailbox"])
    return json_response({"success": True, **_view(view)})


async def create_mailbox(request: web.Request) -> web.Response:
    data = await json_input(request, mailboxes.CreateMailbox)
    mailbox = await mailboxes.create_mailbox(core_of(request), request.match_info["user"], data)
    return ok(id=mailbox.id)


async def update_mailbox(request: web.Request) -> web.Response:
    data = await json_input(request, mailboxes.UpdateMailbox)
    await mailboxes.update_mailbox(core_of(request), request.match_info["user"], request.match_info["mailbox"], data)
    return ok()


async def delete_mailbox(request: web.Request) -> web.Response:
    await mailboxes.delete_mailbox(core_of(request), request.match_info["user"], request.match_info["mailbox"])
    return ok()


ROUTES = [
    ("GET", "/users/{user}/mailboxes", list_mailboxes),
    ("POST", "/users/{user}/mailboxes", create_mailbox),
    ("GET", "/users/{user}/mailboxes/{mailbox}", get_mailbox),
    ("PUT", "/users/{user}/mailboxes/{mailbox}", update_mailbox),
    ("DELETE", "/users/{user}/mailboxes/{mailbox}", delete_mailbox),
]
