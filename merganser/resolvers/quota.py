"""Storage quota bookkeeping."""

from __future__ import annotations

from merganser.resolvers.context import Core
from merganser.resolvers.lookup import get_user


async def reset(core: Core, user_id: str) -> int:
    """Recount the bytes a user's messages take, for when counters drifted."""
    user = await get_user(core, user_id)
    return await core.storage.recalculate_storage(user.id)
