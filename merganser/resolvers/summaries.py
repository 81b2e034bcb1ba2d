"""How front ends show stored values: times, and a message's date and flags.

Every front end shows these the same way; the rules for that live here
rather than in each of them.
"""

from __future__ import annotations

from datetime import datetime

from merganser.resolvers.messages import FLAGS
from merganser.storage.base import Message


def timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds (``2017-07-24T17:23:59.041Z``), as the reference shows dates."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def sent_date(message: Message) -> datetime:
    """The Date header when it parsed, else the time the message arrived."""
    sent = message.summary.get("date")
    return datetime.fromisoformat(sent) if sent else message.idate


def flag_states(message: Message) -> dict[str, bool]:
    """``seen``, ``flagged``, ``draft`` and ``deleted``: whether the message has each flag."""
    return {name: flag in message.flags for name, flag in FLAGS.items()}
