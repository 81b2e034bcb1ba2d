"""What listings show of a stored message, derived from its summary and flags.

Every front end shows a message's date and flag states the same way; the
rules for that live here rather than in each of them.
"""

from __future__ import annotations

from datetime import datetime

from merganser.resolvers.messages import FLAGS
from merganser.storage.base import Message


def sent_date(message: Message) -> datetime:
    """The Date header when it parsed, else the time the message arrived."""
    sent = message.summary.get("date")
    return datetime.fromisoformat(sent) if sent else message.idate


def flag_states(message: Message) -> dict[str, bool]:
    """``seen``, ``flagged``, ``draft`` and ``deleted``: whether the message has each flag."""
    return {name: flag in message.flags for name, flag in FLAGS.items()}
