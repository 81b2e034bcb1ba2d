"""Finding the records a request addresses, or saying clearly that they do not exist."""

from __future__ import annotations

from merganser.errors import NotFoundError
from merganser.resolvers.context import Core
from merganser.resolvers.ids import check_id
from merganser.storage.base import User


async def get_user(core: Core, user_id: str) -> User:
    user = await core.storage.get_user(check_id(user_id, "user"))
    if user is None:
        raise NotFoundError("This user does not exist", "UserNotFound")
    return user
