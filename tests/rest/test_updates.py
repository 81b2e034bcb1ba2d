"""REST: the updates stream (GET /users/{user}/updates) as Server-Sent Events.

Changes are made the way clients make them (LMTP deliveries, REST calls, the
expiry collector) and the stream is read with a real HTTP client, parsed as an
EventSource would parse it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from helpers import (
    UNKNOWN_ID,
    assert_error,
    assert_ok,
    call,
    core,
    create_mailbox,
    create_user,
    deliver_ok,
    get_message,
    mailbox_id,
    message_ids,
    simple_message,
    wait_for,
)
from sse import assert_quiet, read_event, updates

from merganser.app import create_app
from merganser.config import Settings
from merganser.resolvers import messages
from merganser.rest_compat.http import CORE


@contextlib.asynccontextmanager
async def stream(
    api: TestClient,
    user_id: str,
    headers: dict[str, str] | None = None,
    version: aiohttp.HttpVersion = aiohttp.HttpVersion11,
    **params: str,
) -> AsyncIterator[aiohttp.ClientResponse]:
    url = api.make_url(f"/users/{user_id}/updates")
    async with (
        aiohttp.ClientSession(version=version) as session,
        session.get(url, headers=headers, params=params or None) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        yield response


async def wait_for_subscribers(api: TestClient, count: int) -> None:
    hub = core(api).updates
    await wait_for(lambda: hub.subscriber_count == count, what=f"{count} update subscriber(s)")


async def test_delivery_and_mailbox_changes_arrive_in_the_reference_format(api):
    user_id = await create_user(api, address="testuser@example.com")
    inbox = await mailbox_id(api, user_id)
    async with stream(api, user_id) as response:
        await wait_for_subscribers(api, 1)
        await deliver_ok(api, "testuser@example.com", simple_message("Live"))
        (added,) = await updates(response, 1)
        [message] = await message_ids(api, user_id, inbox)
        stored = await get_message(api, user_id, inbox, message)
        assert added.data == {
            "command": "EXISTS",
            "mailbox": inbox,
            "message": message,
            "uid": 1,
            "modseq": added.id,
            "flags": [],
            "thread": stored["thread"],
        }
        folder = await create_mailbox(api, user_id, "Projects")
        (created,) = await updates(response, 1)
        assert created.id == added.id + 1
        assert created.data == {"command": "CREATE", "mailbox": folder, "path": "Projects", "name": "Projects"}


async def test_every_kind_of_change_is_streamed_in_journal_order(api):
    user_id = await create_user(api, address="testuser@example.com")
    inbox = await mailbox_id(api, user_id)
    async with stream(api, user_id) as response:
        await wait_for_subscribers(api, 1)
        await deliver_ok(api, "testuser@example.com", simple_message("One"))
        [message] = await message_ids(api, user_id, inbox)
        path = f"/users/{user_id}/mailboxes/{inbox}/messages/{message}"
        assert_ok(await call(api, "PUT", path, {"seen": True}))
        folder = await create_mailbox(api, user_id, "Projects")
        assert_ok(await call(api, "PUT", path, {"newMailbox": folder}))
        assert_ok(await call(api, "PUT", f"/users/{user_id}/mailboxes/{folder}", {"path": "Old"}))
        [moved] = await message_ids(api, user_id, folder)
        assert_ok(await call(api, "DELETE", f"/users/{user_id}/mailboxes/{folder}/messages/{moved}"))
        assert_ok(await call(api, "DELETE", f"/users/{user_id}/mailboxes/{folder}"))
        events = await updates(response, 8)
    assert [event.data["command"] for event in events] == [
        "EXISTS",
        "FETCH",
        "CREATE",
        "EXPUNGE",
        "EXISTS",
        "RENAME",
        "EXPUNGE",
        "DELETE",
    ]
    ids = [event.id for event in events]
    assert ids == list(range(ids[0], ids[0] + 8))
    assert events[1].data["flags"] == ["\\Seen"]
    assert (events[3].data["mailbox"], events[3].data["message"]) == (inbox, message)
    assert events[4].data["mailbox"] == folder and events[4].data["message"] == moved
    assert events[5].data["path"] == "Old"
    assert events[7].data == {"command": "DELETE", "mailbox": folder, "path": "Old"}


async def test_expiry_by_the_collector_is_streamed(api):
    user_id = await create_user(api, address="testuser@example.com")
    inbox = await mailbox_id(api, user_id)
    await deliver_ok(api, "testuser@example.com", simple_message("Short-lived"))
    [message] = await message_ids(api, user_id, inbox)
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert_ok(await call(api, "PUT", f"/users/{user_id}/mailboxes/{inbox}/messages/{message}", {"expires": soon}))
    async with stream(api, user_id) as response:
        await wait_for_subscribers(api, 1)
        await asyncio.sleep(1.1)
        await messages.collect_garbage(core(api))
        (expunged,) = await updates(response, 1)
    assert expunged.data["command"] == "EXPUNGE" and expunged.data["message"] == message


@pytest.mark.parametrize("resume", ["header", "query"])
async def test_reconnecting_receives_exactly_the_missed_events(api, resume):
    user_id = await create_user(api, address="testuser@example.com")
    async with stream(api, user_id) as response:
        await wait_for_subscribers(api, 1)
        for number in range(2):
            await create_mailbox(api, user_id, f"Seen {number}")
        seen = await updates(response, 2)
    await wait_for_subscribers(api, 0)

    for number in range(3):
        await create_mailbox(api, user_id, f"Missed {number}")
    await deliver_ok(api, "testuser@example.com", simple_message("While away"))

    last = str(seen[-1].id)
    options = {"headers": {"Last-Event-ID": last}} if resume == "header" else {"since": last}
    async with stream(api, user_id, **options) as response:
        missed = await updates(response, 4)
        assert [event.id for event in missed] == [seen[-1].id + n for n in range(1, 5)]
        assert [event.data.get("path") for event in missed[:3]] == ["Missed 0", "Missed 1", "Missed 2"]
        assert missed[3].data["command"] == "EXISTS"
        await create_mailbox(api, user_id, "Live again")
        (live,) = await updates(response, 1)
        assert live.id == missed[-1].id + 1 and live.data["path"] == "Live again"
        await assert_quiet(response, 0.3)


async def test_since_zero_replays_the_whole_journal(api):
    user_id = await create_user(api)
    for path in ("First", "Second"):
        await create_mailbox(api, user_id, path)
    async with stream(api, user_id, since="0") as response:
        events = await updates(response, 2)
        await assert_quiet(response, 0.3)
    assert [(event.id, event.data["path"]) for event in events] == [(1, "First"), (2, "Second")]


async def test_a_stream_only_shows_its_own_user(api):
    alice = await create_user(api, "alice", address="alice@example.com")
    bob = await create_user(api, "bob", address="bob@example.com")
    async with stream(api, alice) as alice_stream, stream(api, bob) as bob_stream:
        await wait_for_subscribers(api, 2)
        await deliver_ok(api, "bob@example.com", simple_message("For Bob"))
        (event,) = await updates(bob_stream, 1)
        assert event.data["command"] == "EXISTS"
        await assert_quiet(alice_stream, 0.3)


async def test_many_subscribers_of_one_user_each_get_every_event(api):
    user_id = await create_user(api, address="testuser@example.com")
    async with contextlib.AsyncExitStack() as streams:
        responses = [await streams.enter_async_context(stream(api, user_id)) for _ in range(20)]
        await wait_for_subscribers(api, 20)
        for number in range(3):
            await create_mailbox(api, user_id, f"Box {number}")
        received = await asyncio.gather(*(updates(response, 3) for response in responses))
    assert {tuple(event.data["path"] for event in events) for events in received} == {("Box 0", "Box 1", "Box 2")}


async def test_idle_streams_get_heartbeats(make_api):
    api = await make_api(heartbeat_interval=1)
    user_id = await create_user(api)
    async with stream(api, user_id) as response:
        event = await read_event(response, timeout=3)
    assert event is not None and event.comment == "heartbeat" and event.data is None


async def test_refusals(make_api):
    api = await make_api(access_token="s3cret-token")
    token = {"X-Access-Token": "s3cret-token"}
    reply = await call(api, "POST", "/users", {"username": "testuser", "password": "secretpass"}, headers=token)
    user_id = assert_ok(reply)["id"]
    path = f"/users/{user_id}/updates"

    assert_error(await call(api, "GET", path), 401, "InvalidToken")
    assert_error(await call(api, "GET", f"/users/{UNKNOWN_ID}/updates", headers=token), 404, "UserNotFound")
    assert_error(await call(api, "GET", "/users/not-an-id/updates", headers=token), 400)
    for bad in ("abc", "-1", "1.5", "99999999999999999999"):
        reply = await call(api, "GET", path, headers={**token, "Last-Event-ID": bad})
        assert_error(reply, 400, "InputValidationError")
    assert_error(await call(api, "GET", path, headers=token, params={"since": "x"}), 400, "InputValidationError")
    assert_error(await call(api, "GET", path, headers=token, params={"since": "5"}), 400, "InputValidationError")
    assert_error(await call(api, "GET", path, headers=token, params={"bogus": "1"}), 400, "InputValidationError")
    assert core(api).updates.subscriber_count == 0

    async with api.get(path, params={"accessToken": "s3cret-token"}) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"


@pytest.fixture
async def plain_server(storage_url, unused_tcp_port_factory) -> AsyncIterator[tuple[str, web.Application]]:
    """The application as `merganser serve` runs it: handlers are not cancelled when a client leaves."""
    settings = Settings(storage=storage_url, bcrypt_rounds=4, lmtp_port=0, heartbeat_interval=1)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    port = unused_tcp_port_factory()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


async def test_a_client_that_goes_away_is_forgotten(plain_server):
    base, app = plain_server
    hub = app[CORE].updates
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/users", json={"username": "testuser", "password": "secretpass"}) as reply:
            user_id = (await reply.json())["id"]
        for _ in range(3):
            async with session.get(f"{base}/users/{user_id}/updates") as response:
                assert response.status == 200
                await read_event(response, timeout=3)
                assert hub.subscriber_count == 1
            # Noticed at the next heartbeat at the latest.
            async with asyncio.timeout(5):
                while hub.subscriber_count:
                    await asyncio.sleep(0.05)


async def test_a_subscriber_that_falls_a_buffer_behind_is_dropped_and_resumes_without_loss(make_api):
    """Renaming a parent journals one RENAME per mailbox in one commit: more than this buffer holds.

    Over HTTP/1.0 every entry goes through the stream's buffer; over HTTP/1.1
    entries the socket takes at once bypass it (see the next test).
    """
    api = await make_api(subscriber_buffer=2)
    user_id = await create_user(api)
    for path in ("Parent", "Parent/A", "Parent/B", "Parent/C"):
        await create_mailbox(api, user_id, path)
    parent = (await call(api, "GET", f"/users/{user_id}/mailboxes")).body["results"]
    parent_id = next(mailbox["id"] for mailbox in parent if mailbox["path"] == "Parent")
    async with stream(api, user_id, version=aiohttp.HttpVersion10) as response:
        await wait_for_subscribers(api, 1)
        assert_ok(await call(api, "PUT", f"/users/{user_id}/mailboxes/{parent_id}", {"path": "Renamed"}))
        assert await read_event(response, timeout=5) is None
    assert core(api).updates.subscriber_count == 0
    async with stream(api, user_id, since="4") as response:
        renamed = await updates(response, 4)
    assert sorted(event.data["path"] for event in renamed) == ["Renamed", "Renamed/A", "Renamed/B", "Renamed/C"]
    assert [event.id for event in renamed] == [5, 6, 7, 8]


async def test_a_subscriber_whose_socket_keeps_up_gets_a_large_change_whole(make_api):
    api = await make_api(subscriber_buffer=2)
    user_id = await create_user(api)
    for path in ("Parent", "Parent/A", "Parent/B", "Parent/C"):
        await create_mailbox(api, user_id, path)
    parent = (await call(api, "GET", f"/users/{user_id}/mailboxes")).body["results"]
    parent_id = next(mailbox["id"] for mailbox in parent if mailbox["path"] == "Parent")
    async with stream(api, user_id) as response:
        await wait_for_subscribers(api, 1)
        assert_ok(await call(api, "PUT", f"/users/{user_id}/mailboxes/{parent_id}", {"path": "Renamed"}))
        assert [event.id for event in await updates(response, 4)] == [5, 6, 7, 8]
        await create_mailbox(api, user_id, "After")
        (after,) = await updates(response, 1)
        assert after.id == 9 and after.data["path"] == "After"


async def test_shutdown_ends_open_streams(make_api):
    api = await make_api()
    user_id = await create_user(api)
    async with stream(api, user_id) as response:
        await wait_for_subscribers(api, 1)
        core(api).updates.close()
        assert await read_event(response, timeout=5) is None
    async with api.get(f"/users/{user_id}/updates") as refused:
        assert refused.status == 503
        assert (await refused.json())["code"] == "Unavailable"
