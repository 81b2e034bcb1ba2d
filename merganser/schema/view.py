"""GraphQL at /graphql: queries and mutations over HTTP, subscriptions over WebSockets, GraphiQL.

* ``POST /graphql`` (JSON) runs queries and mutations, ``GET /graphql?query=…``
  queries only; subscriptions need a WebSocket. GraphQL errors (syntax,
  unknown fields, wrong variable types, the core's refusals) come back with
  status 200 in ``errors``; a request that is not GraphQL at all (malformed
  JSON, no query, a mutation over GET) gets 400, and every error body is
  ``{"errors": [{"message", "extensions": {"code"}}]}``.
* WebSockets speak both of Strawberry's protocols, ``graphql-transport-ws``
  and the older ``graphql-ws``. Each connection has its own handler task;
  a send that a client does not take within two heartbeat intervals closes
  that client only, and a malformed message closes it with code 4400.
* With an access token configured, HTTP requests carry it like REST's (the
  ``X-Access-Token`` header or the ``accessToken`` parameter); a WebSocket
  carries it in its ``connection_init`` payload as ``accessToken`` (or at the
  handshake). Tokens are compared in constant time.
* A browser asking for HTML gets GraphiQL, whose scripts and styles merganser
  serves itself from ``static/`` (see ``scripts/vendor-graphiql.sh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeGuard

import orjson
from aiohttp import web
from cross_web import HTTPException
from strawberry.aiohttp.views import AiohttpWebSocketAdapter, GraphQLView
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler, Operation
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from merganser.resolvers.access import token_accepted
from merganser.resolvers.context import Core
from merganser.rest_compat.http import CORE, checks_own_token, given_token
from merganser.schema.context import GraphQLContext
from merganser.schema.root import schema
from merganser.schema.sharing import DIRECT_SINK

PATH = "/graphql"
STATIC = Path(__file__).parent / "static"
STATIC_FILES = {
    "graphiql.min.js": "text/javascript",
    "graphiql.min.css": "text/css",
    "react.production.min.js": "text/javascript",
    "react-dom.production.min.js": "text/javascript",
}
MAX_OPERATIONS_PER_CONNECTION = 50
CONNECTION_INIT_TIMEOUT = timedelta(seconds=30)
HTTP_CODES = {405: "MethodNotAllowed", 413: "PayloadTooLarge"}
HTTP_OPERATIONS = {"GET": {OperationType.QUERY}, "POST": {OperationType.QUERY, OperationType.MUTATION}}
DIRECT_WRITE_LIMIT = 64 * 1024
"""Bytes a socket may have waiting before results go through the operation's task (and its send timeout)."""
TEXT_FRAME = 0x81


def error_response(status: int, message: str, code: str) -> web.Response:
    body = orjson.dumps({"errors": [{"message": message, "extensions": {"code": code}}]})
    return web.Response(body=body, status=status, content_type="application/json")


class WebSocketAdapter(AiohttpWebSocketAdapter):
    """Text frames of JSON; a client that does not take a frame in time is disconnected."""

    async def send_json(self, message: Mapping[str, object]) -> None:
        """``asyncio.timeout`` rather than ``wait_for``, which makes a task of every frame's send."""
        view = self.view
        assert isinstance(view, MerganserGraphQLView)
        try:
            async with asyncio.timeout(view.send_timeout):
                await self.ws.send_str(orjson.dumps(message).decode())
        except TimeoutError:
            # A client that takes no frames would not take a close frame either: drop the connection.
            if self.request.transport is not None:
                self.request.transport.close()
            raise WebSocketDisconnected from None
        except (RuntimeError, ConnectionError) as error:
            raise WebSocketDisconnected from error


def _text_frame(payload: bytes) -> bytes:
    """One final, unmasked, uncompressed text frame (RFC 6455, section 5.2), as a server sends it."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", TEXT_FRAME, length)
    elif length < 65536:
        header = struct.pack("!BBH", TEXT_FRAME, 126, length)
    else:
        header = struct.pack("!BBQ", TEXT_FRAME, 127, length)
    return header + payload


class OperationSink:
    """Writes a shared subscription's results for one operation straight to its WebSocket.

    The frame holds what Strawberry's handler would send for a data-only
    result (``next`` or, in the legacy protocol, ``data``), so clients cannot
    tell the two paths apart. It only writes while the operation is still
    live and the socket keeps up; otherwise the result goes the usual way.
    """

    __slots__ = ("_adapter", "_live", "key")

    def __init__(self, adapter: WebSocketAdapter, kind: str, operation_id: str, live: Callable[[], bool]) -> None:
        self._adapter = adapter
        self._live = live
        self.key = (kind, operation_id)

    def frame(self, data: orjson.Fragment) -> bytes:
        kind, operation_id = self.key
        return _text_frame(orjson.dumps({"id": operation_id, "type": kind, "payload": {"data": data}}))

    def write(self, frame: bytes) -> bool:
        transport = self._adapter.request.transport
        if (
            transport is None
            or transport.is_closing()
            or self._adapter.ws.closed
            or transport.get_write_buffer_size() > DIRECT_WRITE_LIMIT
            or not self._live()
        ):
            return False
        transport.write(frame)
        return True


def _invalid_operation(message: Mapping[str, Any], with_payload: bool) -> str | None:
    """What is wrong with a subscribe/start message (None if nothing): the handlers assume these shapes."""
    if not isinstance(message.get("id"), str) or not message["id"]:
        return "The message has no id"
    if not with_payload:
        return None
    payload = message.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        return "The message's payload must be an object with a query"
    if not isinstance(payload.get("variables"), dict | None):
        return "variables must be an object"
    if not isinstance(payload.get("operationName"), str | None):
        return "operationName must be a string"
    return None


class TransportWSHandler(BaseGraphQLTransportWSHandler[GraphQLContext, None]):
    """graphql-transport-ws, refusing malformed messages with close code 4400 as the protocol says."""

    async def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.handle_invalid_message("Messages must be objects with a type")
            return
        if message["type"] in ("subscribe", "complete"):
            problem = _invalid_operation(message, with_payload=message["type"] == "subscribe")
            if problem:
                await self.handle_invalid_message(problem)
                return
        await super().handle_message(message)

    async def run_operation(self, operation: Operation[GraphQLContext, None]) -> None:
        """The operation's own task: results of a shared subscription may be written for it directly."""
        assert isinstance(self.websocket, WebSocketAdapter)
        DIRECT_SINK.set(OperationSink(self.websocket, "next", operation.id, lambda: self._live(operation)))
        await super().run_operation(operation)

    def _live(self, operation: Operation[GraphQLContext, None]) -> bool:
        return not operation.completed and self.operations.get(operation.id) is operation

    async def send_message(self, message: Any) -> None:
        """A client that went away ends its operations through the connection's shutdown, not here."""
        with contextlib.suppress(WebSocketDisconnected):
            await super().send_message(message)


class LegacyWSHandler(BaseGraphQLWSHandler[GraphQLContext, None]):
    """graphql-ws (subscriptions-transport-ws), closing the connection on malformed messages."""

    async def handle_message(self, message: Any) -> None:
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            await self.websocket.close(code=4400, reason="Messages must be objects with a type")
            return
        if message["type"] in ("start", "stop"):
            problem = _invalid_operation(message, with_payload=message["type"] == "start")
            if problem:
                await self.websocket.close(code=4400, reason=problem)
                return
        await super().handle_message(message)

    async def handle_async_results(
        self, operation_id: str, query: str, operation_name: str | None, variables: dict[str, object] | None
    ) -> None:
        """The operation's own task: results of a shared subscription may be written for it directly."""
        assert isinstance(self.websocket, WebSocketAdapter)
        task = asyncio.current_task()
        DIRECT_SINK.set(
            OperationSink(self.websocket, "data", operation_id, lambda: self.tasks.get(operation_id) is task)
        )
        await super().handle_async_results(operation_id, query, operation_name, variables)

    async def send_message(self, message: Any) -> None:
        with contextlib.suppress(WebSocketDisconnected):
            await super().send_message(message)


class MerganserGraphQLView(GraphQLView[GraphQLContext, None]):
    """Strawberry's aiohttp view, with merganser's access token, JSON codec and error bodies."""

    websocket_adapter_class = WebSocketAdapter  # type: ignore[assignment]
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, core: Core) -> None:
        interval = core.settings.heartbeat_interval
        super().__init__(
            schema,
            keep_alive=True,
            keep_alive_interval=interval,
            connection_init_wait_timeout=CONNECTION_INIT_TIMEOUT,
            max_subscriptions_per_connection=MAX_OPERATIONS_PER_CONNECTION,
        )
        self.core = core
        self.send_timeout = 2 * interval
        self._page = (STATIC / "graphiql.html").read_text()

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        """JSON POSTs, nearly every request, take a short path; Strawberry's ``run`` handles the rest."""
        json_post = request.method == "POST" and request.content_type == "application/json"
        token = self.core.settings.access_token
        if (
            token
            and (json_post or not self.is_websocket_request(request))
            and (json_post or not self.should_render_graphql_ide(self.request_adapter_class(request)))
            and not token_accepted(token, given_token(request))
        ):
            return error_response(401, "Invalid or missing access token", "InvalidToken")
        try:
            if json_post:
                return await self._post(request)
            return await self.run(request)
        except HTTPException as error:
            return error_response(error.status_code, error.reason, HTTP_CODES.get(error.status_code, "BadRequest"))
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return error_response(error.status, error.reason, HTTP_CODES.get(error.status, "BadRequest"))

    async def _post(self, request: web.Request) -> web.Response:
        """A JSON POST, answered as ``run`` would answer it, without its general-purpose steps."""
        try:
            document = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise HTTPException(400, "Unable to parse request body as JSON") from None
        if isinstance(document, list):
            raise HTTPException(400, "Batching is not enabled")
        if not isinstance(document, dict):
            raise HTTPException(400, "The body must be a JSON object with a query")
        query, variables = document.get("query"), document.get("variables")
        operation_name, extensions = document.get("operationName"), document.get("extensions")
        if not isinstance(query, str | None):
            raise HTTPException(400, "The GraphQL operation's `query` must be a string or null, if provided.")
        if not isinstance(variables, dict | None):
            raise HTTPException(400, "The GraphQL operation's `variables` must be an object or null, if provided.")
        if not isinstance(operation_name, str | None):
            raise HTTPException(400, "The GraphQL operation's `operationName` must be a string or null, if provided.")
        if not isinstance(extensions, dict | None):
            raise HTTPException(400, "The GraphQL operation's `extensions` must be an object or null, if provided.")
        data = GraphQLRequestData(
            query=query, variables=variables, operation_name=operation_name, extensions=extensions, protocol="http"
        )
        result = await self._execute(data, GraphQLContext(self.core, request.remote), HTTP_OPERATIONS["POST"])
        body = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def is_websocket_request(self, request: web.Request) -> TypeGuard[web.Request]:
        """Header first: checking a handshake in full costs, and almost no request is one."""
        return request.headers.get("Upgrade", "").lower() == "websocket" and super().is_websocket_request(request)

    async def create_websocket_response(self, request: web.Request, subprotocol: str | None) -> web.WebSocketResponse:
        """Pings find clients that vanished without closing.

        No per-message compression: frames are small JSON, and a compressor
        per connection would cost CPU on every frame of a fan-out, and memory
        on every idle subscriber, for little gain.
        """
        ws = web.WebSocketResponse(
            protocols=[subprotocol] if subprotocol else [],
            heartbeat=self.core.settings.heartbeat_interval,
            compress=False,
        )
        await ws.prepare(request)
        return ws

    async def get_context(self, request: web.Request, response: Any) -> GraphQLContext:
        websocket = isinstance(response, web.WebSocketResponse)
        context = GraphQLContext(self.core, request.remote, cache=not websocket)
        if websocket:
            context.handshake_token = given_token(request)
        return context

    async def on_ws_connect(self, context: GraphQLContext) -> UnsetType | dict[str, object] | None:
        params = context.connection_params or {}
        given = params.get("accessToken") if isinstance(params.get("accessToken"), str) else None
        if not token_accepted(self.core.settings.access_token, given or context.handshake_token):
            raise ConnectionRejectionError({"message": "Invalid or missing access token", "code": "InvalidToken"})
        return UNSET

    async def render_graphql_ide(self, request: web.Request) -> web.Response:
        page = self._page.replace("{{static}}", request.path.rstrip("/") + "/static")
        return web.Response(text=page, content_type="text/html")

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data)

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

    def create_response(self, response_data: Any, sub_response: web.Response) -> web.Response:
        sub_response.body = orjson.dumps(response_data)
        sub_response.content_type = "application/json"
        return sub_response

    async def execute_single(
        self,
        request: web.Request,
        request_adapter: Any,
        sub_response: web.Response,
        context: GraphQLContext,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """Queries over GET, queries and mutations over POST; subscriptions need a WebSocket."""
        return await self._execute(request_data, context, HTTP_OPERATIONS[request_adapter.method])

    async def _execute(
        self, data: GraphQLRequestData, context: GraphQLContext, allowed: set[OperationType]
    ) -> ExecutionResult:
        try:
            return await self.schema.execute(
                data.query,
                variable_values=data.variables,
                context_value=context,
                operation_name=data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=data.extensions,
            )
        except MissingQueryError:
            raise HTTPException(400, "No GraphQL query found in the request") from None
        except CannotGetOperationTypeError as error:
            raise HTTPException(400, error.as_http_error_reason()) from None
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(400, "Subscriptions need a WebSocket connection") from None
            raise HTTPException(400, "Mutations are not allowed over GET; use POST") from None


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    response = web.FileResponse(STATIC / name, headers={"Cache-Control": "public, max-age=86400"})
    response.content_type = STATIC_FILES[name]
    return response


def add_graphql_routes(app: web.Application) -> None:
    """Serve GraphQL (and GraphiQL) at /graphql, and GraphiQL's files below /graphql/static/."""
    view = checks_own_token(MerganserGraphQLView(app[CORE]))
    app.router.add_route("*", PATH, view)
    app.router.add_get(PATH + "/static/{name}", checks_own_token(_static))
