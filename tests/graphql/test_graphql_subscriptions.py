"""GraphQL subscriptions over WebSockets, in both protocols, fed by real LMTP deliveries.

gql's WebSocket transport speaks both graphql-transport-ws and the older
graphql-ws (which gql calls the Apollo protocol); tests of protocol details
(malformed messages, refused connections) use aiohttp's WebSocket client
directly. Every test runs on both storage backends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from gqlhelpers import USER, Gql, core, create_user, open_graphql
from helpers import deliver_ok, simple_message, wait_for

import merganser.resolvers.updates
from merganser.resolvers.hub import SubscriberTooSlow
from merganser.resolvers.updates import event_payload

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
UPDATES = """
    subscription($u: ID!, $since: Int) {
        updates(user: $u, since: $since) {
            id command mailboxId messageId uid modseq flags threadId path name oldPath created payload
        }
    }
"""
TIMEOUT = 10.0


def ws_url(api: Any) -> str:
    return str(api.make_url("/graphql")).replace("http", "ws", 1)


class Subscriber:
    """A gql subscription running in a task; results (or the error that ended it) arrive in ``results``."""

    def __init__(self) -> None:
        self.results: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()

    async def next(self) -> dict[str, Any]:
        result = await asyncio.wait_for(self.results.get(), TIMEOUT)
        if isinstance(result, Exception):
            raise result
        return result

    async def nothing_more(self, wait: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            result = await asyncio.wait_for(self.results.get(), wait)
            raise AssertionError(f"unexpected result {result}")


@contextlib.asynccontextmanager
async def subscribe(
    api: Any, query: str, protocol: str, init_payload: dict[str, Any] | None = None, **variables: Any
) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber()
    transport = WebsocketsTransport(url=ws_url(api), subprotocols=[protocol], init_payload=init_payload)

    async def run() -> None:
        try:
            async with Client(transport=transport, fetch_schema_from_transport=False) as session:
                async for result in session.subscribe(GraphQLRequest(query, variable_values=variables)):
                    await subscriber.results.put(result)
        except Exception as error:
            await subscriber.results.put(error)

    task = asyncio.create_task(run())
    try:
        yield subscriber
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def subscribed(api: Any, count: int = 1) -> None:
    """Wait until the server's hub has ``count`` subscribers, so that no update is sent before."""
    hub = core(api).updates
    await wait_for(lambda: hub.subscriber_count == count, TIMEOUT)


@PROTOCOLS
async def test_a_delivery_reaches_a_subscriber(api, graphql: Gql, account, protocol):
    user_id, boxes = account
    async with subscribe(api, UPDATES, protocol, u=user_id) as subscriber:
        await subscribed(api)
        await deliver_ok(api, USER, simple_message("Live"))
        event = (await subscriber.next())["updates"]
        assert event["command"] == "EXISTS"
        assert (event["mailboxId"], event["uid"], event["flags"]) == (boxes["INBOX"], 1, [])
        entry = (await core(api).storage.read_journal(user_id, event["id"] - 1, 1))[0]
        assert event["payload"] == event_payload(entry)
        assert event["modseq"] == event["id"] and event["threadId"] == entry.data["thread"]
        await graphql.data(
            "mutation($u: ID!, $m: ID!, $id: ID!) "
            "{ updateMessage(user: $u, mailbox: $m, id: $id, input: {seen: true}) { id } }",
            u=user_id,
            m=boxes["INBOX"],
            id=event["messageId"],
        )
        changed = (await subscriber.next())["updates"]
        assert (changed["command"], changed["messageId"], changed["flags"]) == ("FETCH", event["messageId"], ["\\Seen"])
        assert changed["id"] > event["id"]
    # The client went away: so did its subscription in the hub.
    await subscribed(api, 0)


@PROTOCOLS
async def test_typed_subscriptions_filter_by_mailbox(api, graphql: Gql, account, protocol):
    user_id, boxes = account
    added = """
        subscription($u: ID!, $m: ID) {
            messageAdded(user: $u, mailbox: $m) { command mailboxId uid message { subject mailboxId } }
        }
    """
    deleted = "subscription($u: ID!, $m: ID) { messageDeleted(user: $u, mailbox: $m) { command mailboxId messageId } }"
    changed = "subscription($u: ID!) { mailboxChanged(user: $u) { command mailboxId path name oldPath } }"
    upload = (
        "mutation($u: ID!, $m: ID!, $raw: String!) { uploadMessage(user: $u, mailbox: $m, input: {raw: $raw}) { id } }"
    )
    async with (
        subscribe(api, added, protocol, u=user_id, m=boxes["Archive"]) as archive_added,
        subscribe(api, added, protocol, u=user_id) as anything_added,
        subscribe(api, deleted, protocol, u=user_id, m=boxes["INBOX"]) as inbox_deleted,
        subscribe(api, changed, protocol, u=user_id) as mailboxes_changed,
    ):
        await subscribed(api, 4)
        await deliver_ok(api, USER, simple_message("To the inbox"))
        first = (await anything_added.next())["messageAdded"]
        assert (first["command"], first["mailboxId"], first["message"]["subject"]) == (
            "EXISTS",
            boxes["INBOX"],
            "To the inbox",
        )
        await archive_added.nothing_more()
        stored = await graphql.data(upload, u=user_id, m=boxes["Archive"], raw=simple_message("Archived").decode())
        archived = (await archive_added.next())["messageAdded"]
        assert (archived["mailboxId"], archived["uid"], archived["message"]["subject"]) == (
            boxes["Archive"],
            1,
            "Archived",
        )
        assert (await anything_added.next())["messageAdded"]["message"]["subject"] == "Archived"
        await graphql.data(
            "mutation($u: ID!, $m: ID!, $id: ID!) { deleteMessage(user: $u, mailbox: $m, id: $id) }",
            u=user_id,
            m=boxes["Archive"],
            id=stored["uploadMessage"]["id"],
        )
        await inbox_deleted.nothing_more()
        folder = await graphql.data(
            'mutation($u: ID!) { createMailbox(user: $u, input: {path: "Lists"}) { id } }', u=user_id
        )
        folder_id = folder["createMailbox"]["id"]
        await graphql.data(
            'mutation($u: ID!, $id: ID!) { updateMailbox(user: $u, id: $id, input: {path: "Lists2"}) { id } }',
            u=user_id,
            id=folder_id,
        )
        await graphql.data("mutation($u: ID!, $id: ID!) { deleteMailbox(user: $u, id: $id) }", u=user_id, id=folder_id)
        events = [(await mailboxes_changed.next())["mailboxChanged"] for _ in range(3)]
        assert events == [
            {"command": "CREATE", "mailboxId": folder_id, "path": "Lists", "name": "Lists", "oldPath": None},
            {"command": "RENAME", "mailboxId": folder_id, "path": "Lists2", "name": "Lists2", "oldPath": "Lists"},
            {"command": "DELETE", "mailboxId": folder_id, "path": "Lists2", "name": None, "oldPath": None},
        ]
        await anything_added.nothing_more(0.1)


async def test_since_replays_the_journal(api, graphql: Gql, account):
    user_id, _ = account
    for number in range(3):
        await deliver_ok(api, USER, simple_message(f"Earlier {number}"))
    async with subscribe(api, UPDATES, TRANSPORT_WS, u=user_id, since=0) as subscriber:
        replayed = [(await subscriber.next())["updates"] for _ in range(3)]
        assert [event["command"] for event in replayed] == ["EXISTS"] * 3
        assert [event["uid"] for event in replayed] == [1, 2, 3]
        await subscribed(api)
        await deliver_ok(api, USER, simple_message("Later"))
        assert (await subscriber.next())["updates"]["uid"] == 4
    resume_after = replayed[1]["id"]
    async with subscribe(api, UPDATES, LEGACY_WS, u=user_id, since=resume_after) as subscriber:
        assert [(await subscriber.next())["updates"]["uid"] for _ in range(2)] == [3, 4]
        await subscriber.nothing_more()


@PROTOCOLS
async def test_subscription_errors(api, account, protocol, monkeypatch):
    user_id, _ = account
    cases = [
        ({"u": "0123456789abcdef01234567"}, "UserNotFound"),
        ({"u": user_id, "since": 10**6}, "InputValidationError"),
        ({"u": user_id, "since": -1}, "InputValidationError"),
    ]
    for variables, code in cases:
        async with subscribe(api, UPDATES, protocol, **variables) as subscriber:
            with pytest.raises(TransportQueryError) as raised:
                await subscriber.next()
            assert raised.value.errors[0]["extensions"]["code"] == code
    missing = "subscription($u: ID!, $m: ID) { messageAdded(user: $u, mailbox: $m) { uid } }"
    async with subscribe(api, missing, protocol, u=user_id, m="0123456789abcdef01234567") as subscriber:
        with pytest.raises(TransportQueryError) as raised:
            await subscriber.next()
        assert raised.value.errors[0]["extensions"]["code"] == "MailboxNotFound"
    async with subscribe(api, "subscription { updates(user: 5) { nope } }", protocol) as subscriber:
        with pytest.raises(TransportQueryError) as raised:
            await subscriber.next()
        assert raised.value.errors[0]["extensions"]["code"] == "GraphQLValidationFailed"
    await subscribed(api, 0)


async def test_a_dropped_subscriber_learns_where_to_resume(api, account, monkeypatch):
    user_id, _ = account

    class Overflowing:
        """A hub subscription whose buffer overflowed after handing out journal id 7."""

        async def __aenter__(self) -> Overflowing:
            return self

        async def __aexit__(self, *exc_info: object) -> None:
            return None

        def __aiter__(self) -> Overflowing:
            return self

        async def __anext__(self) -> Any:
            raise SubscriberTooSlow(7)

    async def overflowing(*args: object) -> Overflowing:
        return Overflowing()

    monkeypatch.setattr(merganser.resolvers.updates, "subscribe", overflowing)
    async with subscribe(api, UPDATES, TRANSPORT_WS, u=user_id) as subscriber:
        with pytest.raises(TransportQueryError) as raised:
            await subscriber.next()
    [error] = raised.value.errors
    assert error["extensions"] == {"code": "SubscriberTooSlow", "since": 7}
    assert "reconnect from id 7" in error["message"]


@PROTOCOLS
async def test_access_token_in_connection_init(make_api, protocol):
    api = await make_api(access_token="s3cret")
    async with open_graphql(api, headers={"X-Access-Token": "s3cret"}) as graphql:
        user = await create_user(graphql, address=USER)
    async with subscribe(api, UPDATES, protocol, init_payload={"accessToken": "s3cret"}, u=user["id"]) as subscriber:
        await subscribed(api)
        await deliver_ok(api, USER, simple_message("Authorised"))
        assert (await subscriber.next())["updates"]["command"] == "EXISTS"
    for init in (
        {"type": "connection_init"},
        {"type": "connection_init", "payload": {"accessToken": "wrong"}},
        {"type": "connection_init", "payload": {"accessToken": 5}},
    ):
        async with api.ws_connect("/graphql", protocols=[protocol]) as ws:
            await ws.send_json(init)
            if protocol == TRANSPORT_WS:
                assert await closed_with(ws) == 4403  # Forbidden
            else:
                assert await legacy_message(ws) == {
                    "type": "connection_error",
                    "payload": {"message": "Invalid or missing access token", "code": "InvalidToken"},
                }
                assert await closed_with(ws) == 1011
    await subscribed(api, 0)


async def raw_messages(ws: Any, count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(ws.receive_json(), TIMEOUT) for _ in range(count)]


async def closed_with(ws: Any) -> int:
    """Read until the server closes the connection; its close code."""
    while True:
        message = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if message.type.name in ("CLOSE", "CLOSING", "CLOSED"):
            return ws.close_code


@pytest.mark.parametrize(
    "messages",
    [
        ["not json"],
        [[1, 2]],
        [{"no": "type"}],
        [{"type": "connection_init"}, {"type": "subscribe", "payload": {"query": "{ users { totalCount } }"}}],
        [{"type": "connection_init"}, {"type": "subscribe", "id": "1"}],
        [{"type": "connection_init"}, {"type": "subscribe", "id": "1", "payload": "query"}],
        [{"type": "connection_init"}, {"type": "subscribe", "id": "1", "payload": {"query": 5}}],
        [{"type": "connection_init"}, {"type": "subscribe", "id": "1", "payload": {"query": "{ x }", "variables": 3}}],
        [{"type": "connection_init"}, {"type": "complete"}],
        [{"type": "connection_init", "payload": "token"}],
    ],
)
async def test_malformed_transport_ws_messages_close_the_connection(api, messages):
    async with api.ws_connect("/graphql", protocols=[TRANSPORT_WS]) as ws:
        for message in messages:
            if isinstance(message, str):
                await ws.send_str(message)
            else:
                await ws.send_json(message)
        assert await closed_with(ws) == 4400


async def test_transport_ws_protocol_rules(api, graphql: Gql):
    await create_user(graphql)
    async with api.ws_connect("/graphql", protocols=[TRANSPORT_WS]) as ws:
        assert ws.protocol == TRANSPORT_WS
        await ws.send_json({"type": "subscribe", "id": "1", "payload": {"query": "{ users { totalCount } }"}})
        assert await closed_with(ws) == 4401  # nothing before connection_init
    async with api.ws_connect("/graphql", protocols=[TRANSPORT_WS]) as ws:
        await ws.send_json({"type": "connection_init", "payload": {}})
        assert (await raw_messages(ws, 1))[0]["type"] == "connection_ack"
        await ws.send_json({"type": "ping"})
        assert (await raw_messages(ws, 1))[0]["type"] == "pong"
        # Queries run over the socket too.
        await ws.send_json({"type": "subscribe", "id": "q", "payload": {"query": "{ users { totalCount } }"}})
        assert await raw_messages(ws, 2) == [
            {"id": "q", "type": "next", "payload": {"data": {"users": {"totalCount": 1}}}},
            {"id": "q", "type": "complete"},
        ]
        await ws.send_json({"type": "subscribe", "id": "bad", "payload": {"query": "{ users { colour } }"}})
        [error] = await raw_messages(ws, 1)
        assert error["type"] == "error" and error["payload"][0]["extensions"]["code"] == "GraphQLValidationFailed"
        await ws.send_json({"type": "connection_init", "payload": {}})
        assert await closed_with(ws) == 4429


async def legacy_message(ws: Any) -> dict[str, Any]:
    """The next graphql-ws message other than a keep-alive ("ka")."""
    while (message := await asyncio.wait_for(ws.receive_json(), TIMEOUT))["type"] == "ka":
        pass
    return message


async def test_legacy_ws_protocol_rules(make_api):
    api = await make_api(access_token="s3cret")
    async with api.ws_connect("/graphql", protocols=[LEGACY_WS]) as ws:
        assert ws.protocol == LEGACY_WS
        await ws.send_json({"type": "connection_init", "payload": {"accessToken": "wrong"}})
        refused = await legacy_message(ws)
        assert refused["type"] == "connection_error"
        assert refused["payload"] == {"message": "Invalid or missing access token", "code": "InvalidToken"}
    async with api.ws_connect("/graphql", protocols=[LEGACY_WS]) as ws:
        await ws.send_json({"type": "connection_init", "payload": {"accessToken": "s3cret"}})
        assert (await legacy_message(ws))["type"] == "connection_ack"
        # This protocol carries subscriptions only.
        await ws.send_json({"type": "start", "id": "1", "payload": {"query": "{ users { totalCount } }"}})
        error = await legacy_message(ws)
        assert (error["type"], error["id"]) == ("error", "1")
        assert error["payload"]["message"] == "queries are not allowed"
        unknown = {"query": UPDATES, "variables": {"u": "0123456789abcdef01234567"}}
        await ws.send_json({"type": "start", "id": "2", "payload": unknown})
        data = await legacy_message(ws)
        assert (data["type"], data["payload"]["errors"][0]["extensions"]["code"]) == ("data", "UserNotFound")
        assert await legacy_message(ws) == {"type": "complete", "id": "2"}
        await ws.send_json({"type": "start", "id": "3"})
        assert await closed_with(ws) == 4400


async def test_a_broken_client_does_not_disturb_others(api, graphql: Gql, account):
    user_id, _ = account
    async with subscribe(api, UPDATES, TRANSPORT_WS, u=user_id) as healthy:
        broken = await api.ws_connect("/graphql", protocols=[TRANSPORT_WS])
        await broken.send_json({"type": "connection_init"})
        await raw_messages(broken, 1)
        # A query of its own, so that it does not share the healthy one's execution.
        query = "subscription($u: ID!) { messageAdded(user: $u) { uid } }"
        payload = {"query": query, "variables": {"u": user_id}}
        await broken.send_json({"type": "subscribe", "id": "1", "payload": payload})
        await subscribed(api, 2)
        # The broken client vanishes without closing its socket.
        transport = broken._response.connection.transport
        transport.abort()
        await deliver_ok(api, USER, simple_message("Still delivered"))
        assert (await healthy.next())["updates"]["command"] == "EXISTS"
        await subscribed(api, 1)
        await broken.close()


async def test_subscribing_during_shutdown_is_refused(api, account):
    user_id, _ = account
    core(api).updates.close()
    async with subscribe(api, UPDATES, TRANSPORT_WS, u=user_id) as subscriber:
        with pytest.raises(TransportQueryError) as raised:
            await subscriber.next()
    assert raised.value.errors[0]["extensions"]["code"] == "Unavailable"
