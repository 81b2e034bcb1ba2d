"""The maildrop's quicker DATA reading and path parsing answer exactly as aiosmtpd's own.

Each case runs the same client bytes against aiosmtpd's stock ``LMTP`` and
against ``MaildropLMTP``, both with a handler that records what it is given,
and requires the same replies byte for byte and the same message contents.
The data is generated to hit every rule of the reading: transparency dots,
the end mark split across packets, lone CR and LF, lines around the length
limit and far over it, the size limit reached before or after a long line,
and commands sent right behind the end mark.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from merganser.protocols.lmtp import MaildropLMTP


class Recorder:
    """Accepts every message and keeps its content."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert envelope.original_content is not None
        self.contents.append(envelope.original_content)
        return "250 OK"


async def transcript(
    protocol: type[LMTP], chunks: Sequence[bytes], size_limit: int | None, pause: bool
) -> tuple[bytes, list[bytes]]:
    """Everything the server answers to ``chunks`` (sent in turn, then QUIT), and the contents it delivered."""
    recorder = Recorder()
    server = await asyncio.get_running_loop().create_server(
        lambda: protocol(recorder, data_size_limit=size_limit, enable_SMTPUTF8=True), "127.0.0.1", 0
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            writer.write(b"LHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            for chunk in [*chunks, b"QUIT\r\n"]:
                writer.write(chunk)
                await writer.drain()
                if pause:
                    await asyncio.sleep(0.001)
            replies = await asyncio.wait_for(reader.read(), 10)
        finally:
            # Closed even when a read failed, so that no client connection outlives the test.
            writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return replies, recorder.contents


async def assert_same(chunks: Sequence[bytes], size_limit: int | None = 100_000, pause: bool = False) -> None:
    expected = await transcript(LMTP, chunks, size_limit, pause)
    assert await transcript(MaildropLMTP, chunks, size_limit, pause) == expected


def without_crlf(data: bytes) -> bytes:
    while b"\r\n" in data:
        data = data.replace(b"\r\n", b"")
    return data


def random_line(rng: random.Random) -> bytes:
    """One line's content: never a CRLF, which would end it early."""
    kind = rng.random()
    if kind < 0.1:
        # Transparency dots, and a following line that starts with a dot as well.
        return without_crlf(b"." * rng.randint(1, 3) + rng.randbytes(rng.randint(0, 5)))
    if kind < 0.15:
        return b""
    if kind < 0.25:
        # Around the limit: 999 bytes of content plus CRLF make the longest legal line.
        return b"y" * rng.randint(996, 1004)
    if kind < 0.28:
        return b"z" * rng.randint(1005, 5000)
    if kind < 0.38:
        # Lone CR and LF are content, not line ends.
        return rng.choice([b"a\rb", b"a\nb", b"\r", b"\n", b"a\r", b"\na", b".\n.", b"x.\r"])
    return bytes(rng.choice(b"abc .\t") for _ in range(rng.randint(1, 80)))


def random_data(rng: random.Random) -> bytes:
    """DATA as a client sends it: lines, the end mark, sometimes a command right behind it.

    No line is the lone dot before the end: the rest would be taken for
    commands, and the server hangs up on so many bad ones.
    """
    lines = (random_line(rng) for _ in range(rng.randint(0, 60)))
    data = b"".join((b".." if line == b"." else line) + b"\r\n" for line in lines)
    data += b".\r\n"
    if rng.random() < 0.3:
        data += rng.choice([b"NOOP\r\n", b"RSET\r\n", b"MAIL FROM:<c@example.org>\r\n"])
    return data


def split(rng: random.Random, data: bytes) -> list[bytes]:
    """The data cut into packets at random places, now and then right inside the end mark."""
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 6)))) if len(data) > 1 else []
    end = data.find(b"\r\n.\r\n")
    if end > 0 and rng.random() < 0.3:
        cuts = sorted({*cuts, end + rng.randint(1, 4)})
    return [data[start:stop] for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("seed", range(40))
async def test_random_data_is_read_as_aiosmtpd_reads_it(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(8):
        data = random_data(rng)
        size_limit = rng.choice([None, 0, 50, 1_000, 3_000, 100_000])
        await assert_same(split(rng, data), size_limit, pause=rng.random() < 0.5)


@pytest.mark.parametrize(
    "data",
    [
        b".\r\n",
        b"..\r\n.\r\n",
        b"...\r\n..x\r\n.\r\n",
        b"a\r\n.\r\nNOOP\r\n",
        b"a\r\n.x\r\n.\r\n",
        b"a\r\n.\r",
        b"y" * 999 + b"\r\n.\r\n",
        b"." + b"y" * 999 + b"\r\n.\r\n",
        b"y" * 1000 + b"\r\n.\r\n",
        b"y" * 1001 + b"\r\n.\r\n",
        b"y" * 1002 + b"\r\n.\r\n",
        b"y" * 3000 + b".\r\n.\r\n",
        b"a\rb\nc\r\n\n.\r\n.\r\n",
    ],
)
async def test_edges_of_the_end_mark_and_line_limit(data: bytes) -> None:
    if not data.endswith(b".\r\n") and b"\r\n.\r\n" not in data:
        data += b"\n.\r\n"
    for size_limit in (None, 10, 1_000, 1_002, 100_000):
        await assert_same([data], size_limit)
        await assert_same([data[:1], data[1:]], size_limit, pause=True)


async def test_size_limit_reached_before_or_after_a_long_line() -> None:
    long_line = b"z" * 2000 + b"\r\n"
    short = b"x" * 98 + b"\r\n"
    for data in (short * 20 + long_line, long_line + short * 20, short * 9 + b"y" * 1000 + b"\r\n" + short):
        for size_limit in (500, 1_000, 1_101, 3_000, 5_000):
            await assert_same([data + b".\r\n"], size_limit)


async def test_a_large_message_in_many_packets() -> None:
    rng = random.Random(7)
    data = b"".join(bytes(rng.choice(b"abcdef .") for _ in range(76)) + b"\r\n" for _ in range(3000)) + b".\r\n"
    packets = [data[start : start + 1400] for start in range(0, len(data), 1400)]
    await assert_same(packets, 1_000_000, pause=False)
    await assert_same(packets, 100_000, pause=False)


PATHS = [
    "",
    "<>",
    "<a@example.com>",
    "<a.b+c@example.com> SIZE=1234",
    "<a@example.com>  SIZE=1234 BODY=8BITMIME",
    "<a@example.com>SIZE=1",
    "<a@example.com> (comment) SIZE=1",
    "<a@example.com> =?x?q?y?=",
    "<=?utf-8?q?a?=@example.com>",
    "<a=?b@example.com>",
    "<a..b@example.com>",
    "<.a@example.com>",
    "<a@example.com.>",
    "<a@[127.0.0.1]>",
    '<"a b"@example.com>',
    "<@relay.example:a@example.com>",
    "<a@b@example.com>",
    "<андрис@уайлддак.орг>",
    "a@example.com",
    "a@example.com SIZE=1",
    "<a@example.com",
    "<a(x)@example.com>",
    "<a@example.com> \tSIZE=1",
    "<x" * 30 + "@example.com>",
    "<" + "l" * 80 + "@example.com>",
]


def parsed_path(server: SMTP, arg: str) -> object:
    """What ``_getaddr`` returns, or the type of what it raises (aiosmtpd answers that with a 500)."""
    try:
        return server._getaddr(arg)
    except Exception as error:
        return type(error)


def test_plain_paths_parse_as_the_general_parser_parses_them() -> None:
    stock, quick = LMTP(Recorder()), MaildropLMTP(Recorder())
    rng = random.Random(3)
    alphabet = "ab.@<>=? ()\"'[]:-+_\t" + "x" * 10
    generated = ["<" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))) for _ in range(3000)]
    # Mostly plain paths, some with a character the quick way must leave to the general parser.
    atext = "abcXYZ09!#$%&'*+/=?^_`{|}~-..."
    for _ in range(3000):
        local = "".join(rng.choice(atext) for _ in range(rng.randint(1, 70)))
        domain = "".join(rng.choice("ab-.=?9") for _ in range(rng.randint(1, 12)))
        parameters = rng.choice(["", " SIZE=12", "  BODY=8BITMIME SIZE=3", " (x)", " =?a", "\tSIZE=1", " é"])
        generated.append(f"<{local}@{domain}>{parameters}")
    for local_part_limit in (0, 64):
        stock.local_part_limit = quick.local_part_limit = local_part_limit
        for arg in PATHS + generated:
            assert parsed_path(quick, arg) == parsed_path(stock, arg), arg
