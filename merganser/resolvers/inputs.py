"""Typed input models and the one place that turns bad input into clear errors.

Models are strict: a JSON body must carry the declared types (a quota of
``"1024"`` is refused, not coerced) and unknown fields are refused, so a typo
in a field name fails loudly instead of being silently ignored. Query strings
are text by nature, so they are parsed leniently (``limit=20`` is a number).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Self

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from merganser.errors import ValidationError


def _field_path(location: tuple[int | str, ...]) -> str:
    """The field a pydantic error location names, without union member tags."""
    path = [str(location[0])] if location else []
    path += [str(part) for part in location[1:] if isinstance(part, int)]
    return ".".join(path)


def _error_text(error: pydantic.ValidationError) -> str:
    """One message per offending field; a failed custom check beats union noise."""
    messages: dict[str, str] = {}
    for item in error.errors(include_url=False, include_input=False):
        field = _field_path(item["loc"])
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "value_error":
            message = str(item["ctx"]["error"]) if "ctx" in item else item["msg"]
        else:
            message = item["msg"]
        if field not in messages or item["type"] == "value_error":
            messages[field] = message
    return "; ".join(f"{field}: {message}" if field else message for field, message in messages.items())


class Input(BaseModel):
    """Base of every input model."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Validate a decoded JSON document (or GraphQL input) strictly."""
        if not isinstance(data, Mapping):
            raise ValidationError("Expected a JSON object")
        return cls._validate(data, strict=True)

    @classmethod
    def from_query(cls, data: Mapping[str, str]) -> Self:
        """Validate query-string parameters, converting text to the declared types."""
        return cls._validate(dict(data), strict=False)

    @classmethod
    def _validate(cls, data: Mapping[str, Any], strict: bool) -> Self:
        try:
            return cls.model_validate(data, strict=strict)
        except pydantic.ValidationError as error:
            raise ValidationError(_error_text(error)) from None


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("not a valid IP address") from None


IP = Annotated[str, Field(max_length=64), AfterValidator(_check_ip)]
Password = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(max_length=256)]
Count = Annotated[int, Field(ge=0, le=2**53)]


def with_default_ip(model: type[Input], data: Any, remote: str | None) -> Any:
    """Default the client IP of logged actions to the connecting address.

    ``ip`` in a request is the client the calling application reports; when
    it reports none, the address the request came from is logged instead.
    """
    if "ip" in model.model_fields and isinstance(data, Mapping) and "ip" not in data and remote:
        return {**data, "ip": remote}
    return data


class Empty(Input):
    """For requests that take no parameters: anything sent is refused."""


MAX_PAGE_SIZE = 250
DEFAULT_PAGE_SIZE = 20


class Paging(Input):
    """The listing parameters shared by every paged listing."""

    limit: Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE
    page: Annotated[int, Field(ge=1, le=2**31)] = 1
    next: Annotated[str, Field(max_length=512)] | None = None
    previous: Annotated[str, Field(max_length=512)] | None = None
