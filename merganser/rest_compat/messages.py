"""REST: messages (/users/{user}/mailboxes/{mailbox}/messages…, /users/{user}/search)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from merganser.resolvers import messages
from merganser.resolvers.parsing import AttachmentInfo
from merganser.resolvers.summaries import flag_states, sent_date, timestamp
from merganser.rest_compat.http import (
    body,
    core_of,
    json_input,
    json_response,
    ok,
    page_links,
    query_input,
    read_limited,
)
from merganser.storage.base import Message

RFC822 = "message/rfc822"


def _listed(message: Message) -> dict[str, Any]:
    summary = message.summary
    return {
        "id": message.id,
        "mailbox": message.mailbox,
        "thread": message.thread,
        "uid": message.uid,
        "from": summary.get("from"),
        "subject": summary.get("subject", ""),
        "date": timestamp(sent_date(message)),
        "intro": summary.get("intro", ""),
        "attachments": summary.get("attachments", False),
        "size": message.size,
        **flag_states(message),
    }


def _attachment(info: AttachmentInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "filename": info.filename,
        "contentType": info.content_type,
        "disposition": info.disposition,
        "size": info.size,
    }


def _details(details: messages.MessageDetails) -> dict[str, Any]:
    message, parsed = details.message, details.parsed
    return {
        "success": True,
        **_listed(message),
        "to": message.summary.get("to", []),
        "cc": message.summary.get("cc", []),
        "messageId": parsed.message_id,
        "expires": timestamp(message.expires) if message.expires else False,
        "html": parsed.html,
        "text": parsed.text,
        "attachments": [_attachment(info) for info in parsed.attachments],
    }


def _ids(request: web.Request) -> tuple[str, str]:
    return request.match_info["user"], request.match_info["mailbox"]


async def list_messages(request: web.Request) -> web.Response:
    data = query_input(request, messages.ListMessages)
    mailbox, page = await messages.list_messages(core_of(request), *_ids(request), data)
    return ok(
        **page_links(request, page), specialUse=mailbox.special_use, results=[_listed(item) for item in page.items]
    )


async def search(request: web.Request) -> web.Response:
    data = query_input(request, messages.SearchMessages)
    page = await messages.search(core_of(request), request.match_info["user"], data)
    return ok(query=data.query, **page_links(request, page), results=[_listed(item) for item in page.items])


async def get_message(request: web.Request) -> web.Response:
    details = await messages.get_message(core_of(request), *_ids(request), request.match_info["message"])
    return json_response(_details(details))


async def upload(request: web.Request) -> web.Response:
    """Add a message: a raw ``message/rfc822`` body, or JSON with ``raw``."""
    core = core_of(request)
    limit = core.settings.max_message_size
    if request.content_type == RFC822:
        options = query_input(request, messages.MessageOptions)
        raw = await read_limited(request, limit)
    else:
        upload = messages.UploadMessage.from_json(await body(request, limit * 2))
        options, raw = upload, upload.raw.encode()
    stored = await messages.upload(core, *_ids(request), options, raw)
    return ok(id=stored.id, mailbox=stored.mailbox, uid=stored.uid)


async def update_message(request: web.Request) -> web.Response:
    data = await json_input(request, messages.UpdateMessage)
    result = await messages.update_message(core_of(request), *_ids(request), request.match_info["message"], data)
    if result.moved:
        return ok(mailbox=result.message.mailbox, id=result.message.id, uid=result.message.uid)
    return ok()


async def delete_message(request: web.Request) -> web.Response:
    await messages.delete_message(core_of(request), *_ids(request), request.match_info["message"])
    return ok()


async def source(request: web.Request) -> web.Response:
    raw = await messages.source(core_of(request), *_ids(request), request.match_info["message"])
    return web.Response(body=raw, content_type=RFC822)


async def attachment(request: web.Request) -> web.Response:
    info, content = await messages.attachment(
        core_of(request), *_ids(request), request.match_info["message"], request.match_info["attachment"]
    )
    response = web.Response(body=content, content_type=info.content_type)
    response.headers["Content-Disposition"] = _disposition(info)
    return response


def _disposition(info: AttachmentInfo) -> str:
    """A Content-Disposition any client can parse: an ASCII name plus the UTF-8 one (RFC 6266)."""
    fallback = "".join(char if 32 <= ord(char) < 127 and char not in '"\\' else "_" for char in info.filename)
    return f"{info.disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(info.filename, safe='')}"


ROUTES = [
    ("GET", "/users/{user}/search", search),
    ("GET", "/users/{user}/mailboxes/{mailbox}/messages", list_messages),
    ("POST", "/users/{user}/mailboxes/{mailbox}/messages", upload),
    ("GET", "/users/{user}/mailboxes/{mailbox}/messages/{message}", get_message),
    ("PUT", "/users/{user}/mailboxes/{mailbox}/messages/{message}", update_message),
    ("DELETE", "/users/{user}/mailboxes/{mailbox}/messages/{message}", delete_message),
    ("GET", "/users/{user}/mailboxes/{mailbox}/messages/{message}/message.eml", source),
    ("GET", "/users/{user}/mailboxes/{mailbox}/messages/{message}/attachments/{attachment}", attachment),
]
