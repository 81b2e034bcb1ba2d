"""Several `merganser serve` processes on one store, relaying live updates through Redis.

Real processes, a real Redis server (Debian's redis-server, started here on a
loopback port) and the shared store of either backend: a subscriber on one
server sees what is delivered through the other. How a relay closes is
checked on relays in this process, against the same Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import smtplib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from helpers import free_port, simple_message, wait_for_port
from sse import assert_quiet, updates

from merganser.storage import relay
from merganser.storage.relay import RedisRelay

START_TIMEOUT = 30.0


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Redis:
    port: int
    start: Callable[[], None]
    stop: Callable[[], None]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Redis]:
    """A private Redis on a loopback port that a test may stop and start again on the same port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/test.sh installs Debian's redis-server)")
    port = free_port()
    log = tmp_path / "redis.log"
    running: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with log.open("ab") as output:
            running.append(subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path))
        wait_for_port(port, running[-1], log, START_TIMEOUT, name="redis-server")

    def halt() -> None:
        while running:
            stop(running.pop())

    start()
    try:
        yield Redis(port, start, halt)
    finally:
        halt()


@dataclass
class Server:
    http: str
    lmtp_port: int
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def start_server(storage_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `merganser serve` processes on the test's store; each stopped at the end."""
    started: list[Server] = []

    def start(*extra: str) -> Server:
        http_port, lmtp_port = free_port(), free_port()
        log = tmp_path / f"server-{len(started)}.log"
        command = [
            sys.executable,
            "-m",
            "merganser",
            "serve",
            f"--storage={storage_url}",
            f"--data-dir={tmp_path / 'data'}",
            f"--http-port={http_port}",
            f"--lmtp-port={lmtp_port}",
            "--bcrypt-rounds=4",
            "--heartbeat-interval=1",
            *extra,
        ]
        with log.open("wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ})
        server = Server(f"http://127.0.0.1:{http_port}", lmtp_port, process, log)
        started.append(server)
        wait_for_port(http_port, process, log, START_TIMEOUT, name="merganser serve")
        return server

    try:
        yield start
    finally:
        for server in started:
            stop(server.process)


def deliver(port: int, recipient: str, subject: str) -> None:
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as client:
        refused = client.sendmail("sender@example.org", [recipient], simple_message(subject))
    assert refused == {}, refused


@contextlib.asynccontextmanager
async def stream(session: aiohttp.ClientSession, server: Server, user_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
    async with session.get(f"{server.http}/users/{user_id}/updates") as response:
        # The stream answers only once its subscription is in place.
        assert response.status == 200, await response.text()
        yield response


async def create_user(session: aiohttp.ClientSession, server: Server, name: str) -> str:
    body = {"username": name, "password": "secretpass", "address": f"{name}@example.com"}
    async with session.post(f"{server.http}/users", json=body) as reply:
        assert reply.status == 200, await reply.text()
        return (await reply.json())["id"]


async def test_a_subscriber_on_one_server_sees_deliveries_and_changes_through_another(start_server, redis_server):
    first = start_server(f"--redis={redis_server.url}")
    second = start_server(f"--redis={redis_server.url}")
    async with aiohttp.ClientSession() as session:
        user_id = await create_user(session, first, "alice")
        async with stream(session, first, user_id) as on_first, stream(session, second, user_id) as on_second:
            await asyncio.to_thread(deliver, second.lmtp_port, "alice@example.com", "Through the second")
            (added,) = await updates(on_first, 1)
            assert added.data["command"] == "EXISTS"
            assert [event.id for event in await updates(on_second, 1)] == [added.id]

            async with session.post(f"{first.http}/users/{user_id}/mailboxes", json={"path": "Shared"}) as reply:
                assert reply.status == 200
            (created,) = await updates(on_second, 1)
            assert created.data["path"] == "Shared" and created.id == added.id + 1
            assert [event.id for event in await updates(on_first, 1)] == [created.id]
            await assert_quiet(on_first, 0.3)


async def test_changes_made_while_redis_was_away_arrive_once_it_is_back(start_server, redis_server):
    first = start_server(f"--redis={redis_server.url}")
    second = start_server(f"--redis={redis_server.url}")
    async with aiohttp.ClientSession() as session:
        user_id = await create_user(session, first, "alice")
        async with stream(session, first, user_id) as on_first:
            redis_server.stop()
            await asyncio.to_thread(deliver, second.lmtp_port, "alice@example.com", "During the outage")
            redis_server.start()
            (added,) = await updates(on_first, 1, timeout=20)
            assert added.data["command"] == "EXISTS"
    assert "lost the Redis update channel" in first.log.read_text()


async def test_closing_publishes_the_notices_still_queued(redis_server):
    heard: asyncio.Queue[str] = asyncio.Queue()
    listening = RedisRelay(redis_server.url, heard.put_nowait, lambda: None)
    closing = RedisRelay(redis_server.url, lambda _: None, lambda: None)
    await listening.start()
    try:
        await closing.start()
        # Closed straight away: the publishing task never had a turn.
        closing.journal_grew("alice")
        await closing.close()
        assert await asyncio.wait_for(heard.get(), 5) == "alice"
    finally:
        await listening.close()


async def test_closing_gives_up_on_queued_notices_soon_when_redis_is_gone(redis_server, caplog):
    closing = RedisRelay(redis_server.url, lambda _: None, lambda: None)
    await closing.start()
    redis_server.stop()
    closing.journal_grew("alice")
    # Only a guard against a close that hangs for good, far above CLOSE_TIMEOUT: this is no timing check.
    async with asyncio.timeout(relay.CLOSE_TIMEOUT + 20):
        await closing.close()
    assert "could not publish the last 1 updates to Redis" in caplog.text


def test_a_server_that_cannot_reach_redis_does_not_start(tmp_path):
    command = [
        sys.executable,
        "-m",
        "merganser",
        "serve",
        f"--data-dir={tmp_path / 'data'}",
        f"--http-port={free_port()}",
        f"--lmtp-port={free_port()}",
        f"--redis=redis://127.0.0.1:{free_port()}/0",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1, result.stderr
    assert "cannot start" in result.stderr and "cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr
