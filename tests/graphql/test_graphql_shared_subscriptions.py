"""Identical live subscriptions share one execution; each client still gets every event, in order, once.

Clients speak the protocols directly (aiohttp's WebSocket client), so that
several can send the very same document and operation ids can be chosen.
Every test runs on both storage backends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from gqlhelpers import USER, core, create_user, open_graphql
from helpers import deliver_ok, simple_message, wait_for

import merganser.schema.subscriptions
from merganser.schema.root import schema
from merganser.schema.view import OperationSink, WebSocketAdapter

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
WATCH = "subscription Watch($u: ID!, $since: Int) { updates(user: $u, since: $since) { id command uid } }"
ADDED = "subscription($u: ID!, $m: ID) { messageAdded(user: $u, mailbox: $m) { id uid } }"
TIMEOUT = 10.0


class Client:
    """One WebSocket connection running one operation."""

    def __init__(self, ws: Any, protocol: str, operation_id: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.operation_id = operation_id

    async def message(self) -> dict[str, Any]:
        """The next message other than a keep-alive."""
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), TIMEOUT)
            if message["type"] not in ("ka", "ping", "pong"):
                return message

    async def event(self) -> dict[str, Any]:
        message = await self.message()
        assert message["type"] in ("next", "data") and "errors" not in message["payload"], message
        return next(iter(message["payload"]["data"].values()))

    async def events(self, count: int) -> list[dict[str, Any]]:
        return [await self.event() for _ in range(count)]

    async def nothing_more(self, wait: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(self.message(), wait)
            raise AssertionError(f"unexpected message {message}")

    async def complete(self) -> None:
        kind = "complete" if self.protocol == TRANSPORT_WS else "stop"
        await self.ws.send_json({"type": kind, "id": self.operation_id})


@contextlib.asynccontextmanager
async def connect(
    api: Any, query: str, variables: Mapping[str, Any], protocol: str = TRANSPORT_WS, operation_id: str = "1"
) -> AsyncIterator[Client]:
    async with api.ws_connect("/graphql", protocols=[protocol]) as ws:
        await ws.send_json({"type": "connection_init"})
        client = Client(ws, protocol, operation_id)
        assert (await client.message())["type"] == "connection_ack"
        kind = "subscribe" if protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": dict(variables)}
        await ws.send_json({"type": kind, "id": operation_id, "payload": payload})
        yield client


async def settled(api: Any, members: int, upstreams: int) -> None:
    """Wait until ``members`` clients share and the hub has ``upstreams`` subscriptions (shared or not)."""
    hub = core(api).updates
    await wait_for(lambda: schema.shared.member_count == members and hub.subscriber_count == upstreams, TIMEOUT)


async def burst(api: Any, client: Client, count: int, label: str) -> list[dict[str, Any]]:
    """Deliver ``count`` messages to a new user; the events ``client`` gets for them, uids 1, 2… in order."""
    for number in range(count):
        await deliver_ok(api, USER, simple_message(f"{label} {number}"))
    events = await client.events(count)
    assert [event["uid"] for event in events] == list(range(1, count + 1))
    return events


async def test_identical_subscribers_share_one_execution(api, account, monkeypatch):
    user_id, _ = account
    built: list[int] = []
    from_entry = merganser.schema.subscriptions.UpdateEvent.from_entry

    def counted(entry: Any) -> Any:
        built.append(entry.id)
        return from_entry(entry)

    monkeypatch.setattr(merganser.schema.subscriptions.UpdateEvent, "from_entry", counted)
    queued: list[object] = []
    send_json = WebSocketAdapter.send_json

    async def watched(self: WebSocketAdapter, message: Mapping[str, object]) -> None:
        if message.get("type") in ("next", "data"):
            queued.append(message)
        await send_json(self, message)

    monkeypatch.setattr(WebSocketAdapter, "send_json", watched)
    protocols = [TRANSPORT_WS, LEGACY_WS] * 3
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(api, WATCH, {"u": user_id}, p)) for p in protocols]
        await settled(api, members=6, upstreams=1)
        for number in range(4):
            await deliver_ok(api, USER, simple_message(f"Shared {number}"))
        received = [await client.events(4) for client in clients]
        assert [event["uid"] for event in received[0]] == [1, 2, 3, 4]
        assert all(events == received[0] for events in received)
        assert sorted(event["id"] for event in received[0]) == [event["id"] for event in received[0]]
        # One execution per event, however many clients.
        assert built == [event["id"] for event in received[0]]
        # Parked clients with sockets that keep up get their frames written directly, not through their tasks.
        assert queued == []
        for client in clients:
            await client.nothing_more(0.1)
    await settled(api, members=0, upstreams=0)


async def test_a_slow_member_is_dropped_alone(make_api, monkeypatch):
    api = await make_api(subscriber_buffer=2)
    async with open_graphql(api) as graphql:
        user_id = (await create_user(graphql, address=USER))["id"]
    gate = asyncio.Event()
    send_json = WebSocketAdapter.send_json

    async def held(self: WebSocketAdapter, message: Mapping[str, object]) -> None:
        if message.get("id") == "slow" and message.get("type") == "next":
            await gate.wait()
        await send_json(self, message)

    write = OperationSink.write

    def behind(self: OperationSink, frame: bytes) -> bool:
        return self.key[1] != "slow" and write(self, frame)

    monkeypatch.setattr(WebSocketAdapter, "send_json", held)
    monkeypatch.setattr(OperationSink, "write", behind)
    async with (
        connect(api, WATCH, {"u": user_id}) as first,
        connect(api, WATCH, {"u": user_id}, operation_id="slow") as slow,
        connect(api, WATCH, {"u": user_id}, LEGACY_WS) as second,
    ):
        await settled(api, members=3, upstreams=1)
        fast = await burst(api, first, 5, "Burst")
        assert await second.events(5) == fast
        # The slow one is no member any more; the others still are.
        await settled(api, members=2, upstreams=1)
        gate.set()
        # It gets the one it was being sent, the two its buffer held, then the error naming the last.
        assert await slow.events(3) == fast[:3]
        dropped = await slow.message()
        [error] = dropped["payload"]["errors"]
        assert error["extensions"] == {"code": "SubscriberTooSlow", "since": fast[2]["id"]}
        assert f"reconnect from id {fast[2]['id']}" in error["message"]
        assert (await slow.message())["type"] == "complete"
        await deliver_ok(api, USER, simple_message("After"))
        assert (await first.event())["uid"] == 6
        assert (await second.event())["uid"] == 6
    await settled(api, members=0, upstreams=0)


async def test_a_member_behind_takes_its_queue_then_direct_writes_in_order(api, account, monkeypatch):
    """Results a socket could not take at once go through the task; later ones never overtake them."""
    user_id, _ = account
    refusals = 2
    write = OperationSink.write

    def behind_at_first(self: OperationSink, frame: bytes) -> bool:
        nonlocal refusals
        if self.key[1] == "lagging" and refusals:
            refusals -= 1
            return False
        return write(self, frame)

    monkeypatch.setattr(OperationSink, "write", behind_at_first)
    async with (
        connect(api, WATCH, {"u": user_id}) as steady,
        connect(api, WATCH, {"u": user_id}, LEGACY_WS, operation_id="lagging") as lagging,
    ):
        await settled(api, members=2, upstreams=1)
        expected = await burst(api, steady, 5, "Mixed")
        assert await lagging.events(5) == expected
        assert refusals == 0
        await lagging.nothing_more(0.1)


async def test_members_leave_one_by_one(api, account):
    user_id, _ = account
    async with connect(api, WATCH, {"u": user_id}) as staying:
        async with (
            connect(api, WATCH, {"u": user_id}) as completing,
            connect(api, WATCH, {"u": user_id}, LEGACY_WS) as stopping,
        ):
            async with connect(api, WATCH, {"u": user_id}):
                await settled(api, members=4, upstreams=1)
            # That client went away; the others stay subscribed.
            await completing.complete()
            await stopping.complete()
            assert (await stopping.message())["type"] == "complete"
            await settled(api, members=1, upstreams=1)
            await deliver_ok(api, USER, simple_message("Still here"))
            assert (await staying.event())["uid"] == 1
        await staying.complete()
        # The last member left: so did the upstream's hub subscription.
        await settled(api, members=0, upstreams=0)


async def test_since_is_never_shared(api, account):
    user_id, _ = account
    for number in range(2):
        await deliver_ok(api, USER, simple_message(f"Earlier {number}"))
    literal = "subscription($u: ID!) { updates(user: $u, since: 0) { id command uid } }"
    async with (
        connect(api, WATCH, {"u": user_id, "since": 0}) as by_variable,
        connect(api, WATCH, {"u": user_id, "since": 0}, LEGACY_WS) as by_variable_legacy,
        connect(api, literal, {"u": user_id}) as by_literal,
        connect(api, literal, {"u": user_id}) as by_literal_again,
        connect(api, WATCH, {"u": user_id, "since": None}) as from_now,
        connect(api, WATCH, {"u": user_id, "since": None}, LEGACY_WS) as from_now_too,
    ):
        replaying = [by_variable, by_variable_legacy, by_literal, by_literal_again]
        for client in replaying:
            assert [event["uid"] for event in await client.events(2)] == [1, 2]
        # Four on their own, and one upstream for the two "from now on" (a null since is none).
        await settled(api, members=2, upstreams=5)
        await deliver_ok(api, USER, simple_message("Later"))
        for client in [*replaying, from_now, from_now_too]:
            assert (await client.event())["uid"] == 3


async def test_different_variables_do_not_share(api, account):
    user_id, boxes = account
    async with (
        connect(api, ADDED, {"u": user_id, "m": boxes["INBOX"]}) as inbox,
        connect(api, ADDED, {"m": boxes["INBOX"], "u": user_id}, LEGACY_WS) as inbox_too,
        connect(api, ADDED, {"u": user_id, "m": boxes["Archive"]}) as archive,
    ):
        await settled(api, members=3, upstreams=2)
        await deliver_ok(api, USER, simple_message("To the inbox"))
        assert (await inbox.event())["uid"] == 1
        assert (await inbox_too.event())["uid"] == 1
        await archive.nothing_more()


async def test_shutdown_ends_every_member(api, account):
    user_id, _ = account
    async with (
        connect(api, WATCH, {"u": user_id}) as first,
        connect(api, WATCH, {"u": user_id}, LEGACY_WS) as second,
    ):
        await settled(api, members=2, upstreams=1)
        core(api).updates.close()
        assert (await first.message())["type"] == "complete"
        assert (await second.message())["type"] == "complete"
    await settled(api, members=0, upstreams=0)
