"""What every REST handler shares: reading input, writing JSON, reporting errors.

Every failure leaves as ``{"error": message, "code": MachineCode}`` with a 4xx
status; anything unexpected is logged with its traceback and answered with a
generic 500 body that reveals nothing about the server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from yarl import URL

from merganser.errors import (
    AuthenticationError,
    ConflictError,
    MerganserError,
    NotAllowedError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    UnavailableError,
    ValidationError,
)
from merganser.resolvers.access import token_accepted
from merganser.resolvers.context import Core
from merganser.resolvers.inputs import Input, with_default_ip
from merganser.resolvers.paging import PageResult

log = logging.getLogger("merganser.http")

CORE: web.AppKey[Core] = web.AppKey("core", Core)
TOKEN_PARAMETER = "accessToken"
TOKEN_HEADER = "X-Access-Token"
# The demo page is static; it asks its user for the token and sends it itself.
OPEN_PREFIX = "/public/"

STATUS: dict[type[MerganserError], int] = {
    ValidationError: 400,
    AuthenticationError: 403,
    NotAllowedError: 403,
    QuotaExceededError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    RateLimitedError: 429,
    UnavailableError: 503,
}

HTTP_CODES: dict[int, str] = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
}

Input_T = TypeVar("Input_T", bound=Input)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(data: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def ok(**fields: Any) -> web.Response:
    return json_response({"success": True, **fields})


def error_response(status: int, message: str, code: str, headers: Mapping[str, str] | None = None) -> web.Response:
    response = json_response({"error": message, "code": code}, status)
    if headers:
        response.headers.update(headers)
    return response


def core_of(request: web.Request) -> Core:
    return request.app[CORE]


def query(request: web.Request) -> dict[str, str]:
    """Query parameters, less the access token (which is not API input)."""
    return {key: value for key, value in request.query.items() if key != TOKEN_PARAMETER}


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
    raw = await request.read()
    if len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    return raw


async def body(request: web.Request, limit: int | None = None) -> Any:
    """The decoded JSON body; an empty body counts as an empty object."""
    raw = await read_limited(request, limit or core_of(request).settings.max_body_size)
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationError("Malformed JSON in request body") from None


def with_ip(request: web.Request, model: type[Input], data: Any) -> Any:
    """Default the client IP of logged actions to the connecting address."""
    return with_default_ip(model, data, request.remote)


async def json_input(request: web.Request, model: type[Input_T]) -> Input_T:
    return model.from_json(with_ip(request, model, await body(request)))


def query_input(request: web.Request, model: type[Input_T]) -> Input_T:
    return model.from_query(with_ip(request, model, query(request)))


def page_links(request: web.Request, page: PageResult[Any]) -> dict[str, Any]:
    """``total``, ``page``, ``prev`` and ``next`` fields with URLs to follow."""
    kept = {key: value for key, value in query(request).items() if key not in ("next", "previous", "page")}

    def link(parameter: str, cursor: str | None, number: int) -> str | bool:
        if cursor is None:
            return False
        return str(URL(request.path).with_query({**kept, parameter: cursor, "page": str(max(number, 1))}))

    return {
        "total": page.total,
        "page": page.page,
        "prev": link("previous", page.previous, page.page - 1),
        "next": link("next", page.next, page.page + 1),
    }


def given_token(request: web.Request) -> str | None:
    """The access token a request carries, in its header or its query string."""
    return request.headers.get(TOKEN_HEADER) or request.query.get(TOKEN_PARAMETER)


_OWN_TOKEN_CHECK = "merganser_checks_own_token"


def checks_own_token(handler: Handler) -> Handler:
    """Mark a handler that checks the access token itself, so the middleware lets its requests through.

    GraphQL needs this: a WebSocket carries the token in its first message,
    after the handshake the middleware would otherwise refuse.
    """
    setattr(handler, _OWN_TOKEN_CHECK, True)
    return handler


def _token_checked_here(request: web.Request) -> bool:
    return not request.path.startswith(OPEN_PREFIX) and not getattr(request.match_info.handler, _OWN_TOKEN_CHECK, False)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the access token and turn every failure into a JSON error."""
    token = request.app[CORE].settings.access_token
    if token and _token_checked_here(request) and not token_accepted(token, given_token(request)):
        return error_response(401, "Invalid or missing access token", "InvalidToken")
    try:
        return await handler(request)
    except MerganserError as error:
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, RateLimitedError) else None
        return error_response(STATUS.get(type(error), 400), error.message, error.code, headers)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        messages = {404: "Unknown API endpoint", 413: error.text or error.reason}
        message = messages.get(error.status, error.reason)
        return error_response(error.status, message, HTTP_CODES.get(error.status, "HttpError"))
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return error_response(500, "Internal server error", "InternalError")
