"""The LMTP maildrop, end to end: a real LMTP client delivers, the REST API shows the result.

Python's ``smtplib.LMTP`` talks to the server's listener from a worker thread
(the server runs on the test's event loop). Every test runs on both storage
backends. Results are checked through the REST API; the core is only touched
to wait for forwarded copies, to swap in a forwarder with a short retry delay,
and to inject a storage failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiosmtpd.smtp import SMTP, Envelope, Session

# The REST tests' helpers (tests/rest has no __init__.py; pytest puts it on
# sys.path only for modules collected there). Same file, same module object.
sys.path.insert(0, str(Path(__file__).resolve().parent / "rest"))

from helpers import (
    TRANSCRIPT,
    add_address,
    assert_ok,
    call,
    core,
    create_user,
    crlf,
    deliver,
    deliver_ok,
    get_message,
    list_messages,
    lmtp_port,
    mailbox_id,
    message_ids,
    message_source,
    quota_used,
    simple_message,
    upload_message,
)

from merganser.app import create_app
from merganser.config import Settings
from merganser.resolvers.forwarding import Forwarder

USER = "testuser@example.com"
OTHER = "other@example.com"
IDN_ADDRESS = "андрис@уайлддак.орг"
IDN_PUNYCODE = "андрис@" + "уайлддак.орг".encode("idna").decode()


@pytest.fixture
def make_api(storage_url: str, aiohttp_client: Any):
    """Like tests/rest's fixture: a real server with its LMTP maildrop on a free loopback port."""

    async def factory(**overrides: Any) -> TestClient:
        settings = dataclasses.replace(Settings(storage=storage_url, bcrypt_rounds=4, lmtp_port=0), **overrides)
        return await aiohttp_client(create_app(settings))

    return factory


@pytest.fixture
async def api(make_api) -> TestClient:
    return await make_api()


@pytest.fixture(autouse=True)
def _empty_transcript() -> None:
    TRANSCRIPT.clear()


async def new_user(api: TestClient, username: str = "testuser", address: str = USER, **fields: Any) -> str:
    return await create_user(api, username, address=address, **fields)


async def inbox_ids(api: TestClient, user_id: str) -> list[str]:
    return await message_ids(api, user_id, await mailbox_id(api, user_id))


async def only_message(api: TestClient, user_id: str) -> tuple[str, str]:
    """(inbox id, message id) of the one message in the user's INBOX."""
    inbox = await mailbox_id(api, user_id)
    ids = await message_ids(api, user_id, inbox)
    assert len(ids) == 1, ids
    return inbox, ids[0]


# Talking LMTP


def open_client(port: int) -> smtplib.LMTP:
    return smtplib.LMTP("127.0.0.1", port, timeout=30)


def lhlo_and_helo(port: int) -> dict[str, Any]:
    with open_client(port) as client:
        helo = client.docmd("HELO", "client.example.org")
        ehlo = client.docmd("EHLO", "client.example.org")
        lhlo = client.ehlo("client.example.org")  # smtplib.LMTP sends LHLO here
        return {"helo": helo, "ehlo": ehlo, "lhlo": lhlo, "features": dict(client.esmtp_features)}


async def test_lhlo_announces_size_8bitmime_and_smtputf8(api):
    result = await asyncio.to_thread(lhlo_and_helo, lmtp_port(api))

    assert result["helo"][0] == 500, result
    assert result["ehlo"][0] == 500, result
    assert result["lhlo"][0] == 250, result
    features = result["features"]
    assert features["size"] == str(Settings().max_message_size) == str(50 * 1024 * 1024)
    assert "8bitmime" in features
    assert "smtputf8" in features


async def test_size_announced_follows_the_setting(make_api):
    api = await make_api(max_message_size=10_000)
    result = await asyncio.to_thread(lhlo_and_helo, lmtp_port(api))
    assert result["features"]["size"] == "10000"


# RCPT


async def test_unknown_recipient_is_refused_at_rcpt(api):
    user_id = await new_user(api)
    result = await deliver(api, ["nobody@example.com", "nobody@elsewhere.org", "not an address"], simple_message())

    assert [code for code, _ in result.rcpt] == [550, 550, 550], result
    assert result.data == []
    assert await inbox_ids(api, user_id) == []


async def test_disabled_user_is_refused_at_rcpt(api):
    user_id = await new_user(api)
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"disabled": True}))

    result = await deliver(api, USER, simple_message())
    assert [code for code, _ in result.rcpt] == [550], result
    assert b"disabled" in result.rcpt[0][1]
    assert await inbox_ids(api, user_id) == []

    # Enabled again, the same address takes mail.
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"disabled": False}))
    await deliver_ok(api, USER, simple_message())
    assert len(await inbox_ids(api, user_id)) == 1


async def test_alias_uppercase_and_internationalized_addresses_are_accepted(api):
    user_id = await new_user(api)
    await add_address(api, user_id, "alias@example.com")
    await add_address(api, user_id, IDN_ADDRESS)

    await deliver_ok(api, "alias@example.com", simple_message("To the alias"))
    await deliver_ok(api, "TestUser@EXAMPLE.COM", simple_message("Upper case"))
    result = await deliver(api, IDN_ADDRESS, simple_message("Internationalized"), mail_options=("SMTPUTF8",))
    assert [code for code, _ in result.rcpt] == [250], result
    assert result.data_codes == [250], result
    # The same address with its domain in punycode, and in upper case.
    for variant in (IDN_PUNYCODE, IDN_ADDRESS.upper()):
        result = await deliver(api, variant, simple_message("Variants"), mail_options=("SMTPUTF8",))
        assert [code for code, _ in result.rcpt] == [250], (variant, result)
        assert result.data_codes == [250], (variant, result)

    inbox = await mailbox_id(api, user_id)
    listed = (await list_messages(api, user_id, inbox, order="asc"))["results"]
    assert [item["subject"] for item in listed] == [
        "To the alias",
        "Upper case",
        "Internationalized",
        "Variants",
        "Variants",
    ]
    listed = listed[:3]
    # Each copy says which address it was delivered to, as the client gave it.
    firsts = [(await message_source(api, user_id, inbox, item["id"])).split(b"\r\n", 1)[0] for item in listed]
    assert firsts == [
        b"Delivered-To: alias@example.com",
        b"Delivered-To: TestUser@EXAMPLE.COM",
        ("Delivered-To: " + IDN_ADDRESS).encode(),
    ]


# DATA


async def test_each_recipient_gets_its_own_reply_in_rcpt_order(api):
    first = await new_user(api, "first", "first@example.com")
    full = await new_user(api, "full", "full@example.com")
    second = await new_user(api, "second", "second@example.com")
    assert_ok(await call(api, "PUT", f"/users/{full}", {"quota": 10}))

    raw = simple_message("For three")
    result = await deliver(api, ["first@example.com", "full@example.com", "second@example.com"], raw)

    assert [code for code, _ in result.rcpt] == [250, 250, 250], result
    assert result.data_codes == [250, 552, 250], result
    assert b"full@example.com" in result.data[1][1]
    assert len(await inbox_ids(api, first)) == 1
    assert len(await inbox_ids(api, second)) == 1
    assert await inbox_ids(api, full) == []
    assert await quota_used(api, full) == 0
    assert await quota_used(api, first) == len(b"Delivered-To: first@example.com\r\n" + raw)


async def test_refused_recipients_get_no_reply_after_data(api):
    first = await new_user(api, "first", "first@example.com")
    second = await new_user(api, "second", "second@example.com")

    result = await deliver(api, ["first@example.com", "ghost@example.com", "second@example.com"], simple_message())
    assert [code for code, _ in result.rcpt] == [250, 550, 250], result
    assert result.data_codes == [250, 250], result
    assert b"first@example.com" in result.data[0][1] and b"second@example.com" in result.data[1][1]
    assert len(await inbox_ids(api, first)) == 1
    assert len(await inbox_ids(api, second)) == 1


def two_transactions(port: int) -> list[Any]:
    """Two messages over one connection, as an MTA reusing it would send them; RSET between."""
    with open_client(port) as client:
        client.ehlo("client.example.org")
        first = client.sendmail("a@example.org", ["first@example.com"], simple_message("One"))
        client.rset()
        second = client.sendmail("b@example.org", ["second@example.com"], simple_message("Two"))
        return [first, second]


async def test_one_connection_carries_several_transactions(api):
    first = await new_user(api, "first", "first@example.com")
    second = await new_user(api, "second", "second@example.com")

    assert await asyncio.to_thread(two_transactions, lmtp_port(api)) == [{}, {}]

    first_inbox, second_inbox = await mailbox_id(api, first), await mailbox_id(api, second)
    assert [item["subject"] for item in (await list_messages(api, first, first_inbox))["results"]] == ["One"]
    assert [item["subject"] for item in (await list_messages(api, second, second_inbox))["results"]] == ["Two"]


async def test_raw_utf8_headers_are_decoded(api):
    user_id = await new_user(api)
    raw = "From: Jürgen Müller <jm@example.org>\r\nSubject: Grüße aus Köln\r\n\r\nHallo\r\n".encode()
    await deliver_ok(api, USER, raw)

    inbox, message_id = await only_message(api, user_id)
    details = await get_message(api, user_id, inbox, message_id)
    assert details["subject"] == "Grüße aus Köln"
    assert details["from"] == {"address": "jm@example.org", "name": "Jürgen Müller"}
    assert await message_source(api, user_id, inbox, message_id) == f"Delivered-To: {USER}\r\n".encode() + raw


async def test_quota_is_checked_to_the_byte(api):
    user_id = await new_user(api)
    raw = simple_message("Exactly fits")
    size = len(f"Delivered-To: {USER}\r\n") + len(raw)
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"quota": size}))

    await deliver_ok(api, USER, raw)
    result = await deliver(api, USER, simple_message("One byte too many", ""))
    assert result.data_codes == [552], result
    assert await quota_used(api, user_id) == size
    assert len(await inbox_ids(api, user_id)) == 1


async def test_stored_source_is_the_exact_bytes_sent_after_delivered_to(api):
    user_id = await new_user(api)
    raw = crlf(
        "From: Sender Name <sender@example.org>\n"
        "To: Test User <testuser@example.com>\n"
        "Subject: Dots and spaces\n"
        "X-Trailing: value with trailing space \n"
        "\n"
        ".starts with a dot\n"
        "..starts with two dots\n"
        ".\n"
        "  indented line\t\n"
        "Grüße, 8-bit text\n"
        "\n"
        "\n"
    )
    # The line "." alone must not end the message: the client stuffs it to "..".
    await deliver_ok(api, USER, raw)

    inbox, message_id = await only_message(api, user_id)
    assert await message_source(api, user_id, inbox, message_id) == b"Delivered-To: " + USER.encode() + b"\r\n" + raw


async def test_large_message_is_stored_exactly(api):
    user_id = await new_user(api)
    lines = [f"{n:06d} " + "abcdefghij" * 7 for n in range(5_000)]
    raw = simple_message("Large", "\r\n".join(lines))
    assert len(raw) > 300 * 1024
    await deliver_ok(api, USER, raw)

    inbox, message_id = await only_message(api, user_id)
    assert await message_source(api, user_id, inbox, message_id) == b"Delivered-To: " + USER.encode() + b"\r\n" + raw
    details = await get_message(api, user_id, inbox, message_id)
    assert details["subject"] == "Large"
    assert details["intro"].startswith("000000 abcdefghij")


async def test_fifty_concurrent_deliveries_to_one_mailbox(api):
    user_id = await new_user(api)

    results = await asyncio.gather(*(deliver(api, USER, simple_message(f"Message {n}")) for n in range(50)))
    assert [result.data_codes for result in results] == [[250]] * 50

    inbox = await mailbox_id(api, user_id)
    body = await list_messages(api, user_id, inbox, limit=100, order="asc")
    assert body["total"] == 50
    assert [item["uid"] for item in body["results"]] == list(range(1, 51))
    assert sorted(item["subject"] for item in body["results"]) == sorted(f"Message {n}" for n in range(50))
    mailbox = assert_ok(await call(api, "GET", f"/users/{user_id}/mailboxes/{inbox}"))
    assert (mailbox["total"], mailbox["unseen"]) == (50, 50)


async def test_concurrent_deliveries_stop_at_the_quota(api):
    raw = simple_message("Filler", "f" * 900)
    size = len(f"Delivered-To: {USER}\r\n") + len(raw)
    user_id = await new_user(api, quota=size * 5)

    results = await asyncio.gather(*(deliver(api, USER, raw) for _ in range(20)))
    assert sorted(code for result in results for code in result.data_codes) == [250] * 5 + [552] * 15
    assert await quota_used(api, user_id) == size * 5
    assert len(await inbox_ids(api, user_id)) == 5


async def test_storage_failure_answers_451_and_stores_nothing(api, monkeypatch):
    user_id = await new_user(api)
    other_id = await new_user(api, "other", OTHER)
    await deliver_ok(api, USER, simple_message("Before"))
    used = await quota_used(api, user_id)

    storage = core(api).storage
    real_add_message = storage.add_message
    failed: list[str] = []

    async def add_message(message, raw, search, quota):
        if message.user == user_id:
            failed.append(message.id)
            raise RuntimeError("disk on fire")
        return await real_add_message(message, raw, search, quota)

    monkeypatch.setattr(storage, "add_message", add_message)
    result = await deliver(api, [USER, OTHER], simple_message("During"))

    assert result.data_codes == [451, 250], result
    assert len(failed) == 1
    assert len(await inbox_ids(api, user_id)) == 1
    assert await quota_used(api, user_id) == used
    assert len(await inbox_ids(api, other_id)) == 1

    # Once storage works again the retried delivery goes through.
    monkeypatch.setattr(storage, "add_message", real_add_message)
    await deliver_ok(api, USER, simple_message("After"))
    assert len(await inbox_ids(api, user_id)) == 2


async def test_size_limit(make_api):
    api = await make_api(max_message_size=10_000)
    user_id = await new_user(api)
    big = simple_message("Big", "\r\n".join(["x" * 76] * 260))
    assert 20_000 <= len(big) < 21_000

    declared = await deliver(api, USER, big, mail_options=("SIZE=20000",))
    assert declared.mail[0] == 552, declared
    assert declared.rcpt == []

    undeclared = await deliver(api, USER, big)
    assert [code for code, _ in undeclared.rcpt] == [250]
    assert undeclared.data_codes == [552], undeclared

    assert await inbox_ids(api, user_id) == []
    assert await quota_used(api, user_id) == 0
    # A message within the limit still goes through on the same listener.
    await deliver_ok(api, USER, simple_message("Small", "\r\n".join(["x" * 76] * 60)))
    assert len(await inbox_ids(api, user_id)) == 1


# Garbage


def command_replies(port: int) -> dict[str, tuple[int, bytes]]:
    with open_client(port) as client:
        replies = {"bogus": client.docmd("XYZZY", "whatever")}
        client.ehlo("client.example.org")
        replies["data before mail"] = client.docmd("DATA")
        replies["rcpt before mail"] = client.docmd("RCPT", f"TO:<{USER}>")
        replies["mail"] = client.docmd("MAIL", "FROM:<sender@example.org>")
        replies["data before rcpt"] = client.docmd("DATA")
        return replies


async def test_commands_out_of_order_or_unknown(api):
    user_id = await new_user(api)
    replies = await asyncio.to_thread(command_replies, lmtp_port(api))

    assert replies["bogus"][0] == 500, replies
    assert replies["data before mail"][0] == 503, replies
    assert replies["rcpt before mail"][0] == 503, replies
    assert replies["mail"][0] == 250, replies
    assert replies["data before rcpt"][0] == 503, replies
    assert await inbox_ids(api, user_id) == []


async def test_overlong_line_in_data_is_refused(api):
    user_id = await new_user(api)
    longest = simple_message("Longest legal line", "y" * 998)
    await deliver_ok(api, USER, longest)

    result = await deliver(api, USER, simple_message("Too long", "x" * 2000))
    assert result.data_codes == [500], result
    assert result.data[0][1].startswith(b"Line too long"), result

    inbox = await mailbox_id(api, user_id)
    listed = (await list_messages(api, user_id, inbox))["results"]
    assert [item["subject"] for item in listed] == ["Longest legal line"]


def abandon_mid_message(port: int) -> bytes:
    """Send DATA and half a message on a raw socket, then hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220")
        sock.sendall(b"LHLO client.example.org\r\n")
        while (line := reader.readline())[3:4] == b"-":
            pass
        assert line.startswith(b"250"), line
        replies = b""
        for command in (b"MAIL FROM:<sender@example.org>", f"RCPT TO:<{USER}>".encode(), b"DATA"):
            sock.sendall(command + b"\r\n")
            replies += reader.readline()
        sock.sendall(b"From: sender@example.org\r\nSubject: Cut off\r\n\r\nThe first half of the bo")
        return replies


async def test_connection_closed_mid_message_stores_nothing(api):
    user_id = await new_user(api)
    replies = await asyncio.to_thread(abandon_mid_message, lmtp_port(api))
    assert [line[:3] for line in replies.splitlines()] == [b"250", b"250", b"354"], replies

    await asyncio.sleep(0.2)
    await deliver_ok(api, USER, simple_message("Complete"))
    inbox = await mailbox_id(api, user_id)
    listed = (await list_messages(api, user_id, inbox))["results"]
    assert [item["subject"] for item in listed] == ["Complete"]
    assert await quota_used(api, user_id) == len(
        b"Delivered-To: " + USER.encode() + b"\r\n" + simple_message("Complete")
    )


# Forwarding


class Collector:
    """aiosmtpd handler that keeps every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"


@pytest.fixture
async def relay():
    """A real SMTP server on a free loopback port: (collector, "HOST:PORT")."""
    collector = Collector()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(collector, hostname="relay.example.net", decode_data=False), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    yield collector, f"127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


async def test_forward_goes_through_the_smtp_relay_and_the_local_copy_stays(make_api, relay):
    collector, address = relay
    api = await make_api(smtp_relay=address)
    user_id = await new_user(api)
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"forward": "x@example.net"}))

    raw = simple_message("Forward me")
    await deliver_ok(api, USER, raw)
    await core(api).forwarder.idle()

    inbox, message_id = await only_message(api, user_id)
    stored = await message_source(api, user_id, inbox, message_id)
    assert stored == b"Delivered-To: " + USER.encode() + b"\r\n" + raw
    assert len(collector.envelopes) == 1
    envelope = collector.envelopes[0]
    assert envelope.rcpt_tos == ["x@example.net"]
    assert envelope.mail_from == "sender@example.org"
    assert envelope.original_content == stored


@pytest.fixture
async def upload_target(aiohttp_server):
    """A small HTTP server that records uploads; ``status`` sets what it answers."""
    received: list[tuple[str, bytes]] = []
    state = {"status": 200}

    async def handler(request: web.Request) -> web.Response:
        received.append((request.content_type, await request.read()))
        return web.Response(status=state["status"], text="ok")

    app = web.Application()
    app.router.add_post("/upload", handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/upload")), received, state


async def test_target_url_receives_the_stored_message(api, upload_target):
    url, received, _ = upload_target
    user_id = await new_user(api)
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"targetUrl": url}))

    raw = simple_message("Upload me")
    await deliver_ok(api, USER, raw)
    await core(api).forwarder.idle()

    inbox, message_id = await only_message(api, user_id)
    stored = await message_source(api, user_id, inbox, message_id)
    assert received == [("message/rfc822", stored)]


async def test_failing_target_url_is_retried_a_bounded_number_of_times(make_api, upload_target):
    url, received, state = upload_target
    state["status"] = 500
    api = await make_api(forward_attempts=2)
    app_core = core(api)
    # The app closes the forwarder it started with; this quicker one is closed here.
    forwarder = app_core.forwarder = Forwarder(app_core.settings, retry_delay=0.05)
    try:
        user_id = await new_user(api)
        assert_ok(await call(api, "PUT", f"/users/{user_id}", {"targetUrl": url}))

        result = await deliver(api, USER, simple_message("Nobody wants me"))
        assert result.data_codes == [250], result
        await forwarder.idle()
    finally:
        await forwarder.close()

    assert len(received) == 2
    assert all(content_type == "message/rfc822" for content_type, _ in received)
    assert len(await inbox_ids(api, user_id)) == 1


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("relay_setting", ["closed", None])
async def test_unreachable_or_missing_relay_never_costs_the_local_copy(make_api, relay_setting):
    smtp_relay = f"127.0.0.1:{closed_port()}" if relay_setting == "closed" else None
    api = await make_api(smtp_relay=smtp_relay, forward_attempts=2)
    app_core = core(api)
    forwarder = app_core.forwarder = Forwarder(app_core.settings, retry_delay=0.05)
    try:
        user_id = await new_user(api)
        assert_ok(await call(api, "PUT", f"/users/{user_id}", {"forward": "x@example.net"}))
        raw = simple_message("Stays here")
        await deliver_ok(api, USER, raw)
        await forwarder.idle()
    finally:
        await forwarder.close()

    inbox, message_id = await only_message(api, user_id)
    assert await message_source(api, user_id, inbox, message_id) == f"Delivered-To: {USER}\r\n".encode() + raw


async def test_forward_and_target_url_together(make_api, relay, upload_target):
    collector, address = relay
    url, received, _ = upload_target
    api = await make_api(smtp_relay=address)
    user_id = await new_user(api)
    other_id = await new_user(api, "other", OTHER)
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"forward": "x@example.net", "targetUrl": url}))

    await deliver_ok(api, USER, simple_message("Both ways"))
    # Someone without forwarding gets mail too: nothing is sent on for them.
    await deliver_ok(api, OTHER, simple_message("Just local"))
    await core(api).forwarder.idle()

    inbox, message_id = await only_message(api, user_id)
    stored = await message_source(api, user_id, inbox, message_id)
    assert [envelope.original_content for envelope in collector.envelopes] == [stored]
    assert received == [("message/rfc822", stored)]
    assert len(await inbox_ids(api, other_id)) == 1


# Threading


async def test_threads_by_reference_and_subject(api):
    user_id = await new_user(api)
    await deliver_ok(api, USER, simple_message("Same subject", Message_ID="<first@example.org>"))
    await deliver_ok(
        api,
        USER,
        simple_message("Something else entirely", Message_ID="<reply@example.org>", In_Reply_To="<first@example.org>"),
    )
    await deliver_ok(api, USER, simple_message("Re: [list] Same subject", Message_ID="<third@example.org>"))
    await deliver_ok(api, USER, simple_message("Unrelated", Message_ID="<fourth@example.org>"))

    inbox = await mailbox_id(api, user_id)
    listed = (await list_messages(api, user_id, inbox, order="asc"))["results"]
    threads = [item["thread"] for item in listed]
    assert threads[1] == threads[0], listed
    assert threads[2] == threads[0], listed
    assert threads[3] != threads[0], listed
    assert all(isinstance(thread, str) and len(thread) == 24 for thread in threads)


async def test_threads_by_references_header(api):
    user_id = await new_user(api)
    await deliver_ok(api, USER, simple_message("Start", Message_ID="<start@example.org>"))
    await deliver_ok(
        api,
        USER,
        simple_message(
            "Totally different", Message_ID="<later@example.org>", References="<unknown@x> <start@example.org>"
        ),
    )

    inbox = await mailbox_id(api, user_id)
    first, second = (await list_messages(api, user_id, inbox, order="asc"))["results"]
    assert first["thread"] == second["thread"]


async def test_threads_are_per_user_and_subject_threading_looks_back_thirty_days(api):
    user_id = await new_user(api)
    other_id = await new_user(api, "other", OTHER)
    await deliver_ok(api, USER, simple_message("Shared subject", Message_ID="<original@example.org>"))
    # The other user gets a reply to it and the same subject: neither joins the first user's thread.
    await deliver_ok(api, OTHER, simple_message("Re: Shared subject", In_Reply_To="<original@example.org>"))
    # An old message (received long ago) is too old to be joined by subject.
    inbox = await mailbox_id(api, user_id)
    await upload_message(api, user_id, inbox, simple_message("Ancient subject"), date="2000-01-01T00:00:00Z")
    await deliver_ok(api, USER, simple_message("Re: Ancient subject"))

    [mine, old, new] = (await list_messages(api, user_id, inbox, order="asc"))["results"]
    [theirs] = (await list_messages(api, other_id, await mailbox_id(api, other_id)))["results"]
    assert theirs["thread"] != mine["thread"]
    assert (old["subject"], new["subject"]) == ("Ancient subject", "Re: Ancient subject")
    assert new["thread"] != old["thread"]


# Malformed MIME

MALFORMED = {
    "missing-boundary": crlf(
        "From: sender@example.org\n"
        "Subject: Missing boundary\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="never-there"\n'
        "\n"
        "Some text without any boundary.\n"
        "--other-boundary\n"
        "Content-Type: text/plain\n"
        "\n"
        "hello\n"
    ),
    "bad-base64": crlf(
        "From: sender@example.org\n"
        "Subject: Bad base64\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b1"\n'
        "\n"
        "--b1\n"
        "Content-Type: text/plain\n"
        "\n"
        "See attached.\n"
        "--b1\n"
        'Content-Type: application/octet-stream; name="x.bin"\n'
        "Content-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="x.bin"\n'
        "\n"
        "!!!! not base64 @@@@ ====\n"
        "--b1--\n"
    ),
    "broken-headers": crlf(
        "From: <<<@@@>>>\n"
        "To: ,,,\n"
        "Subject: =?utf-8?B?broken?==?x?Q?zz?=\n"
        "Date: not a date\n"
        "Content-Type: text/plain; charset=no-such-charset\n"
        "Message-ID: \n"
        "this line is not a header\n"
        "\n"
        "Body\xff text.\n"
    ).replace(b"\xc3\xbf", b"\xff"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_mime_is_accepted_and_kept_exactly(api, name):
    user_id = await new_user(api)
    raw = MALFORMED[name]
    await deliver_ok(api, USER, raw)

    inbox, message_id = await only_message(api, user_id)
    assert await message_source(api, user_id, inbox, message_id) == b"Delivered-To: " + USER.encode() + b"\r\n" + raw
    details = await get_message(api, user_id, inbox, message_id)
    assert details["id"] == message_id
    assert details["size"] == len(raw) + len(f"Delivered-To: {USER}\r\n")
