"""Email addresses of users: uniqueness and the main-address rule.

A user's main address is the one recorded on the user; the flag is derived
from that, so moving it is a single atomic write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from merganser.errors import ConflictError, NotAllowedError, NotFoundError, ValidationError
from merganser.resolvers.context import Core
from merganser.resolvers.ids import check_id, new_id
from merganser.resolvers.inputs import Input, Paging
from merganser.resolvers.lookup import get_user
from merganser.resolvers.normalize import normalize_address
from merganser.resolvers.paging import PageResult, paginate
from merganser.storage.base import Address, DuplicateKeyError, User


@dataclass(frozen=True, slots=True)
class AddressView:
    """An address with the flag saying whether it is its user's main one."""

    address: Address
    main: bool


def address_view(address: Address, user: User) -> AddressView:
    """An address with its flag: the main address is the one recorded on its user."""
    return AddressView(address, address.address == user.address)


class ListAddresses(Paging):
    query: str | None = None


class CreateAddress(Input):
    address: str
    main: bool = False


class UpdateAddress(Input):
    main: bool


async def search_addresses(core: Core, data: ListAddresses) -> PageResult[Address]:
    query = data.query.strip().casefold() if data.query else None
    return await paginate(
        "addresses", data, lambda page: core.storage.search_addresses(query, page), lambda item: item.id
    )


async def list_user_addresses(core: Core, user_id: str) -> list[AddressView]:
    user = await get_user(core, user_id)
    addresses = await core.storage.list_user_addresses(user.id)
    return [address_view(address, user) for address in addresses]


async def get_address(core: Core, user_id: str, address_id: str) -> AddressView:
    user = await get_user(core, user_id)
    address = await core.storage.get_address(check_id(address_id, "address"))
    if address is None or address.user != user.id:
        raise NotFoundError("Unknown address", "AddressNotFound")
    return address_view(address, user)


async def create_address(core: Core, user_id: str, data: CreateAddress) -> Address:
    user = await get_user(core, user_id)
    normalized = normalize_address(data.address)
    address = Address(new_id(), user.id, normalized.display, normalized.addrview, datetime.now(UTC))
    try:
        await core.storage.add_address(address)
    except DuplicateKeyError:
        raise ConflictError("This email address already exists", "AddressExists") from None
    if data.main:
        await core.storage.update_user(user.id, {"address": address.address})
    return address


async def update_address(core: Core, user_id: str, address_id: str, data: UpdateAddress) -> None:
    if not data.main:
        raise ValidationError("main: can only be set to true; make another address main instead")
    view = await get_address(core, user_id, address_id)
    await core.storage.update_user(view.address.user, {"address": view.address.address})


async def delete_address(core: Core, user_id: str, address_id: str) -> None:
    view = await get_address(core, user_id, address_id)
    if view.main:
        raise NotAllowedError("Trying to delete the main address; set a new main address first")
    if not await core.storage.delete_address(view.address.user, view.address.id):
        raise NotFoundError("Unknown address", "AddressNotFound")
