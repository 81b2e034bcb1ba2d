"""Errors raised by the core.

Every rule violation the core detects is one of these classes. Each carries a
stable machine-readable ``code`` and a human message; the front ends decide how
to present them (an HTTP status and ``{"error", "code"}`` body for REST, a
GraphQL error for GraphQL, a reply code for protocols). Keeping transport
details out of here is what lets every front end share the same rules.
"""

from __future__ import annotations


class MerganserError(Exception):
    """Base class of every error the core reports to a client."""

    code: str = "ServerError"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ValidationError(MerganserError):
    """The input is malformed, of the wrong type, or outside its allowed range."""

    code = "InputValidationError"


class NotFoundError(MerganserError):
    """The addressed resource does not exist (or belongs to someone else)."""

    code = "NotFound"


class ConflictError(MerganserError):
    """The request would break a uniqueness rule (username, address, path)."""

    code = "AlreadyExists"


class NotAllowedError(MerganserError):
    """The request is well formed but the rules forbid it (e.g. deleting INBOX)."""

    code = "NotAllowed"


class AuthenticationError(MerganserError):
    """Credentials, a 2FA token or an existing password did not verify."""

    code = "AuthFailed"


class RateLimitedError(MerganserError):
    """Too many failed attempts; the caller must wait before trying again."""

    code = "RateLimited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceededError(MerganserError):
    """Storing the data would take the user over the allowed quota."""

    code = "OverQuota"


class UnavailableError(MerganserError):
    """The server cannot take the request now (it is shutting down); trying again later may work."""

    code = "Unavailable"
