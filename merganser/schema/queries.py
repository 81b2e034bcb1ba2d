"""The root query: accounts and addresses; everything a user owns is reached through its User."""

from __future__ import annotations

import strawberry
from strawberry import ID

from merganser.resolvers import addresses, batches, lookup, users
from merganser.resolvers.inputs import DEFAULT_PAGE_SIZE
from merganser.schema.context import Info
from merganser.schema.inputs import page_input
from merganser.schema.types import Address, Connection, User, connection


@strawberry.type
class Query:
    @strawberry.field(description="One user, with everything the user owns below it.")
    async def user(self, info: Info, id: ID) -> User:
        return User.from_record(await lookup.get_user(info.context.core, id))

    @strawberry.field(description="Users whose username contains `query`, oldest first.")
    async def users(
        self, info: Info, query: str | None = None, first: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> Connection[User]:
        page = await users.list_users(info.context.core, page_input(users.ListUsers, first, after, query=query))
        return connection(page, User.from_record)

    @strawberry.field(description="Addresses of every user containing `query`, oldest first.")
    async def addresses(
        self, info: Info, query: str | None = None, first: int = DEFAULT_PAGE_SIZE, after: str | None = None
    ) -> Connection[Address]:
        core = info.context.core
        page = await addresses.search_addresses(core, page_input(addresses.ListAddresses, first, after, query=query))
        views = {view.address.id: view for view in await batches.address_views(core, page.items)}
        return connection(page, lambda address: Address.from_view(views[address.id]))
