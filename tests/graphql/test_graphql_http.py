"""GraphQL over HTTP: protocol errors, the query limits, error masking, the access token and GraphiQL.

Requests a GraphQL client would refuse to send (malformed JSON, a batch, a
mutation over GET) are made with aiohttp directly; the rest goes through gql.
Whatever is sent, the answer is never a 500 and always carries ``errors``
with a message and ``extensions.code``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import orjson
import pytest
from gql.transport.exceptions import TransportQueryError
from gqlhelpers import Gql, create_user, open_graphql, post
from graphql import get_introspection_query
from helpers import UNKNOWN_ID

import merganser.resolvers.lookup
from merganser.resolvers.inputs import MAX_PAGE_SIZE
from merganser.schema import limits

STATIC = Path(merganser.__file__).parent / "schema" / "static"


def only_error(document: dict, code: str) -> dict:
    assert list(document) in (["errors"], ["data", "errors"]), document
    [error] = document["errors"]
    assert error["extensions"]["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{not json", "application/json", "Unable to parse request body as JSON"),
        (b"{}", "application/json", "No GraphQL query found in the request"),
        (b'{"query": 5}', "application/json", "must be a string"),
        (b'{"query": "{ users { totalCount } }", "variables": [1]}', "application/json", "must be an object"),
        (b'[{"query": "{ users { totalCount } }"}]', "application/json", "Batching is not enabled"),
        (b"query { users { totalCount } }", "text/plain", "Unsupported content type"),
    ],
)
async def test_requests_that_are_not_graphql_get_400(api, body, content_type, message):
    status, document = await post(api, body, headers={"Content-Type": content_type})
    assert status == 400
    assert message in only_error(document, "BadRequest")["message"]


async def test_operations_over_get(api, graphql: Gql):
    await create_user(graphql)
    async with api.get("/graphql", params={"query": "{ users { totalCount } }"}) as response:
        assert response.status == 200
        assert await response.json() == {"data": {"users": {"totalCount": 1}}}
    mutation = 'mutation { deleteUser(id: "0123456789abcdef01234567") }'
    async with api.get("/graphql", params={"query": mutation}) as response:
        assert response.status == 400
        assert "not allowed over GET" in only_error(await response.json(), "BadRequest")["message"]
    async with api.put("/graphql", json={"query": "{ users { totalCount } }"}) as response:
        assert response.status == 405
        only_error(await response.json(), "MethodNotAllowed")


async def test_subscriptions_need_a_websocket(api):
    status, document = await post(api, {"query": 'subscription { updates(user: "0123456789abcdef01234567") { id } }'})
    assert status == 400
    assert only_error(document, "BadRequest")["message"] == "Subscriptions need a WebSocket connection"


@pytest.mark.parametrize(
    ("payload", "code", "fragment"),
    [
        ({"query": "{ users { totalCount }"}, "GraphQLParseFailed", "Syntax Error"),
        ({"query": "{ users { colour } }"}, "GraphQLValidationFailed", "Cannot query field 'colour'"),
        ({"query": "{ user { id } }"}, "GraphQLValidationFailed", "Query.user(id:)"),
        (
            {"query": "query($n: Int!) { users(first: $n) { totalCount } }", "variables": {"n": "ten"}},
            "GraphQLValidationFailed",
            "Variable '$n'",
        ),
        (
            {"query": "query($n: Int!) { users(first: $n) { totalCount } }"},
            "GraphQLValidationFailed",
            "to be provided",
        ),
        (
            {"query": 'mutation { createUser(input: {username: "a", password: "b", quota: 1.5}) { id } }'},
            "GraphQLValidationFailed",
            "Long",
        ),
        ({"query": "query A { users { totalCount } } query B { users { totalCount } }"}, None, None),
    ],
)
async def test_bad_graphql_is_answered_with_graphql_errors(api, payload, code, fragment):
    status, document = await post(api, payload)
    if code is None:  # two operations and no operationName: the request cannot be run at all
        assert status == 400
        only_error(document, "BadRequest")
        return
    assert status == 200
    assert document["data"] is None
    assert fragment in only_error(document, code)["message"]


def nested(levels: int) -> str:
    """A query ``levels`` (even, 6 or more) fields deep, through threads of messages."""
    inner = "from { address }"
    for _ in range((levels - 6) // 2):
        inner = f"thread {{ messages {{ {inner} }} }}"
    return f'{{ user(id: "0123456789abcdef01234567") {{ mailboxes {{ messages {{ nodes {{ {inner} }} }} }} }} }}'


async def test_depth_limit(graphql: Gql, monkeypatch):
    error = await graphql.error(nested(limits.MAX_DEPTH + 2), "QueryTooDeep")
    assert f"at most {limits.MAX_DEPTH}" in error["message"]
    # At the limit the query runs (and finds no such user) unless it costs too much, as it does.
    await graphql.error(nested(limits.MAX_DEPTH), "QueryTooComplex")
    monkeypatch.setattr(limits, "MAX_COST", 10**9)
    # (Another query text: limits are worked out once per text.)
    await graphql.error("query AtTheLimit " + nested(limits.MAX_DEPTH), "UserNotFound")


async def test_depth_counts_through_fragments(graphql: Gql):
    query = (
        'query { user(id: "0123456789abcdef01234567") { ...Deep } } '
        "fragment Deep on User { mailboxes { messages { nodes { thread { messages { thread { messages "
        "{ thread { messages { thread { messages { id } } } } } } } } } } } }"
    )
    await graphql.error(query, "QueryTooDeep")


async def test_page_size_cap(graphql: Gql):
    over = MAX_PAGE_SIZE + 1
    error = await graphql.error(f"{{ users(first: {over}) {{ totalCount }} }}", "PageTooLarge")
    assert error["message"] == f"first must be between 1 and {MAX_PAGE_SIZE} (got {over})"
    await graphql.error("query($n: Int!) { users(first: $n) { totalCount } }", "PageTooLarge", n=over)
    await graphql.error("query($n: Int = 1000) { users(first: $n) { totalCount } }", "PageTooLarge")
    await graphql.error("{ addresses(first: 0) { totalCount } }", "InputValidationError")
    assert (await graphql.data(f"{{ users(first: {MAX_PAGE_SIZE}) {{ totalCount }} }}"))["users"]["totalCount"] == 0


async def test_cost_limit(graphql: Gql):
    costly = "{ users(first: 100) { nodes { mailboxes { messages(first: 100) { nodes { id subject } } } } } }"
    error = await graphql.error(costly, "QueryTooComplex")
    cost = int(re.search(r"cost (\d+)", error["message"])[1])
    assert cost > limits.MAX_COST
    # Message bodies cost more than summary fields.
    bodies = "query($n: Int!) { users(first: $n) { nodes { mailboxes { messages(first: 20) { nodes { html } } } } } }"
    await graphql.error(bodies, "QueryTooComplex", n=10)
    cheap = "{ users(first: 10) { nodes { mailboxes { total messages(first: 10) { nodes { id subject } } } } } }"
    assert (await graphql.data(cheap))["users"]["nodes"] == []


async def test_graphiqls_introspection_query_is_allowed(graphql: Gql):
    query = get_introspection_query(
        specified_by_url=True, directive_is_repeatable=True, schema_description=True, input_value_deprecation=True
    )
    schema = (await graphql.data(query))["__schema"]
    types = {kind["name"]: kind for kind in schema["types"]}
    assert {"User", "Mailbox", "Message", "Thread", "UpdateEvent", "MessageEvent", "MailboxEvent"} <= set(types)
    # No type shows a secret: no hash, seed or token field, and a password only where one is created.
    for kind in schema["types"]:
        if kind["name"] in ("Query", "Mutation", "Subscription"):
            continue
        for field in kind.get("fields") or ():
            assert not re.search(r"hash|seed|secret|token", field["name"], re.IGNORECASE), (kind["name"], field)
            if "password" in field["name"].lower():
                assert (kind["name"], field["name"]) in {
                    ("CreatedApplicationPassword", "password"),
                    ("CreatedApplicationPassword", "applicationPassword"),
                    ("User", "applicationPasswords"),
                }


async def test_unexpected_errors_are_logged_and_masked(api, graphql: Gql, monkeypatch, caplog):
    async def broken(*args: object) -> None:
        raise RuntimeError("disk on fire; hash $2b$12$secret")

    user = await create_user(graphql)
    monkeypatch.setattr(merganser.resolvers.lookup, "get_user", broken)
    with caplog.at_level(logging.ERROR, logger="merganser.graphql"):
        error = await graphql.error("query($id: ID!) { user(id: $id) { id } }", "InternalError", id=user["id"])
    assert error["message"] == "Internal server error"
    assert error["path"] == ["user"]
    assert "fire" not in orjson.dumps(error).decode()
    [record] = [record for record in caplog.records if record.name == "merganser.graphql"]
    assert record.exc_info is not None and "disk on fire" in str(record.exc_info[1])


async def test_failed_lookup_nulls_data_and_keeps_message_path_and_code(graphql: Gql):
    user = await create_user(graphql)
    query = """
        query($id: ID!, $bad: ID!) {
            user(id: $id) { username mailbox(id: $bad) { id } }
        }
    """
    with pytest.raises(TransportQueryError) as raised:
        await graphql.data(query, id=user["id"], bad=UNKNOWN_ID)
    # user(id) and mailbox(id) are non-null: the failed mailbox nulls its parents up to data.
    assert raised.value.data is None
    [error] = raised.value.errors
    assert error["message"] == "Unknown mailbox"
    assert error["extensions"]["code"] == "MailboxNotFound"
    assert error["path"] == ["user", "mailbox"]


async def test_request_body_limit(make_api):
    api = await make_api(max_body_size=2000, max_message_size=1000)
    status, document = await post(api, {"query": "{ users { totalCount } }", "padding": "x" * 5000})
    assert status == 413
    only_error(document, "PayloadTooLarge")


async def test_access_token(make_api):
    api = await make_api(access_token="s3cret")
    query = {"query": "{ users { totalCount } }"}
    for headers in ({}, {"X-Access-Token": "wrong"}, {"X-Access-Token": "s3cre"}):
        status, document = await post(api, query, headers=headers)
        assert status == 401
        assert only_error(document, "InvalidToken")["message"] == "Invalid or missing access token"
    status, document = await post(api, query, headers={"X-Access-Token": "s3cret"})
    assert (status, document) == (200, {"data": {"users": {"totalCount": 0}}})
    async with api.get("/graphql", params={"query": "{ users { totalCount } }", "accessToken": "s3cret"}) as response:
        assert response.status == 200
    async with open_graphql(api, headers={"X-Access-Token": "s3cret"}) as graphql:
        await create_user(graphql)
    # GraphiQL's page and files hold no data, so they need no token; REST still does.
    async with api.get("/graphql", headers={"Accept": "text/html"}) as response:
        assert response.status == 200
    async with api.get("/graphql/static/graphiql.min.js") as response:
        assert response.status == 200
    async with api.get("/users") as response:
        assert response.status == 401


async def test_graphiql_is_served_with_local_files(api):
    async with api.get("/graphql", headers={"Accept": "text/html,application/xhtml+xml"}) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert "https://" not in page and "http://" not in page
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(source for source in sources if source.startswith("/")) == [
        "/graphql/static/graphiql.min.css",
        "/graphql/static/graphiql.min.js",
        "/graphql/static/react-dom.production.min.js",
        "/graphql/static/react.production.min.js",
    ]
    for source in sources:
        if not source.startswith("/"):
            continue
        async with api.get(source) as response:
            assert response.status == 200
            body = await response.read()
        assert body == (STATIC / source.rsplit("/", 1)[1]).read_bytes()
        assert response.content_type == ("text/css" if source.endswith(".css") else "text/javascript")
    for name in ("LICENSE-graphiql", "LICENSE-react", "LICENSE-react-dom"):
        assert "Permission is hereby granted" in (STATIC / name).read_text()
    async with api.get("/graphql/static/../../app.py") as response:
        assert response.status == 404
    async with api.get("/graphql/static/LICENSE-react") as response:
        assert response.status == 404
