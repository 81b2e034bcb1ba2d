"""The fast paths of execution answer exactly as graphql-core does.

``MerganserSchema.execute`` completes plain objects by plan and runs simple
queries without graphql-core's executor (see merganser/schema/execution.py).
Each query here is run three ways against the same server state: as served,
with compiled queries turned off, and through graphql-core's plain executor
with no plans at all; the three answers must be identical, errors included.
"""

from __future__ import annotations

from inspect import isawaitable
from typing import Any

import pytest
from gqlhelpers import USER_FIELDS, Gql, core, create_user, mailbox_ids
from graphql import execute
from helpers import UNKNOWN_ID, deliver_ok, simple_message
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from merganser.schema.context import GraphQLContext
from merganser.schema.errors import present_all
from merganser.schema.root import schema

QUERIES: list[tuple[str, dict[str, Any]]] = [
    (f"query($id: ID!) {{ user(id: $id) {{ {USER_FIELDS} }} }}", {}),
    ("query($id: ID!) { me: user(id: $id) { name: username id __typename limits { q: quota { used } } } }", {}),
    (
        "query($id: ID!) { user(id: $id) { ...Who limits { ...Q } } } fragment Who on User { id address } "
        "fragment Q on Limits { quota { allowed } }",
        {},
    ),
    ("query($id: ID!) { user(id: $id) { ... on User { id } username } }", {}),
    ("query($id: ID!) { a: user(id: $id) { id } b: user(id: $id) { username } }", {}),
    ("query($id: ID!, $skip: Boolean!) { user(id: $id) { id username @skip(if: $skip) } }", {"skip": True}),
    ("query($id: ID!) { user(id: $id) { id mailboxes { path total } } }", {}),
    ("query($first: Int = 2) { users(first: $first) { totalCount nodes { username limits { quota { used } } } } }", {}),
    ('{ users(query: "user", first: 1) { pageInfo { hasNextPage } edges { cursor node { id } } } }', {}),
    (
        "query($id: ID!) { user(id: $id) { mailboxes { messages(first: 5) { nodes { subject from { address } "
        "to { name } flags seen date } } } } }",
        {},
    ),
    ("query($q: String) { addresses(query: $q) { nodes { address main user { username } } } }", {"q": None}),
    ('{ user(id: "' + UNKNOWN_ID + '") { id } }', {}),
    ('{ user(id: "nope") { id } }', {}),
    ("query($id: ID!) { user(id: $id) { id } }", {"id": 12345}),
    ("query($id: ID!) { user(id: $id) { id } }", {"id": None}),
    ("query($id: ID!) { user(id: $id) { id } }", {"id": ["x"]}),
    ("query($id: ID) { user(id: $id) { id } }", {}),
    ("query($id: ID!) { user(id: $id) { id mailbox(id: $id) { path } } }", {}),
    ("{ __typename users { totalCount } }", {}),
    ("{ __schema { queryType { name } } }", {}),
]


async def three_ways(api: Any, query: str, variables: dict[str, Any]) -> list[tuple[Any, list[Any] | None]]:
    answers = []
    for compiling in (True, False):
        schema.compiling = compiling
        try:
            result = await schema.execute(query, variables, GraphQLContext(core(api), "127.0.0.1"))
        finally:
            schema.compiling = True
        answers.append((result.data, [error.formatted for error in result.errors or ()] or None))
    prepared = schema.preparer.prepare(query)
    if prepared.errors:
        answers.append((None, [error.formatted for error in present_all(prepared.errors) or ()]))
        return answers
    plain = execute(
        schema._schema,
        prepared.document,
        context_value=GraphQLContext(core(api), "127.0.0.1"),
        variable_values=variables,
        executor_class=StrawberryGraphQLCoreExecutionContext,
    )
    if isawaitable(plain):
        plain = await plain
    answers.append((plain.data, [error.formatted for error in present_all(plain.errors) or ()] or None))
    return answers


@pytest.mark.parametrize(("query", "variables"), QUERIES, ids=range(len(QUERIES)))
async def test_fast_paths_answer_as_graphql_core_does(api, graphql: Gql, query, variables):
    user = await create_user(graphql, "user1", address="user1@example.com", name="First")
    await create_user(graphql, "user2", address="user2@example.com")
    await deliver_ok(api, "user1@example.com", simple_message("Hello", "Body"))
    assert "INBOX" in await mailbox_ids(graphql, user["id"])
    values = {"id": user["id"], **variables}
    served, uncompiled, plain = await three_ways(api, query, values)
    assert served == uncompiled == plain
    assert served[0] is not None or served[1]


def compiled(query: str) -> bool:
    prepared = schema.preparer.prepare(query)
    plan = prepared.plan(schema._schema, None)
    assert plan is not None
    return schema._compiled(prepared, plan.operation) is not None


def test_which_queries_are_compiled():
    assert compiled(QUERIES[0][0])  # the user lookup: every field plain
    assert compiled(QUERIES[2][0])  # fragments on the type itself
    assert not compiled(QUERIES[5][0])  # @skip depends on a variable
    assert not compiled(QUERIES[6][0])  # mailboxes have resolvers
    assert not compiled(QUERIES[18][0])  # __typename at the root
    assert not compiled('mutation { deleteUser(id: "' + UNKNOWN_ID + '") }')


async def test_a_refused_compiled_query_runs_its_resolver_once(api, monkeypatch):
    """The core's refusal is answered on the compiled path, not by running the query again in graphql-core."""
    query = '{ user(id: "' + UNKNOWN_ID + '") { id username } }'
    assert compiled(query)
    storage = core(api).storage
    get_user = storage.get_user
    looked_up: list[str] = []

    async def counted(user_id: str) -> Any:
        looked_up.append(user_id)
        return await get_user(user_id)

    monkeypatch.setattr(storage, "get_user", counted)
    result = await schema.execute(query, None, GraphQLContext(core(api), "127.0.0.1"))
    assert result.data is None
    assert [(error.message, error.path, error.extensions) for error in result.errors or ()] == [
        ("This user does not exist", ["user"], {"code": "UserNotFound"})
    ]
    assert looked_up == [UNKNOWN_ID]
