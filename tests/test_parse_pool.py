"""Parse workers: the same digest as parsing in-process, and never a lost message when a worker fails.

The pool is driven directly here; ``tests/test_lmtp.py`` delivers through it
on both backends. The last tests run the whole server: they kill its worker
between two deliveries, and while a delivery's message is on its way to it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from merganser.resolvers import parse_pool
from merganser.resolvers.parse_pool import ParsePool
from merganser.resolvers.parsing import digest_message

sys.path.insert(0, str(Path(__file__).resolve().parent / "rest"))

from helpers import create_user, deliver, deliver_ok, mailbox_id, message_ids, message_source

from merganser.app import create_app
from merganser.config import Settings

WORKER_MODULE = parse_pool.__name__


def messages() -> list[bytes]:
    plain = b"From: Ann <ann@example.org>\r\nTo: bob@example.com\r\nSubject: Hi\r\n\r\nHello Bob.\r\n"
    html = EmailMessage()
    html["From"] = "Jürgen <j@example.org>"
    html["Subject"] = "Nur HTML"
    html.set_content("<p>Grüße <b>aus</b> Köln</p>", subtype="html")
    mixed = EmailMessage()
    mixed["From"] = "c@example.org"
    mixed["Cc"] = "Dee <d@example.org>, e@example.org"
    mixed["In-Reply-To"] = "<x@example.org>"
    mixed["Date"] = "Tue, 01 Jul 2025 10:00:00 +0200"
    mixed.set_content("See the attachment.\n" * 50)
    mixed.add_attachment(b"\x00\x01" * 5000, maintype="application", subtype="octet-stream", filename="a.bin")
    broken = b"From: <<<@@@>>>\r\nSubject: =?utf-8?B?broken?=\r\nContent-Type: multipart/mixed\r\n\r\n\xff\xfe"
    return [plain, html.as_bytes(), mixed.as_bytes(), broken, b"", b"no headers at all"]


def worker_pids() -> list[int]:
    """This process's parse workers, found the way an operator would: by command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and WORKER_MODULE.encode() in command:
            found.append(int(entry.name))
    return found


@pytest.fixture
async def pool():
    parsers = ParsePool(1)
    yield parsers
    parsers.close()


async def test_a_worker_digests_as_the_server_would(pool):
    for raw in messages():
        assert await pool.digest(raw) == digest_message(raw)
    assert len(worker_pids()) == 1


async def test_concurrent_requests_are_answered_in_order(pool):
    raws = [f"Subject: message {number}\r\n\r\n{'body ' * number}\r\n".encode() for number in range(200)]
    digests = await asyncio.gather(*(pool.digest(raw) for raw in raws))
    assert [digest.subject for digest in digests] == [f"message {number}" for number in range(200)]


async def test_a_killed_worker_is_answered_for_in_process_then_replaced(pool, monkeypatch):
    # The pool's own clock (not the event loop's) stands still until the test moves it, so the
    # restart pause below does not depend on how fast this machine runs the calls in it.
    now = [1000.0]
    monkeypatch.setattr(parse_pool, "time", SimpleNamespace(monotonic=lambda: now[0]))
    raw = messages()[0]
    assert await pool.digest(raw) == digest_message(raw)
    [pid] = worker_pids()
    os.kill(pid, signal.SIGKILL)
    # The caller parses in-process meanwhile, and for a while after: no restart storm.
    assert await pool.digest(raw) is None
    assert await pool.digest(raw) is None
    now[0] += parse_pool.RETRY_DELAY - 0.1
    assert await pool.digest(raw) is None
    assert worker_pids() == []
    now[0] += 0.2
    assert await pool.digest(raw) == digest_message(raw)
    assert len(worker_pids()) == 1


async def test_requests_in_flight_when_the_worker_dies_come_back_empty(pool):
    assert await pool.digest(b"Subject: start\r\n\r\n") is not None
    [pid] = worker_pids()
    big = b"Subject: big\r\n\r\n" + b"many words in a long line of text\r\n" * 300_000
    waiting = [asyncio.ensure_future(pool.digest(big)) for _ in range(3)]
    await asyncio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    assert await asyncio.gather(*waiting) == [None, None, None]


async def test_a_worker_that_cannot_start_leaves_parsing_to_the_caller(monkeypatch, caplog):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    parsers = ParsePool(1)
    try:
        assert await parsers.digest(b"Subject: x\r\n\r\n") is None
        assert "could not start a parse worker" in caplog.text
        # Not tried again for every message.
        caplog.clear()
        assert await parsers.digest(b"Subject: x\r\n\r\n") is None
        assert "could not start" not in caplog.text
    finally:
        parsers.close()


async def test_a_worker_that_exits_at_once_leaves_parsing_to_the_caller(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/true")
    parsers = ParsePool(1)
    try:
        assert await parsers.digest(b"Subject: x\r\n\r\n") is None
        assert await parsers.digest(b"Subject: x\r\n\r\n") is None
    finally:
        parsers.close()


async def test_a_worker_found_dead_refuses_requests_instead_of_keeping_them(monkeypatch):
    """A request queued after the worker's answers ended would wait for ever."""
    monkeypatch.setattr(sys, "executable", "/bin/true")
    worker = await parse_pool._Worker.start()
    await asyncio.wait_for(worker.answers, 10)
    with pytest.raises(ConnectionError):
        worker.send(b"Subject: x\r\n\r\n")


async def test_a_closed_or_empty_pool_starts_nothing():
    closed = ParsePool(1)
    assert await closed.digest(b"Subject: x\r\n\r\n") is not None
    closed.close()
    assert worker_pids() == []
    assert await closed.digest(b"Subject: x\r\n\r\n") is None
    assert await ParsePool(0).digest(b"Subject: x\r\n\r\n") is None
    assert worker_pids() == []


# Through the server


@pytest.fixture
async def api(tmp_path: Path, aiohttp_client: Any):
    settings = Settings(storage=f"sqlite:///{tmp_path}/merganser.db", bcrypt_rounds=4, lmtp_port=0, parse_workers=1)
    return await aiohttp_client(create_app(settings))


async def test_delivery_goes_on_when_the_worker_dies(api):
    user_id = await create_user(api, "testuser", address="testuser@example.com")
    first = b"From: a@example.org\r\nSubject: first\r\n\r\nOne.\r\n"
    await deliver_ok(api, "testuser@example.com", first)
    [pid] = worker_pids()
    os.kill(pid, signal.SIGKILL)
    big = b"From: a@example.org\r\nSubject: second\r\n\r\n" + b"a line of the body\r\n" * 50_000
    result = await deliver(api, "testuser@example.com", big)
    assert result.data_codes == [250], result

    inbox = await mailbox_id(api, user_id)
    stored = [await message_source(api, user_id, inbox, mid) for mid in await message_ids(api, user_id, inbox)]
    prefix = b"Delivered-To: testuser@example.com\r\n"
    assert sorted(stored) == sorted([prefix + first, prefix + big])


async def test_delivery_goes_on_when_the_worker_dies_while_parsing_it(api, monkeypatch, caplog):
    user_id = await create_user(api, "testuser", address="testuser@example.com")
    first = b"From: a@example.org\r\nSubject: first\r\n\r\nOne.\r\n"
    await deliver_ok(api, "testuser@example.com", first)
    [pid] = worker_pids()
    killed: list[int] = []
    send = parse_pool._Worker.send

    def send_then_die(worker: parse_pool._Worker, raw: bytes) -> asyncio.Future[Any]:
        """Queue the request, then kill the worker before the event loop can flush the rest of it.

        The message is far larger than a socket buffer, so the worker cannot have read it whole,
        let alone answered: it dies with the delivery's request in flight.
        """
        future = send(worker, raw)
        if not killed:
            killed.append(worker.process.pid)
            worker.process.kill()
            worker.process.wait()
        return future

    monkeypatch.setattr(parse_pool._Worker, "send", send_then_die)
    big = b"From: a@example.org\r\nSubject: second\r\n\r\n" + b"a line of the body\r\n" * 100_000
    result = await deliver(api, "testuser@example.com", big)
    assert result.data_codes == [250], result
    assert killed == [pid]
    # The pool saw its worker go with the request unanswered, and the message was parsed in-process.
    assert f"parse worker {pid} stopped answering" in caplog.text

    inbox = await mailbox_id(api, user_id)
    stored = [await message_source(api, user_id, inbox, mid) for mid in await message_ids(api, user_id, inbox)]
    prefix = b"Delivered-To: testuser@example.com\r\n"
    assert sorted(stored) == sorted([prefix + first, prefix + big])


async def test_closing_the_server_stops_its_workers(tmp_path: Path):
    settings = Settings(storage=f"sqlite:///{tmp_path}/merganser.db", bcrypt_rounds=4, lmtp_port=0, parse_workers=1)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        await create_user(client, "testuser", address="testuser@example.com")
        await deliver_ok(client, "testuser@example.com", b"Subject: x\r\n\r\nx\r\n")
        assert len(worker_pids()) == 1
    finally:
        await client.close()
    assert worker_pids() == []
