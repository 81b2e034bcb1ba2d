"""Opaque cursors over keyset pages.

A cursor names the edge record of a page and the direction to travel from it,
so following ``next`` after rows were added elsewhere neither repeats nor skips
rows. Cursors are URL-safe base64 of a tiny JSON document; clients must treat
them as opaque.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from merganser.errors import ValidationError
from merganser.resolvers.ids import check_id
from merganser.resolvers.inputs import Paging
from merganser.storage.base import PageQuery, Slice

T = TypeVar("T")


Key = str | int


@dataclass(slots=True)
class PageResult(Generic[T]):
    """A page with the cursors of its neighbours; ``keys`` and ``listing`` give each item's own cursor."""

    items: list[T]
    total: int
    page: int
    next: str | None
    previous: str | None
    listing: str = ""
    keys: list[Key] = field(default_factory=list)

    def cursor(self, index: int) -> str:
        """The cursor that, given as ``next``, continues the listing after item ``index``.

        Cursor-based clients (GraphQL connections) hand out one per item.
        """
        return encode_cursor(self.listing, "next", self.keys[index])


def encode_cursor(listing: str, direction: str, key: Key) -> str:
    raw = json.dumps({"l": listing, "d": direction, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _check_key(key: object, numeric: bool | None) -> Key:
    """Keys are record ids, or non-negative integers (UIDs) where ``numeric``;
    ``numeric=None`` accepts either (the storage backend chose)."""
    if numeric is not False and isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 2**63:
        return key
    if numeric is not True and isinstance(key, str):
        return check_id(key, "cursor")
    raise ValueError(key)


def decode_cursor(cursor: str, listing: str, expected: str, numeric: bool | None = False) -> Key:
    """Return the key of a cursor, refusing anything this module did not make
    and cursors made for another listing."""
    try:
        document = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if document["l"] != listing or document["d"] != expected:
            raise ValueError(document)
        return _check_key(document["k"], numeric)
    except (ValueError, KeyError, TypeError, binascii.Error, ValidationError, UnicodeDecodeError):
        raise ValidationError("Invalid paging cursor") from None


def page_query(paging: Paging, listing: str, descending: bool = False, numeric: bool | None = False) -> PageQuery:
    if paging.next and paging.previous:
        raise ValidationError("Give either next or previous, not both")
    return PageQuery(
        limit=paging.limit,
        after=decode_cursor(paging.next, listing, "next", numeric) if paging.next else None,
        before=decode_cursor(paging.previous, listing, "previous", numeric) if paging.previous else None,
        descending=descending,
    )


async def paginate(
    listing: str,
    paging: Paging,
    fetch: Callable[[PageQuery], Awaitable[Slice[T]]],
    key: Callable[[T], Key],
    descending: bool = False,
    numeric: bool | None = False,
) -> PageResult[T]:
    """Fetch one page and work out the cursors of its neighbours.

    ``listing`` names the listing; its cursors work for it alone. ``numeric``
    says the listing is keyed by integers (UIDs) rather than ids; None leaves
    it to the storage, which then returns the keys with the page.
    """
    query = page_query(paging, listing, descending, numeric)
    return page_result(listing, paging, query, await fetch(query), key)


def page_result(
    listing: str, paging: Paging, query: PageQuery, found: Slice[T], key: Callable[[T], Key]
) -> PageResult[T]:
    """The page ``query`` (made by ``page_query``) found, with the cursors of its neighbours.

    Split from ``paginate`` for callers that fetch the pages of several
    listings in one storage call.
    """
    items = found.items
    keys = found.keys if found.keys is not None else [key(item) for item in items]
    if query.before is not None:
        has_previous, has_next = found.more, True
    else:
        has_previous, has_next = query.after is not None, found.more
    next_cursor = previous_cursor = None
    if has_next:
        edge = keys[-1] if keys else query.before
        next_cursor = encode_cursor(listing, "next", edge) if edge else None
    if has_previous:
        edge = keys[0] if keys else query.after
        previous_cursor = encode_cursor(listing, "previous", edge) if edge else None
    return PageResult(items, found.total, paging.page, next_cursor, previous_cursor, listing, keys)
