"""Helpers shared by the GraphQL tests (imported as ``from gqlhelpers import ...``).

Queries and mutations go through gql, a real GraphQL client, over HTTP. Every
answer (data or errors) is appended to :data:`TRANSCRIPT` as JSON and checked
for password hashes, so a test can also scan everything the server said.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from gql import Client, GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import TransportQueryError

from merganser.resolvers.context import Core
from merganser.rest_compat.http import CORE

PASSWORD = "secretpass"
# The address of the ``account`` fixture's user (tests/graphql/conftest.py), where tests deliver mail.
USER = "testuser@example.com"
BCRYPT_MARKERS = ("$2b$", "$2a$", "$2y$")
TRANSCRIPT: list[str] = []

USER_FIELDS = """
    id username name address language forward targetUrl retention enabled2fa activated disabled created
    limits { quota { allowed used } recipients { allowed used ttl } forwards { allowed used ttl } }
"""
MESSAGE_FIELDS = """
    id mailboxId threadId uid size subject intro date seen flagged draft deleted flags hasAttachments
    messageId expires from { name address } to { name address } cc { name address }
"""


def _record(document: Any) -> None:
    text = orjson.dumps(document).decode()
    TRANSCRIPT.append(text)
    for marker in BCRYPT_MARKERS:
        assert marker not in text, f"a password hash leaked: {text}"


class Gql:
    """A gql session with shortcuts: ``data`` insists on success, ``error`` on one error of a code."""

    def __init__(self, session: Any) -> None:
        self.session = session

    async def data(self, query: str, **variables: Any) -> dict[str, Any]:
        result = await self.session.execute(GraphQLRequest(query, variable_values=variables or None))
        _record(result)
        return result

    async def errors(self, query: str, **variables: Any) -> list[dict[str, Any]]:
        try:
            result = await self.session.execute(GraphQLRequest(query, variable_values=variables or None))
        except TransportQueryError as error:
            _record({"errors": error.errors, "data": error.data})
            assert error.errors, error
            for item in error.errors:
                assert set(item["extensions"]) >= {"code"}, item
            return error.errors
        raise AssertionError(f"expected errors, got {result}")

    async def error(self, query: str, code: str, **variables: Any) -> dict[str, Any]:
        errors = await self.errors(query, **variables)
        assert len(errors) == 1, errors
        assert errors[0]["extensions"]["code"] == code, errors
        assert errors[0]["message"], errors
        return errors[0]


@contextlib.asynccontextmanager
async def open_graphql(api: TestClient, headers: dict[str, str] | None = None) -> AsyncIterator[Gql]:
    transport = AIOHTTPTransport(url=str(api.make_url("/graphql")), headers=headers)
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        yield Gql(session)


def core(api: TestClient) -> Core:
    """The server's core; tests use it only to peek (counting subscribers, reading a 2FA seed)."""
    return api.server.app[CORE]


async def post(api: TestClient, payload: Any, **kwargs: Any) -> tuple[int, Any]:
    """A raw POST /graphql (for what a GraphQL client would refuse to send); never a 500."""
    body = payload if isinstance(payload, bytes | str) else orjson.dumps(payload)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    async with api.post("/graphql", data=body, headers=headers, **kwargs) as response:
        text = await response.text()
        status = response.status
    assert status < 500, f"{status}: {text}"
    document = orjson.loads(text)
    _record(document)
    return status, document


async def create_user(graphql: Gql, username: str = "testuser", **fields: Any) -> dict[str, Any]:
    data = await graphql.data(
        f"mutation($input: CreateUserInput!) {{ createUser(input: $input) {{ {USER_FIELDS} }} }}",
        input={"username": username, "password": PASSWORD, **fields},
    )
    return data["createUser"]


async def mailbox_ids(graphql: Gql, user_id: str) -> dict[str, str]:
    data = await graphql.data("query($id: ID!) { user(id: $id) { mailboxes { id path } } }", id=user_id)
    return {mailbox["path"]: mailbox["id"] for mailbox in data["user"]["mailboxes"]}
