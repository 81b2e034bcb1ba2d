"""Who may use the API at all: the shared access token.

Every front end (REST, GraphQL over HTTP and over WebSockets) asks this one
question, so a configured token guards them all the same way.
"""

from __future__ import annotations

import hmac


def token_accepted(expected: str | None, given: str | None) -> bool:
    """True when no token is configured, or when ``given`` is that token.

    The comparison takes the same time wherever the two differ, so response
    timing does not reveal how much of a guess was right.
    """
    if not expected:
        return True
    return hmac.compare_digest((given or "").encode(), expected.encode())
