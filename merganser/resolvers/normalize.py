"""Normalization of email addresses.

An address is stored twice: as the user wrote it (with the domain in Unicode
and lower case) for display, and as ``addrview``, the case-folded form used for
uniqueness and for looking up recipients. Internationalized addresses such as
``андрис@уайлддак.орг`` and their punycode spelling share one ``addrview``.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import email_validator

from merganser.errors import ValidationError

# Mail servers are routinely run for internal names such as "localhost" (the
# default domain) or "example.test"; the validator refuses those by default.
for _name in ("localhost", "local", "test"):
    if _name in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(_name)


@dataclass(frozen=True, slots=True)
class NormalizedAddress:
    display: str
    addrview: str


def normalize_address(value: str) -> NormalizedAddress:
    """Validate an address and return its display and lookup forms."""
    if len(value) > 320:
        raise ValidationError("Invalid email address: longer than 320 characters")
    try:
        checked = email_validator.validate_email(
            value.strip(), check_deliverability=False, globally_deliverable=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as error:
        raise ValidationError(f"Invalid email address {value!r}: {error}") from None
    local = unicodedata.normalize("NFC", checked.local_part)
    display = f"{local}@{checked.domain}"
    return NormalizedAddress(display=display, addrview=display.casefold())
