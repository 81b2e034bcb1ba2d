"""What the message benchmarks share: the server under test, REST calls, messages and LMTP delivery.

The server always runs as its own process (``python -m merganser serve``) so
that its event loop has a core to itself as far as a 2-core machine allows,
and so that what is measured is the real command, not an in-process stand-in.
The LMTP load generator runs in a forked process of its own with a plain
asyncio client over pre-encoded DATA payloads: no smtplib regex pass per
message and no thread switching, so it takes as little CPU from the server as
possible. Everything is deterministic for a given seed, so runs are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# A reply may wait behind a group commit of many large messages; a minute means something is stuck.
REPLY_TIMEOUT = 60.0
HTTP_TIMEOUT = 120.0
PASSWORD = "bench-password-1"
SENDER = "sender@bench.example"
MB = 1_000_000


class BenchError(Exception):
    """Something broke, so the figures would mean nothing."""


# --- the server under test -----------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    http_port: int
    lmtp_port: int
    log_path: Path


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _lmtp_greets(port: int) -> bool:
    """True once the LMTP listener answers with its 220 greeting."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def _http_answers(port: int) -> bool:
    connection = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        connection.request("GET", "/users")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


def _wait_ready(server: Server) -> None:
    """Poll both listeners; fail early with the server's log if it died."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"merganser exited with {server.process.returncode}:\n{tail(server.log_path)}")
        if _http_answers(server.http_port) and _lmtp_greets(server.lmtp_port):
            return
        time.sleep(0.1)
    raise BenchError(f"merganser was not ready within {STARTUP_TIMEOUT:.0f} s:\n{tail(server.log_path)}")


def _stop(server: Server) -> None:
    """SIGTERM (merganser shuts down cleanly on it), SIGKILL if that hangs."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def running_server(workdir: Path, storage: str | None = None) -> Iterator[Server]:
    """merganser on free loopback ports with its data in ``workdir``; always stopped afterwards.

    ``--log-level warning`` keeps access-log lines out of the measurement and
    ``--bcrypt-rounds 4`` keeps account set-up from dominating short runs.
    """
    http_port, lmtp_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "merganser", "serve",
        "--data-dir", str(workdir / "data"),
        "--http-host", HOST, "--http-port", str(http_port),
        "--lmtp-host", HOST, "--lmtp-port", str(lmtp_port),
        "--bcrypt-rounds", "4",
        "--log-level", "warning",
    ]  # fmt: skip
    if storage:
        command += ["--storage", storage]
    log_path = workdir / "merganser.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, http_port, lmtp_port, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(server)


def server_cpu_seconds(server: Server) -> float:
    """User plus system CPU time of the server process (all threads) so far, from /proc.

    CPU per request is steadier than requests per second when other jobs
    share the machine: they delay the server but do not make it work more.
    """
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check_server_alive(server: Server) -> None:
    """A server that died under load makes every later figure meaningless."""
    if server.process.poll() is not None:
        raise BenchError(f"merganser exited with {server.process.returncode}:\n{tail(server.log_path)}")


# --- environment header --------------------------------------------------------------------


def _revision() -> str:
    result = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


def print_environment(title: str, storage: str | None, parameters: Mapping[str, object]) -> None:
    """What a reader needs to compare two runs: machine, versions and every parameter."""
    cores = len(os.sched_getaffinity(0))
    print(title)
    python = f"{platform.python_version()} ({platform.python_implementation()})"
    print(f"  python      {python}, SQLite {sqlite3.sqlite_version} (the module the server uses too)")
    print(f"  machine     {platform.machine()}, {os.cpu_count()} CPUs ({cores} usable), {platform.system()}")
    print(f"  merganser   {_revision()}, storage {storage or 'embedded SQLite (durable: synchronous=FULL)'}")
    print("  parameters  " + ", ".join(f"{name}={value}" for name, value in parameters.items()))
    print(f"  load        {load_average()} before the run (1/5/15-minute averages; more than ~0.5 means contention)")
    print(
        f"  note        server, load generator and this script share {cores} cores; "
        "absolute figures are bound to this machine",
        flush=True,
    )


def load_average() -> str:
    """The machine's load averages, so figures taken while something else ran can be told apart."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


# --- REST ------------------------------------------------------------------------------------


class Api:
    """JSON over one keep-alive connection, so latencies exclude TCP set-up."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT)

    def close(self) -> None:
        self.connection.close()

    def call(self, method: str, path: str, payload: Mapping[str, object] | None = None) -> dict[str, object]:
        document, _ = self.timed(method, path, payload)
        return document

    def timed(
        self, method: str, path: str, payload: Mapping[str, object] | None = None
    ) -> tuple[dict[str, object], float]:
        """The decoded answer and the seconds from sending the request to the last body byte.

        Anything but a 200 with ``success`` is an error: a benchmark of failing
        requests measures nothing.
        """
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        started = time.perf_counter()
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        raw = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise BenchError(f"{method} {path} answered {response.status}: {raw[:300]!r}")
        document = json.loads(raw)
        if document.get("success") is not True:
            raise BenchError(f"{method} {path} did not succeed: {raw[:300]!r}")
        return document, elapsed


@dataclass(frozen=True)
class Account:
    id: str
    address: str
    inbox: str


def create_accounts(api: Api, prefix: str, count: int) -> list[Account]:
    """Users ``<prefix>0``… with addresses ``<prefix>N@bench.example`` and their INBOX ids."""
    accounts = []
    for number in range(count):
        address = f"{prefix}{number}@bench.example"
        created = api.call(
            "POST", "/users", {"username": f"{prefix}{number}", "password": PASSWORD, "address": address}
        )
        user_id = str(created["id"])
        accounts.append(Account(user_id, address, inbox_of(api, user_id)))
    return accounts


def _mailboxes(api: Api, user_id: str) -> list[dict[str, object]]:
    listed = api.call("GET", f"/users/{user_id}/mailboxes?counters=true")
    results = listed["results"]
    assert isinstance(results, list)
    return results


def inbox_of(api: Api, user_id: str) -> str:
    for mailbox in _mailboxes(api, user_id):
        if mailbox["path"] == "INBOX":
            return str(mailbox["id"])
    raise BenchError(f"user {user_id} has no INBOX")


def inbox_total(api: Api, account: Account) -> int:
    """The INBOX message count as the API reports it (``GET /users/{id}/mailboxes?counters=true``)."""
    for mailbox in _mailboxes(api, account.id):
        if mailbox["id"] == account.inbox:
            total = mailbox["total"]
            assert isinstance(total, int)
            return total
    raise BenchError(f"INBOX of {account.address} disappeared")


# --- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; enough for latency summaries of hundreds of samples."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def latency_summary(samples: Sequence[float]) -> str:
    return (
        f"median {ms(statistics.median(samples))}, p90 {ms(percentile(samples, 0.9))}, "
        f"min {ms(min(samples))} (n={len(samples)})"
    )


# --- messages ------------------------------------------------------------------------------------

# Words are consonant-vowel syllables only, so none can equal a token of the generated
# headers (bench, example, sender, searcher0, ...), and searches count body and subject hits alone.
_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_BASE_DATE = datetime(2025, 1, 1, tzinfo=UTC)


class Vocabulary:
    """Made-up words drawn with Zipf frequencies, as words are in real text.

    The word of rank r is drawn with weight 1/r, so one-word searches range
    from a word in nearly every message to words in a few dozen of 100,000.
    """

    def __init__(self, size: int, seed: int) -> None:
        rng = random.Random(seed)
        words: dict[str, None] = {}
        while len(words) < size:
            words["".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 4)))] = None
        self.words = list(words)
        self._cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, size + 1)))

    def draw(self, rng: random.Random, count: int) -> list[str]:
        return rng.choices(self.words, cum_weights=self._cumulative, k=count)

    def ranked(self, rank: int) -> str:
        """The word of 1-based frequency rank ``rank``."""
        return self.words[rank - 1]


def _text(words: Sequence[str]) -> str:
    """Lines of ten words: short enough for 7bit transfer encoding, like ordinary mail."""
    return "\n".join(" ".join(words[start : start + 10]) for start in range(0, len(words), 10)) + "\n"


def compose(
    number: int,
    recipient: str,
    subject: Sequence[str],
    body: Sequence[str],
    attachment: bytes | None = None,
) -> bytes:
    """One message as an MTA would hand it over: CRLF line ends, plain text, maybe an attachment."""
    message = EmailMessage(policy=SMTP)
    message["From"] = f"Bench Sender <{SENDER}>"
    message["To"] = recipient
    message["Subject"] = " ".join(subject)
    message["Date"] = format_datetime(_BASE_DATE + timedelta(minutes=number))
    message["Message-ID"] = f"<bench.{number}@bench.example>"
    message.set_content(_text(body))
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename=f"report{number}.bin"
        )
    return message.as_bytes()


_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def lmtp_payload(raw: bytes) -> bytes:
    """DATA as sent on the wire: dot-stuffed, CRLF, ending with the lone dot (RFC 5321 4.5.2)."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _LEADING_DOT.sub(b"..", data) + b".\r\n"


@dataclass(frozen=True)
class Delivery:
    """One message for one recipient, ready to send; ``size`` is the message's own length."""

    recipient: str
    payload: bytes
    size: int


def small_delivery(vocabulary: Vocabulary, seed: int, number: int, recipient: str) -> Delivery:
    """A ~1 KB message whose words follow from (seed, number) alone.

    Rebuilding the words of message N needs nothing but N, so fills can make
    messages on demand and checks can recount words without storing them.
    """
    subject, body = small_words(vocabulary, seed, number)
    raw = compose(number, recipient, subject, body)
    return Delivery(recipient, lmtp_payload(raw), len(raw))


def small_words(vocabulary: Vocabulary, seed: int, number: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed * 10_000_019 + number)
    return vocabulary.draw(rng, 5), vocabulary.draw(rng, 110)


# --- LMTP delivery -----------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """What the load generator saw; ``elapsed`` runs from the first MAIL to the last DATA reply."""

    messages: int = 0
    accepted: int = 0
    bytes: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None


class _LmtpConnection:
    """A minimal LMTP client: one command at a time, replies read in full."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> _LmtpConnection:
        reader, writer = await asyncio.open_connection(HOST, port)
        connection = cls(reader, writer)
        async with asyncio.timeout(REPLY_TIMEOUT):
            connection._expect(await connection._reply(), b"220")
            connection._expect(await connection._command(b"LHLO bench.example"), b"250")
        return connection

    @staticmethod
    def _expect(reply: bytes, code: bytes) -> None:
        if not reply.startswith(code):
            raise BenchError(f"LMTP set-up answered {reply!r}")

    async def _reply(self) -> bytes:
        """The last line of a possibly multi-line reply ("250-..." lines precede "250 ...")."""
        while True:
            line = await self.reader.readline()
            if not line:
                raise BenchError("LMTP server closed the connection")
            if line[3:4] != b"-":
                return line.rstrip()

    async def _command(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        return await self._reply()

    async def send(self, delivery: Delivery) -> bytes:
        """Deliver one message to one recipient; the answer is the DATA reply or the first refusal."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            for line, code in (
                (f"MAIL FROM:<{SENDER}> SIZE={delivery.size}".encode(), b"250"),
                (f"RCPT TO:<{delivery.recipient}>".encode(), b"250"),
                (b"DATA", b"354"),
            ):
                reply = await self._command(line)
                if not reply.startswith(code):
                    await self._command(b"RSET")
                    return reply
            self.writer.write(delivery.payload)
            return await self._reply()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._command(b"QUIT")
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def _deliver_all(
    port: int, count: int, source: Callable[[int], Delivery], connections: int, progress_every: int
) -> DeliveryReport:
    """Open every connection first, then let each take the next message until none are left."""
    opened = await asyncio.gather(*(_LmtpConnection.open(port) for _ in range(connections)))
    report = DeliveryReport()
    numbers = iter(range(count))
    started = time.perf_counter()

    async def worker(connection: _LmtpConnection) -> None:
        for number in numbers:
            delivery = source(number)
            sent = time.perf_counter()
            reply = await connection.send(delivery)
            report.latencies.append(time.perf_counter() - sent)
            report.messages += 1
            if reply.startswith(b"250"):
                report.accepted += 1
                report.bytes += delivery.size
            elif len(report.failures) < 20:
                report.failures.append(f"message {number} to {delivery.recipient}: {reply.decode(errors='replace')}")
            if progress_every and report.messages % progress_every == 0:
                rate = report.messages / (time.perf_counter() - started)
                print(f"    {report.messages:>7}/{count} delivered ({rate:.0f} msg/s)", flush=True)

    try:
        await asyncio.gather(*(worker(connection) for connection in opened))
        report.elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(connection.close() for connection in opened))
    return report


def _delivery_process(
    pipe: multiprocessing.connection.Connection,
    port: int,
    count: int,
    source: Callable[[int], Delivery],
    connections: int,
    progress_every: int,
) -> None:
    try:
        report = asyncio.run(_deliver_all(port, count, source, connections, progress_every))
    except BaseException:
        report = DeliveryReport(error=traceback.format_exc())
    pipe.send(report)
    pipe.close()


def deliver(
    port: int, count: int, source: Callable[[int], Delivery], connections: int, progress_every: int = 0
) -> DeliveryReport:
    """Deliver messages ``source(0)``… ``source(count - 1)`` over ``connections`` LMTP connections.

    The client runs in a forked process: prebuilt messages are shared with it
    without copying or pickling, and it has its own interpreter lock.
    """
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_delivery_process, args=(sender, port, count, source, connections, progress_every), daemon=True
    )
    process.start()
    sender.close()
    try:
        report: DeliveryReport = receiver.recv()
    except EOFError:
        raise BenchError(f"the LMTP load generator died with exit code {process.exitcode}") from None
    finally:
        process.join()
    if report.error is not None:
        raise BenchError(f"the LMTP load generator failed:\n{report.error}")
    return report


def fill(server: Server, source: Callable[[int], Delivery], count: int, connections: int = 16) -> DeliveryReport:
    """Deliver ``count`` messages for set-up and insist that every one was accepted.

    ``source`` builds each message on demand inside the load generator: the
    fill's own speed is not a measured figure, and making messages on the
    second core while the server stores them shortens the wait.
    """
    print(f"  filling: {count} messages over {connections} LMTP connections", flush=True)
    report = deliver(server.lmtp_port, count, source, connections, progress_every=max(count // 10, 1000))
    check_server_alive(server)
    if report.accepted != count:
        raise BenchError(f"only {report.accepted} of {count} messages were accepted: {report.failures[:5]}")
    print(
        f"  filled in {report.elapsed:.1f} s ({count / report.elapsed:.0f} msg/s, {report.bytes / MB:.1f} MB)",
        flush=True,
    )
    return report
