"""Live-update fan-out: WebSocket and SSE subscribers of one server, fed by LMTP deliveries.

Subscribers connect (half over GraphQL subscriptions on WebSocket, half to
the SSE stream), the script records the server's resident memory before and
after they connect, then delivers messages over LMTP at a steady rate and
prints, per transport, the latency from the end of each message's DATA to
each subscriber's receipt of its EXISTS event (p50 and p99). That span holds
the commit (a 250 is only sent once the message is durable), so the commit's
own share is printed too: the time from the end of DATA to the 250.

Two layouts run by default: every subscriber watching one user (the widest
fan-out a single commit can cause), and subscribers spread over many users,
a few per user, with deliveries going round the users (closer to a real mail
server). Subscribers live in two client processes of their own, so the
receiving side does not queue behind the sender or the server's event loop;
all processes read the same monotonic clock.

Targets from the issue: p99 under 100 ms; under 50 KB per idle subscriber.
This script prints figures and never judges them.

Usage: python bench/fanout.py [--ws N] [--sse N] [--rate R] [--spread-rate R] [--duration S]
                              [--users N] [--layout one|spread|both]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import smtplib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HOST,
    Api,
    BenchError,
    Server,
    check_server_alive,
    create_accounts,
    percentile,
    print_environment,
    running_server,
    server_cpu_seconds,
)

SUBSCRIPTION = "subscription Watch($user: ID!) { updates(user: $user) { id command messageId } }"
CONNECT_TIMEOUT = 120.0
SETTLE_SECONDS = 2.0

# One receipt: (transport, user index, journal id, monotonic receive time).
Receipt = tuple[str, int, int, float]


def resident_bytes(server: Server) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError("no VmRSS in /proc")


# --- subscribers (run in client processes) ---------------------------------------------------


async def _sse(session: aiohttp.ClientSession, base: str, user: str, index: int, out: list[Receipt]) -> None:
    async with session.get(f"{base}/users/{user}/updates", timeout=aiohttp.ClientTimeout(total=None)) as response:
        if response.status != 200:
            raise BenchError(f"SSE answered {response.status}")
        out.append(("ready", index, 0, 0.0))
        event_id, exists_at = 0, 0.0
        async for line in response.content:
            if line.startswith(b"data: ") and b'"EXISTS"' in line:
                exists_at = time.monotonic()
            elif line.startswith(b"id: "):
                event_id = int(line[4:])
            elif line == b"\n" and exists_at:
                out.append(("sse", index, event_id, exists_at))
                exists_at = 0.0


async def _ws(session: aiohttp.ClientSession, base: str, user: str, index: int, out: list[Receipt]) -> None:
    async with session.ws_connect(f"{base}/graphql", protocols=["graphql-transport-ws"], heartbeat=None) as socket:
        await socket.send_json({"type": "connection_init", "payload": {}})
        acknowledged = await socket.receive_json()
        if acknowledged.get("type") != "connection_ack":
            raise BenchError(f"websocket not acknowledged: {acknowledged}")
        await socket.send_json(
            {"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"user": user}}}
        )
        out.append(("ready", index, 0, 0.0))
        async for message in socket:
            received = time.monotonic()
            document = orjson.loads(message.data)
            if document.get("type") != "next":
                raise BenchError(f"subscription failed: {document}")
            update = document["payload"]["data"]["updates"]
            if update["command"] == "EXISTS":
                out.append(("ws", index, int(update["id"]), received))


async def _subscribe_all(
    base: str, users: list[str], ws: int, sse: int, control: multiprocessing.connection.Connection
) -> None:
    receipts: list[Receipt] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [
            asyncio.create_task(_ws(session, base, users[n % len(users)], n % len(users), receipts)) for n in range(ws)
        ]
        tasks += [
            asyncio.create_task(_sse(session, base, users[n % len(users)], n % len(users), receipts))
            for n in range(sse)
        ]
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while sum(1 for receipt in receipts if receipt[0] == "ready") < ws + sse:
            failed = [task for task in tasks if task.done()]
            if failed:
                failed[0].result()
                raise BenchError("a subscriber ended early")
            if time.monotonic() > deadline:
                raise BenchError("subscribers did not connect in time")
            await asyncio.sleep(0.05)
        control.send("ready")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, control.recv)
        failures = [task.exception() for task in tasks if task.done() and task.exception() is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise BenchError(f"{len(failures)} subscribers failed, the first with {failures[0]!r}")
    control.send([receipt for receipt in receipts if receipt[0] != "ready"])


def _client_process(
    base: str, users: list[str], ws: int, sse: int, control: multiprocessing.connection.Connection
) -> None:
    try:
        asyncio.run(_subscribe_all(base, users, ws, sse, control))
    except BaseException as error:
        control.send(f"error: {type(error).__name__}: {error}")


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Sent:
    user: int
    journal_id: int
    data_end: float
    acknowledged: float


def _deliver(server: Server, addresses: list[str], rate: float, duration: float) -> list[Sent]:
    """Deliver one small message every 1/rate seconds, round the users; note when DATA ended and the 250 came."""
    sent: list[Sent] = []
    per_user = [0] * len(addresses)
    count = int(rate * duration)
    started = time.monotonic()
    with smtplib.LMTP(HOST, server.lmtp_port, timeout=60) as client:
        client.ehlo("bench.example")
        for number in range(count):
            pause = started + number / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            user = number % len(addresses)
            body = f"From: bench@example.org\r\nTo: {addresses[user]}\r\nSubject: fan-out {number}\r\n\r\nhi\r\n"
            client.mail("bench@example.org")
            client.rcpt(addresses[user])
            code, reply = client.docmd("DATA")
            if code != 354:
                raise BenchError(f"DATA answered {code} {reply!r}")
            client.send(body.encode() + b".\r\n")
            data_end = time.monotonic()
            code, reply = client.getreply()
            if code != 250:
                raise BenchError(f"delivery answered {code} {reply!r}")
            per_user[user] += 1
            sent.append(Sent(user, per_user[user], data_end, time.monotonic()))
    return sent


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def _summary(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    return (
        f"p50 {_ms(statistics.median(samples))}  p99 {_ms(percentile(samples, 0.99))}  "
        f"max {_ms(max(samples))}  (n={len(samples)})"
    )


def run_layout(name: str, users: int, ws: int, sse: int, rate: float, duration: float) -> None:
    with tempfile.TemporaryDirectory(prefix="merganser-fanout-") as workdir, running_server(Path(workdir)) as server:
        api = Api(server.http_port)
        accounts = create_accounts(api, f"fan{name}", users)
        api.close()
        base = f"http://{HOST}:{server.http_port}"
        ids = [account.id for account in accounts]
        resident_before = resident_bytes(server)

        context = multiprocessing.get_context("fork")
        controls = []
        processes = []
        halves = [(ws // 2, sse // 2), (ws - ws // 2, sse - sse // 2)]
        for ws_part, sse_part in halves:
            here, there = context.Pipe()
            process = context.Process(target=_client_process, args=(base, ids, ws_part, sse_part, there))
            process.start()
            controls.append(here)
            processes.append(process)
        for control in controls:
            answer = control.recv()
            if answer != "ready":
                raise BenchError(f"client process: {answer}")
        time.sleep(SETTLE_SECONDS)
        check_server_alive(server)
        resident_after = resident_bytes(server)

        cpu_before = server_cpu_seconds(server)
        sent = _deliver(server, [account.address for account in accounts], rate, duration)
        time.sleep(1.0)
        cpu = server_cpu_seconds(server) - cpu_before
        receipts: list[Receipt] = []
        for control in controls:
            control.send("stop")
            answer = control.recv()
            if isinstance(answer, str):
                raise BenchError(f"client process: {answer}")
            receipts += answer
        for process in processes:
            process.join(30)
        check_server_alive(server)

    subscribers = ws + sse
    by_key = {(item.user, item.journal_id): item for item in sent}
    latency: dict[str, list[float]] = {"ws": [], "sse": []}
    for transport, user, journal_id, received in receipts:
        item = by_key.get((user, journal_id))
        if item is not None:
            latency[transport].append(received - item.data_end)
    per_user = {user: 0 for user in range(users)}
    for index in range(ws):
        per_user[index % users] += 1
    for index in range(sse):
        per_user[index % users] += 1
    expected = sum(per_user[item.user] for item in sent)
    received_count = len(latency["ws"]) + len(latency["sse"])
    commit = [item.acknowledged - item.data_end for item in sent]

    print(f"\n== layout '{name}': {users} user(s), {ws} WebSocket + {sse} SSE subscribers ==")
    print(f"  deliveries       {len(sent)} at {rate:g}/s over {duration:g} s; receipts {received_count} of {expected}")
    print(f"  end of DATA → 250 (commit)       {_summary(commit)}")
    print(
        f"  server CPU       {cpu / len(sent) * 1000:.1f} ms per delivery (its main process: storing the message "
        f"and fanning it out), {cpu / max(received_count, 1) * 1e6:.1f} µs per receipt"
    )
    print(f"  end of DATA → WebSocket receipt  {_summary(latency['ws'])}")
    print(f"  end of DATA → SSE receipt        {_summary(latency['sse'])}")
    print(f"  end of DATA → any receipt        {_summary(latency['ws'] + latency['sse'])}")
    grown = resident_after - resident_before
    print(
        f"  server memory    {resident_before / 2**20:.1f} MiB before, {resident_after / 2**20:.1f} MiB with "
        f"{subscribers} idle subscribers: {grown / subscribers / 1024:.1f} KiB per subscriber"
    )
    if received_count != expected:
        raise BenchError(f"{expected - received_count} receipts missing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ws", type=int, default=1000, help="WebSocket (GraphQL) subscribers")
    parser.add_argument("--sse", type=int, default=1000, help="SSE subscribers")
    parser.add_argument("--rate", type=float, default=5.0, help="deliveries per second in the 'one' layout (default 5)")
    parser.add_argument(
        "--spread-rate", type=float, default=20.0,
        help="deliveries per second in the 'spread' layout, going round its users (default 20)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of delivering")
    parser.add_argument("--users", type=int, default=100, help="users of the 'spread' layout")
    parser.add_argument("--layout", choices=["one", "spread", "both"], default="both")
    arguments = parser.parse_args()
    if arguments.rate <= 0 or arguments.spread_rate <= 0 or arguments.duration <= 0 or arguments.users < 1:
        parser.error("--rate, --spread-rate, --duration and --users must be positive")
    print_environment(
        "merganser live-update fan-out",
        None,
        {
            "ws": arguments.ws,
            "sse": arguments.sse,
            "rate": arguments.rate,
            "spread-rate": arguments.spread_rate,
            "users": arguments.users,
            "duration": arguments.duration,
        },
    )
    with contextlib.suppress(KeyboardInterrupt):
        if arguments.layout in ("one", "both"):
            run_layout("one", 1, arguments.ws, arguments.sse, arguments.rate, arguments.duration)
        if arguments.layout in ("spread", "both"):
            run_layout(
                "spread", arguments.users, arguments.ws, arguments.sse, arguments.spread_rate, arguments.duration
            )


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        sys.exit(1)
