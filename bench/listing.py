"""Message listing latency: does a page cost the same in a mailbox of 100,000 messages as in one of 100?

Keyset paging promises that it does, for the first page and for a page deep
down alike. Two users' INBOXes are filled over LMTP (by default 100,000 and
100 messages of ~1.2 KB), then, per mailbox, over one keep-alive connection:

* first page: ``GET …/messages?limit=20``, repeated ``--requests`` times;
* walk: from ``…/messages?limit=250`` follow ``next`` to the end, timing every
  hop and checking that the walk sees every message once, newest first;
* tail: take the request that returned the walk's next-to-last page, send it
  with ``limit=20`` instead and follow ``next`` (limit 20) to the end, timing
  every hop (up to 25 hops);
* last full page: the tail's last request that returned 20 messages (the
  very last page holds fewer when the count is not a multiple of 20),
  repeated ``--requests`` times.

Requests to the two mailboxes alternate, so drifts of the machine hit both
alike. Medians are compared as large/small ratios (target: at most 1.5). The
script only prints figures; it exits non-zero only when something broke.

Usage: python bench/listing.py [--large N] [--small N] [--requests R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from _common import (
    Account,
    Api,
    BenchError,
    Delivery,
    Vocabulary,
    create_accounts,
    fill,
    latency_summary,
    load_average,
    print_environment,
    running_server,
    small_delivery,
)

PAGE = 20
WALK_PAGE = 250  # the largest limit the API accepts
WARMUP = 10


@dataclass
class Figures:
    """Everything measured on one mailbox."""

    name: str
    account: Account
    messages: int
    first_page: list[float] = field(default_factory=list)
    walk_hops: list[float] = field(default_factory=list)
    tail_hops: list[float] = field(default_factory=list)
    last_page: list[float] = field(default_factory=list)
    last_url: str = ""
    final_items: int = 0

    @property
    def first_url(self) -> str:
        return f"/users/{self.account.id}/mailboxes/{self.account.inbox}/messages?limit={PAGE}"


def with_limit(url: str, limit: int) -> str:
    """The same listing request (cursor and all) asking for ``limit`` messages per page."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "limit"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("limit", str(limit))])))


def results_of(page: dict[str, object]) -> list[dict[str, object]]:
    results = page["results"]
    assert isinstance(results, list)
    return results


def walk(api: Api, start: str, figures: Figures) -> str:
    """Follow ``next`` from ``start`` at limit 250 to the end; return where the tail should start.

    That is the request of the page before the final one (or the only page),
    so the tail ends on at least one page of a full 20 even when the final
    page of 250 holds fewer than 20 messages.

    Checks on the way that the mailbox's messages each come exactly once, in
    descending UID order, and that ``total`` stays the number delivered.
    """
    url, seen, previous_uid = start, 0, None
    requested = []
    while True:
        requested.append(url)
        page, seconds = api.timed("GET", url)
        figures.walk_hops.append(seconds)
        uids = [item["uid"] for item in results_of(page)]
        if page["total"] != figures.messages or uids != sorted(uids, reverse=True):
            raise BenchError(f"{figures.name}: page {url} is out of order or has total {page['total']}")
        if previous_uid is not None and uids and uids[0] >= previous_uid:
            raise BenchError(f"{figures.name}: page {url} repeats messages")
        seen += len(uids)
        previous_uid = uids[-1] if uids else previous_uid
        following = page["next"]
        if not following:
            break
        url = str(following)
    if seen != figures.messages:
        raise BenchError(f"{figures.name}: walking the mailbox found {seen} messages, not {figures.messages}")
    return requested[-2] if len(requested) > 1 else requested[0]


def tail(api: Api, start: str, figures: Figures) -> None:
    """From ``start`` follow ``next`` at limit 20 to the end, remembering the deepest full page.

    The final page may hold fewer than 20 messages (100,000 leaves 10 on it);
    the last page of a full 20 is what gets compared, so both mailboxes'
    figures cover the same amount of work.
    """
    url = start
    while True:
        page, seconds = api.timed("GET", url)
        figures.tail_hops.append(seconds)
        items = len(results_of(page))
        if items == PAGE:
            figures.last_url = url
        following = page["next"]
        if not following:
            break
        url = str(following)
    figures.final_items = items
    if not figures.last_url:
        raise BenchError(f"{figures.name}: no page of {PAGE} messages at the end of the mailbox")


def repeat(api: Api, pairs: list[tuple[str, list[float]]], requests: int) -> None:
    """Time each URL ``requests`` times after a warm-up, alternating between them."""
    for _ in range(WARMUP):
        for url, _samples in pairs:
            api.timed("GET", url)
    for _ in range(requests):
        for url, samples in pairs:
            samples.append(api.timed("GET", url)[1])


def measure(api: Api, mailboxes: list[Figures], requests: int) -> None:
    repeat(api, [(figures.first_url, figures.first_page) for figures in mailboxes], requests)
    for figures in mailboxes:
        final = walk(api, with_limit(figures.first_url, WALK_PAGE), figures)
        tail(api, with_limit(final, PAGE), figures)
    repeat(api, [(figures.last_url, figures.last_page) for figures in mailboxes], requests)


def report(mailboxes: list[Figures]) -> None:
    print("results (latency from sending the request to the last body byte, one keep-alive connection)")
    for figures in mailboxes:
        print(f"  {figures.name} mailbox, {figures.messages} messages")
        rows = (
            (f"first page, limit {PAGE}", latency_summary(figures.first_page)),
            (f"walk to the end, limit {WALK_PAGE}", latency_summary(figures.walk_hops) + " per hop"),
            (f"tail to the end, limit {PAGE}", latency_summary(figures.tail_hops) + " per hop"),
            (
                f"last full page, limit {PAGE}",
                f"{latency_summary(figures.last_page)} (the final page holds {figures.final_items})",
            ),
        )
        for label, figure in rows:
            print(f"    {label:<28} {figure}")
    large, small = mailboxes
    print("  ratio large/small (medians; target at most 1.5)")
    for label, samples in (("first page", "first_page"), ("last full page", "last_page")):
        ratio = statistics.median(getattr(large, samples)) / statistics.median(getattr(small, samples))
        print(f"    {label:<15} {ratio:5.2f}x")
    print(f"  load        {load_average()} after the run")


def run(args: argparse.Namespace) -> None:
    print_environment(
        "merganser message listing benchmark: GET /users/{id}/mailboxes/{mailbox}/messages",
        args.storage,
        {
            "large": args.large,
            "small": args.small,
            "requests": args.requests,
            "page": PAGE,
            "walk page": WALK_PAGE,
            "fill connections": args.connections,
            "seed": args.seed,
        },
    )
    vocabulary = Vocabulary(5_000, args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="merganser-bench-") as tmp,
        running_server(Path(tmp), args.storage) as server,
    ):
        api = Api(server.http_port)
        try:
            (large,) = create_accounts(api, "large", 1)
            (small,) = create_accounts(api, "small", 1)

            def source(number: int) -> Delivery:
                account = small if number < args.small else large
                return small_delivery(vocabulary, args.seed, number, account.address)

            fill(server, source, args.small + args.large, args.connections)
            mailboxes = [Figures("large", large, args.large), Figures("small", small, args.small)]
            measure(api, mailboxes, args.requests)
        finally:
            api.close()
    report(mailboxes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--large", type=int, default=100_000, help="messages in the large mailbox (default 100000)")
    parser.add_argument("--small", type=int, default=100, help="messages in the small mailbox (default 100)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page and mailbox (default 200)")
    parser.add_argument("--connections", type=int, default=16, help="LMTP connections for the fill (default 16)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the message contents (default 1)")
    parser.add_argument("--storage", help="storage URL, e.g. mongodb://127.0.0.1:27017/bench (default: embedded)")
    args = parser.parse_args(argv)
    if min(args.large, args.small, args.requests, args.connections) < 1:
        parser.error("--large, --small, --requests and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except BenchError as error:
        print(f"listing: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
