"""Record identifiers: 24-hex-digit ObjectIds, ordered by creation time.

Time ordering is what makes keyset paging by id stable while rows are added.
"""

from __future__ import annotations

import re

from bson import ObjectId

from merganser.errors import ValidationError

_ID = re.compile(r"[0-9a-f]{24}")


def new_id() -> str:
    return str(ObjectId())


def check_id(value: str, what: str) -> str:
    """Refuse anything that is not an id before it reaches storage."""
    if not _ID.fullmatch(value):
        raise ValidationError(f"Invalid {what} id {value!r}: expected 24 hexadecimal characters")
    return value
