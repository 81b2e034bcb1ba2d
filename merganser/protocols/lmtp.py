"""The LMTP maildrop (RFC 2033) on aiosmtpd's protocol implementation.

An MTA hands mail over here. Unknown or disabled recipients are refused at
RCPT time with 550. After DATA each accepted recipient gets its own status
line, in RCPT order, and 250 is only sent once that recipient's copy is
durably committed: 552 when the copy would exceed the user's quota, 451 when
storage failed (the MTA keeps the message and retries). The message is parsed
once, in a worker process when the pool has one, and stored once per
recipient.

Two of aiosmtpd's steps are replaced by quicker ones that answer exactly the
same: DATA is read in blocks rather than line by line, and the common plain
form of a MAIL or RCPT path (``<local@domain>``) is taken apart without the
general RFC 5322 address parser.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from merganser.errors import NotAllowedError, NotFoundError, QuotaExceededError
from merganser.resolvers import messages
from merganser.resolvers.context import Core
from merganser.resolvers.parse_pool import ParsePool
from merganser.resolvers.parsing import DOT_ATOM_ADDRESS

log = logging.getLogger("merganser.lmtp")

IDENT = "merganser LMTP"

# "<local@domain>" with dot-atoms of ASCII only, then nothing or parameters
# starting with a letter or digit. For exactly these the general parser's
# answer is the text between the brackets and the parameters as they are;
# "=?" is left to it because it would try to decode an encoded word there.
_PLAIN_PATH = re.compile(rf"<(?!.*=\?)({DOT_ATOM_ADDRESS})>(?: +([A-Za-z0-9][!-~ ]*))?")
_END_OF_DATA = b".\r\n"


class _DataState(enum.Enum):
    NOMINAL = enum.auto()
    TOO_LONG = enum.auto()
    TOO_MUCH = enum.auto()


class _DataBlocks:
    """Message data as it arrives in blocks, checked as aiosmtpd checks it line by line.

    aiosmtpd reads each line with a 1001-byte limit. A line whose content is
    longer than that makes the message too long; otherwise the line is
    counted, and the message is too much once the count passes the size limit,
    or too long if the line with its CRLF is over 1001 bytes. Whichever
    happens first decides the reply, and from then on data is only read and
    dropped. Here the same test runs over every complete line of a block at
    once, and line by line only in a block where something is wrong.
    """

    def __init__(self, size_limit: int | None, line_limit: int) -> None:
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.state = _DataState.NOMINAL
        self.blocks: list[bytes] = []
        self.counted = 0
        # The end of the last complete line so far, and the incomplete line after it.
        self.tail = b"\r\n"
        self.partial = b""

    def ends(self, block: bytes) -> bool:
        """Whether a block ending in ".CRLF" ends the data: only when that dot starts a line."""
        return (self.tail + block)[-5:-3] == b"\r\n"

    def add(self, block: bytes) -> None:
        if block:
            self.tail = (self.tail + block)[-2:]
        if self.state is not _DataState.NOMINAL:
            return
        data = self.partial + block
        end = data.rfind(b"\r\n")
        if end < 0:
            self.partial = data
        else:
            self.partial = data[end + 2 :]
            self._check(data[: end + 2])
        # A line not yet ended is already too long once its content passes the limit.
        if self.state is _DataState.NOMINAL and len(self.partial.removesuffix(b"\r")) > self.line_limit:
            self.state = _DataState.TOO_LONG
        if self.state is _DataState.NOMINAL:
            self.blocks.append(block)
        else:
            self.blocks.clear()

    def _check(self, lines: bytes) -> None:
        """Count complete lines (each ending in CRLF) and find the first thing wrong with them, if any."""
        contents = lines.split(b"\r\n")[:-1]
        longest = max(map(len, contents))
        size_limit = self.size_limit
        if longest + 2 <= self.line_limit and not (size_limit and self.counted + len(lines) > size_limit):
            self.counted += len(lines)
            return
        for content in contents:
            length = len(content) + 2
            if len(content) > self.line_limit:
                self.state = _DataState.TOO_LONG
                return
            self.counted += length
            if size_limit and self.counted > size_limit:
                self.state = _DataState.TOO_MUCH
                return
            if length > self.line_limit:
                self.state = _DataState.TOO_LONG
                return

    def content(self) -> bytes:
        """The message with the transparency dots of RFC 5321 section 4.5.2 removed."""
        data = b"".join(self.blocks)
        return (data[1:] if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n")


class MaildropLMTP(LMTP):
    """aiosmtpd's LMTP with quicker DATA reading and path parsing; every reply stays the same."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        plain = _PLAIN_PATH.fullmatch(arg) if arg else None
        if plain is None:
            return super()._getaddr(arg)
        address, parameters = plain.group(1), plain.group(2) or ""
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, parameters

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA command, reading the data in blocks rather than line by line.

        A block ends at the next ".CRLF", or wherever the stream reader, which
        looks no further than its one-line limit, reports that the end cannot
        be; either way it takes one call. The checks, the replies and what the
        handler gets are aiosmtpd's.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = _DataBlocks(self.data_size_limit, self.line_length_limit)
        try:
            while True:
                try:
                    block = await self._reader.readuntil(_END_OF_DATA)
                except asyncio.LimitOverrunError as error:
                    # Nothing up to error.consumed can start the end: take it as data.
                    data.add(await self._reader.readexactly(error.consumed))
                    continue
                if data.ends(block):
                    data.add(block[: -len(_END_OF_DATA)])
                    break
                data.add(block)
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if data.state is not _DataState.NOMINAL:
            if data.state is _DataState.TOO_LONG:
                await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            else:
                await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        content = data.content()
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)


class DeliveryHandler:
    """aiosmtpd hooks that hand recipients and messages to the core."""

    def __init__(self, core: Core, parsers: ParsePool) -> None:
        self.core = core
        self.parsers = parsers

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        status = await self._check(address)
        if status.startswith("250"):
            envelope.rcpt_tos.append(address)
        return status

    async def _check(self, address: str) -> str:
        try:
            await messages.resolve_recipient(self.core, address)
        except NotFoundError:
            return f"550 5.1.1 <{address}>: no such user here"
        except NotAllowedError:
            return f"550 5.2.1 <{address}>: mailbox disabled"
        except Exception:
            log.exception("recipient lookup for %s failed", address)
            return f"451 4.3.0 <{address}>: temporary failure, try again later"
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        prepared = await messages.prepare(raw, self.parsers)
        sender = envelope.mail_from or ""
        statuses = await asyncio.gather(*(self._deliver(address, prepared, sender) for address in envelope.rcpt_tos))
        for status in statuses[:-1]:
            await server.push(status)
        return statuses[-1]

    async def _deliver(self, address: str, prepared: messages.Prepared, sender: str) -> str:
        try:
            user = await messages.resolve_recipient(self.core, address)
            stored = await messages.deliver(self.core, user, address, prepared, sender)
        except QuotaExceededError:
            return f"552 5.2.2 <{address}>: mailbox full"
        except NotFoundError:
            return f"550 5.1.1 <{address}>: no such user here"
        except NotAllowedError:
            return f"550 5.2.1 <{address}>: mailbox disabled"
        except Exception:
            log.exception("delivery to %s failed", address)
            return f"451 4.3.0 <{address}>: temporary failure, try again later"
        return f"250 2.0.0 <{address}> delivered as {stored.id}"


async def start_lmtp(core: Core, parsers: ParsePool) -> asyncio.Server:
    """Listen for LMTP on the configured address, parsing incoming mail with ``parsers``."""
    settings = core.settings
    handler = DeliveryHandler(core, parsers)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: MaildropLMTP(
            handler,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.domain,
            ident=IDENT,
        ),
        settings.lmtp_host,
        settings.lmtp_port,
    )
