"""How failures reach a GraphQL client: a message and ``extensions.code``, never a traceback.

* The core's errors (``MerganserError``: not found, invalid input, not
  allowed, rate limited…) keep their message and code, the same as REST's
  ``{"error", "code"}``; a rate limit adds ``retryAfter`` (seconds) and a
  dropped subscription ``since``, the id to resume from.
* GraphQL's own errors (syntax, unknown fields, wrong variable types) and the
  query limits keep their message, with ``GraphQLParseFailed``,
  ``GraphQLValidationFailed`` or the limit's code; a request that cannot run
  at all (an operation of a kind not allowed there) is ``BadRequest``.
* Anything else is a fault of the server: it is logged with its traceback and
  the client sees only ``Internal server error`` (``InternalError``), so no
  detail of the server (or a secret in an exception's text) leaks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.exceptions import MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from merganser.errors import MerganserError, RateLimitedError
from merganser.resolvers.hub import SubscriberTooSlow

log = logging.getLogger("merganser.graphql")

INTERNAL = "Internal server error"
# Strawberry's refusals of a request as a whole (no query, an operation of a kind not allowed there).
REQUEST_ERRORS = (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)


def present(error: GraphQLError) -> GraphQLError:
    """The error as the client may see it (see the module docstring)."""
    original = error.original_error
    if isinstance(original, MerganserError):
        return _replaced(error, original.message, _extensions(original))
    if isinstance(original, REQUEST_ERRORS):
        return _replaced(error, error.message, {"code": "BadRequest"})
    if original is None or isinstance(original, GraphQLError):
        if not (error.extensions or {}).get("code"):
            code = "GraphQLParseFailed" if isinstance(error, GraphQLSyntaxError) else "GraphQLValidationFailed"
            error.extensions = {**(error.extensions or {}), "code": code}
        return error
    log.error(
        "unexpected error resolving %s",
        ".".join(map(str, error.path or ())) or "a GraphQL operation",
        exc_info=original,
    )
    return _replaced(error, INTERNAL, {"code": "InternalError"})


def present_all(errors: Iterable[GraphQLError] | None) -> list[GraphQLError] | None:
    return [present(error) for error in errors] if errors else None


def _extensions(error: MerganserError) -> dict[str, Any]:
    extensions: dict[str, Any] = {"code": error.code}
    if isinstance(error, RateLimitedError):
        extensions["retryAfter"] = error.retry_after
    elif isinstance(error, SubscriberTooSlow):
        extensions["since"] = error.last_id
    return extensions


def _replaced(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    """A new error at the same place, without the original exception."""
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        extensions=extensions,
    )
