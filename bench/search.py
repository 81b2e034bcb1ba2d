"""One-word search latency over one user's 100,000 messages, for words of every frequency.

Message words are drawn from a made-up vocabulary with Zipf frequencies, so a
word's rank fixes roughly how many messages contain it. The queries are
words at ranks spread evenly on a log scale from the most common (in nearly
every message) to the rarest (in a few dozen), so the figures show how search
cost grows with the number of hits. Every word's hit count is recomputed from
the generator and must equal the ``total`` the API reports.

Each query is ``GET /users/{id}/search?query=WORD`` (first page, 20 results)
over one keep-alive connection: one unmeasured round of every query, then
``--repeats`` rounds in a rotating order. The script only prints figures; it
exits non-zero only when something broke (an error answer, a wrong count).

Usage: python bench/search.py [--messages N] [--queries Q] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from _common import (
    Api,
    BenchError,
    Delivery,
    Vocabulary,
    create_accounts,
    fill,
    load_average,
    ms,
    print_environment,
    running_server,
    small_delivery,
    small_words,
)

VOCABULARY_SIZE = 20_000


def query_ranks(queries: int, size: int) -> list[int]:
    """``queries`` distinct ranks from 1 to ``size``, evenly spaced on a log scale."""
    ranks: list[int] = []
    for step in range(queries):
        ideal = round(size ** (step / max(queries - 1, 1)))
        ranks.append(max(ideal, ranks[-1] + 1 if ranks else 1))
    return ranks


def expected_hits(vocabulary: Vocabulary, seed: int, messages: int, words: set[str]) -> Counter[str]:
    """How many messages have each word in subject or body, from the generator's own draws."""
    hits: Counter[str] = Counter()
    for number in range(messages):
        subject, body = small_words(vocabulary, seed, number)
        hits.update(words.intersection(subject).union(words.intersection(body)))
    return hits


def measure(api: Api, user_id: str, words: list[str], repeats: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Latency samples and the reported hit count per word."""
    samples: dict[str, list[float]] = {word: [] for word in words}
    totals: dict[str, int] = {}
    for word in words:
        page, _ = api.timed("GET", f"/users/{user_id}/search?query={word}")
        total = page["total"]
        assert isinstance(total, int)
        totals[word] = total
    for round_number in range(repeats):
        shift = round_number % len(words)
        for word in words[shift:] + words[:shift]:
            samples[word].append(api.timed("GET", f"/users/{user_id}/search?query={word}")[1])
    return samples, totals


def report(
    ranks: list[int],
    words: list[str],
    samples: dict[str, list[float]],
    totals: dict[str, int],
    expected: Counter[str],
) -> list[str]:
    """Print the table; return the words whose reported count is wrong."""
    print("results (latency from sending the request to the last body byte, one keep-alive connection)")
    print(f"  {'rank':>6}  {'word':<10} {'hits':>7}  {'median':>11}  {'min':>11}  {'max':>11}")
    wrong = []
    for rank, word in zip(ranks, words, strict=True):
        times = samples[word]
        mark = "" if totals[word] == expected[word] else f"  WRONG: {expected[word]} messages contain it"
        if mark:
            wrong.append(word)
        print(
            f"  {rank:>6}  {word:<10} {totals[word]:>7}  {ms(statistics.median(times))}  "
            f"{ms(min(times))}  {ms(max(times))}{mark}"
        )
    medians = [statistics.median(samples[word]) for word in words]
    print(f"  median across the {len(words)} queries' medians: {ms(statistics.median(medians)).strip()}")
    print(f"  load        {load_average()} after the run")
    return wrong


def run(args: argparse.Namespace) -> int:
    print_environment(
        "merganser search benchmark: GET /users/{id}/search?query=WORD",
        args.storage,
        {
            "messages": args.messages,
            "queries": args.queries,
            "repeats": args.repeats,
            "vocabulary": f"{VOCABULARY_SIZE} words, Zipf",
            "fill connections": args.connections,
            "seed": args.seed,
        },
    )
    vocabulary = Vocabulary(VOCABULARY_SIZE, args.seed)
    ranks = query_ranks(args.queries, VOCABULARY_SIZE)
    words = [vocabulary.ranked(rank) for rank in ranks]
    expected = expected_hits(vocabulary, args.seed, args.messages, set(words))
    with (
        tempfile.TemporaryDirectory(prefix="merganser-bench-") as tmp,
        running_server(Path(tmp), args.storage) as server,
    ):
        api = Api(server.http_port)
        try:
            (account,) = create_accounts(api, "searcher", 1)

            def source(number: int) -> Delivery:
                return small_delivery(vocabulary, args.seed, number, account.address)

            fill(server, source, args.messages, args.connections)
            samples, totals = measure(api, account.id, words, args.repeats)
        finally:
            api.close()
    wrong = report(ranks, words, samples, totals, expected)
    if wrong:
        print(f"search: wrong hit counts for {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages of the user (default 100000)")
    parser.add_argument("--queries", type=int, default=20, help="different one-word queries (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of every query (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="LMTP connections for the fill (default 16)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the message contents (default 1)")
    parser.add_argument("--storage", help="storage URL, e.g. mongodb://127.0.0.1:27017/bench (default: embedded)")
    args = parser.parse_args(argv)
    if min(args.messages, args.queries, args.repeats, args.connections) < 1:
        parser.error("--messages, --queries, --repeats and --connections must be positive")
    if args.queries > VOCABULARY_SIZE:
        parser.error(f"--queries can be at most {VOCABULARY_SIZE}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as error:
        print(f"search: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
