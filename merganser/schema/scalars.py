"""Scalars beyond GraphQL's own: 64-bit integers and dates.

GraphQL's ``Int`` is 32 bits, too small for quotas and byte counts (a 5 GiB
quota) or retention times in milliseconds, so those are ``Long``: integers up
to 2^53, which JSON parsers of every language read exactly. Dates are
``DateTime``: ISO 8601 in UTC with milliseconds, as REST shows them. As input a
``DateTime`` is also a millisecond timestamp; it reaches the core as given,
which parses it by the same rules as REST's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NewType

import strawberry
from graphql import GraphQLError, IntValueNode, StringValueNode, ValueNode

from merganser.resolvers.summaries import timestamp

Long = NewType("Long", int)
DateTime = NewType("DateTime", datetime)
DateTimeInput = NewType("DateTimeInput", object)
"""What a client sent for a ``DateTime``: text or a millisecond timestamp, checked by the core."""

LONG_LIMIT = 2**53


def _long(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and -LONG_LIMIT <= value <= LONG_LIMIT:
        return value
    raise GraphQLError(f"Long cannot represent {value!r}: expected an integer of at most 2^53")


def _long_literal(node: ValueNode, _variables: dict[str, Any] | None = None) -> int:
    if isinstance(node, IntValueNode):
        return _long(int(node.value))
    raise GraphQLError("Long cannot represent a non-integer value")


def _date_input(value: Any) -> str | int:
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise GraphQLError("DateTime expects an ISO 8601 date or a timestamp in milliseconds")


def _date_literal(node: ValueNode, _variables: dict[str, Any] | None = None) -> str | int:
    if isinstance(node, StringValueNode):
        return node.value
    if isinstance(node, IntValueNode):
        return int(node.value)
    raise GraphQLError("DateTime expects an ISO 8601 date or a timestamp in milliseconds")


_LONG = strawberry.scalar(
    name="Long",
    description=f"An integer of at most 2^53 ({LONG_LIMIT}): byte counts, quotas, milliseconds.",
    serialize=_long,
    parse_value=_long,
    parse_literal=_long_literal,
)
_DATE_TIME = strawberry.scalar(
    name="DateTime",
    description="A date: ISO 8601 in UTC with milliseconds. Input also accepts a timestamp in milliseconds.",
    serialize=timestamp,
    parse_value=_date_input,
    parse_literal=_date_literal,
)

SCALARS = {Long: _LONG, DateTime: _DATE_TIME, DateTimeInput: _DATE_TIME}
