"""LMTP delivery throughput: messages and megabytes per second over concurrent connections.

Every message must be answered 250, and a 250 from merganser means the copy is
committed durably (SQLite synchronous=FULL, group commit), so the rate printed
is the rate of durable deliveries. Messages are built before the clock starts
and are a deterministic mix for the seed: mostly small, some large, about a
fifth with a base64 attachment, as an MTA would hand them over. Afterwards the
INBOX totals reported by the REST API must add up to the messages delivered.

Server CPU is counted for the server process and the parse workers it
starts, split into the event loop's thread, the server's other threads
(SQLite) and the workers, so that it shows where the next limit is.

The script only prints figures; it exits non-zero only when something broke
(a reply other than 250, a count that does not add up, a server that died).

Usage: python bench/lmtp_delivery.py [--messages N] [--connections C] [--users U] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import (
    MB,
    Account,
    Api,
    BenchError,
    Delivery,
    DeliveryReport,
    Vocabulary,
    check_server_alive,
    compose,
    create_accounts,
    deliver,
    inbox_total,
    lmtp_payload,
    load_average,
    ms,
    percentile,
    print_environment,
    running_server,
)

# (share of messages, smallest, largest size in bytes); sizes are log-uniform within a band,
# so small mail dominates the count while the few large ones carry much of the volume.
SIZE_BANDS = ((0.55, 1_000, 4_000), (0.25, 4_000, 16_000), (0.12, 16_000, 64_000), (0.08, 64_000, 200_000))
ATTACHMENT_SHARE = 0.2
# Bytes of headers and MIME structure around the text, measured on generated messages.
PLAIN_OVERHEAD = 330
MULTIPART_OVERHEAD = 720
# base64 turns each 57-byte line of input into 76 characters plus CRLF.
BASE64_INPUT_PER_OUTPUT = 57 / 78


def _target_size(rng: random.Random) -> int:
    (_, low, high), *_ = rng.choices(SIZE_BANDS, weights=[band[0] for band in SIZE_BANDS])
    return round(low * (high / low) ** rng.random())


def _words_filling(rng: random.Random, vocabulary: Vocabulary, length: int) -> list[str]:
    """Words whose text (with separators) is about ``length`` characters long."""
    words: list[str] = []
    filled = 0
    while filled < length:
        chunk = vocabulary.draw(rng, 32)
        words += chunk
        filled += sum(len(word) + 1 for word in chunk)
    return words


def build_messages(accounts: Sequence[Account], count: int, seed: int) -> list[Delivery]:
    """The whole run's messages, each for one randomly chosen user, sized to the mix above."""
    rng = random.Random(seed)
    vocabulary = Vocabulary(5_000, seed)
    deliveries = []
    for number in range(count):
        size = _target_size(rng)
        recipient = rng.choice(accounts).address
        subject = vocabulary.draw(rng, rng.randint(3, 8))
        attachment = None
        if rng.random() < ATTACHMENT_SHARE:
            text_length = max(200, size // 5)
            attachment = rng.randbytes(
                max(64, round((size - text_length - MULTIPART_OVERHEAD) * BASE64_INPUT_PER_OUTPUT))
            )
        else:
            text_length = max(200, size - PLAIN_OVERHEAD)
        raw = compose(number, recipient, subject, _words_filling(rng, vocabulary, text_length), attachment)
        deliveries.append(Delivery(recipient, lmtp_payload(raw), len(raw)))
    return deliveries


def describe_mix(deliveries: Sequence[Delivery]) -> None:
    sizes = [delivery.size for delivery in deliveries]
    with_attachment = sum(b"Content-Transfer-Encoding: base64" in delivery.payload for delivery in deliveries)
    print(
        f"  messages    {len(sizes)}, {sum(sizes) / MB:.1f} MB in all; size min {min(sizes)}, "
        f"median {statistics.median(sizes):.0f}, mean {statistics.mean(sizes):.0f}, "
        f"p90 {percentile(sizes, 0.9):.0f}, max {max(sizes)} bytes; "
        f"{with_attachment / len(sizes):.0%} with a base64 attachment",
        flush=True,
    )


@dataclass(frozen=True)
class ServerCpu:
    """CPU seconds (user + system) of the server so far: its event loop, its other threads, its child processes."""

    loop: float
    threads: float
    workers: float

    @property
    def total(self) -> float:
        return self.loop + self.threads + self.workers

    def __sub__(self, earlier: ServerCpu) -> ServerCpu:
        return ServerCpu(self.loop - earlier.loop, self.threads - earlier.threads, self.workers - earlier.workers)


def _stat(path: str) -> list[str]:
    """The fields of a /proc stat file after the command name, which may hold spaces."""
    return Path(path).read_text().rsplit(")", 1)[1].split()


def server_cpu(pid: int) -> ServerCpu:
    """From /proc: the main thread runs the event loop; children are the parse workers, live or reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    process, loop = _stat(f"/proc/{pid}/stat"), _stat(f"/proc/{pid}/task/{pid}/stat")
    loop_ticks = int(loop[11]) + int(loop[12])
    workers = int(process[13]) + int(process[14])
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            child = _stat(f"/proc/{entry.name}/stat")
        except OSError:
            continue  # gone meanwhile
        if int(child[1]) == pid:
            workers += sum(int(value) for value in child[11:15])
    return ServerCpu(loop_ticks / tick, (int(process[11]) + int(process[12]) - loop_ticks) / tick, workers / tick)


def report_delivery(report: DeliveryReport, count: int, cpu: ServerCpu) -> None:
    print("results")
    print(f"  250 replies         {report.accepted} of {count} messages")
    print(f"  delivered           {report.bytes / MB:.1f} MB in {report.elapsed:.2f} s")
    rate, volume = report.accepted / report.elapsed, report.bytes / MB / report.elapsed
    print(f"  throughput          {rate:.0f} messages/s, {volume:.2f} MB/s")
    latencies = report.latencies
    print(
        "  per message         "
        f"median {ms(statistics.median(latencies))}, p90 {ms(percentile(latencies, 0.9))}, "
        f"p99 {ms(percentile(latencies, 0.99))}, max {ms(max(latencies))} (MAIL FROM to the DATA reply)"
    )
    print(
        f"  server CPU          {cpu.total:.1f} s, {cpu.total / report.messages * 1000:.2f} ms per message, "
        f"{cpu.total / report.elapsed:.0%} of one core (steadier than rates when other jobs run)"
    )
    for name, seconds, what in (
        ("event loop", cpu.loop, "the one thread every connection shares"),
        ("other threads", cpu.threads, "SQLite writer and reader"),
        ("parse workers", cpu.workers, "child processes"),
    ):
        print(
            f"    {name:<17} {seconds / report.messages * 1000:.2f} ms per message, "
            f"{seconds / report.elapsed:4.0%} of one core ({what})"
        )
    for failure in report.failures:
        print(f"  FAILED              {failure}")


def run(args: argparse.Namespace) -> int:
    print_environment(
        "merganser LMTP delivery benchmark",
        args.storage,
        {
            "messages": args.messages,
            "connections": args.connections,
            "users": args.users,
            "seed": args.seed,
            "client": "asyncio LMTP, forked process, one command at a time per connection",
        },
    )
    with (
        tempfile.TemporaryDirectory(prefix="merganser-bench-") as tmp,
        running_server(Path(tmp), args.storage) as server,
    ):
        api = Api(server.http_port)
        try:
            accounts = create_accounts(api, "bench", args.users)
            deliveries = build_messages(accounts, args.messages, args.seed)
            describe_mix(deliveries)
            cpu_before = server_cpu(server.process.pid)
            report = deliver(server.lmtp_port, len(deliveries), deliveries.__getitem__, args.connections)
            cpu = server_cpu(server.process.pid) - cpu_before
            check_server_alive(server)
            report_delivery(report, len(deliveries), cpu)
            stored = sum(inbox_total(api, account) for account in accounts)
        finally:
            api.close()
    print(f"  REST check          {stored} messages in the {args.users} INBOXes, {report.accepted} delivered")
    print(f"  load                {load_average()} after the run")
    if report.accepted != len(deliveries) or stored != report.accepted:
        print("lmtp_delivery: not every message was delivered and stored", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--messages", type=int, default=5_000, help="messages to deliver (default 5000)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent LMTP connections (default 20)")
    parser.add_argument("--users", type=int, default=10, help="recipients the messages are spread over (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the message mix (default 1)")
    parser.add_argument("--storage", help="storage URL, e.g. mongodb://127.0.0.1:27017/bench (default: embedded)")
    args = parser.parse_args(argv)
    if min(args.messages, args.connections, args.users) < 1:
        parser.error("--messages, --connections and --users must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as error:
        print(f"lmtp_delivery: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
