"""The LMTP maildrop (RFC 2033) on aiosmtpd's protocol implementation.

An MTA hands mail over here. Unknown or disabled recipients are refused at
RCPT time with 550. After DATA each accepted recipient gets its own status
line, in RCPT order, and 250 is only sent once that recipient's copy is
durably committed: 552 when the copy would exceed the user's quota, 451 when
storage failed (the MTA keeps the message and retries). The message is parsed
once and stored once per recipient.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from merganser.errors import NotAllowedError, NotFoundError, QuotaExceededError
from merganser.resolvers import messages
from merganser.resolvers.context import Core

log = logging.getLogger("merganser.lmtp")

IDENT = "merganser LMTP"


class DeliveryHandler:
    """aiosmtpd hooks that hand recipients and messages to the core."""

    def __init__(self, core: Core) -> None:
        self.core = core

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
        prepared = await messages.prepare(raw)
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


async def start_lmtp(core: Core) -> asyncio.Server:
    """Listen for LMTP on the configured address."""
    settings = core.settings
    handler = DeliveryHandler(core)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: LMTP(
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
