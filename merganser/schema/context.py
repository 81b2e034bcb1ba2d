"""What every resolver of one operation is handed."""

from __future__ import annotations

from typing import Any

import strawberry

from merganser.resolvers.context import Core
from merganser.schema.loaders import Loaders


class GraphQLContext:
    """The core, where the request came from, and the request's DataLoaders.

    ``connection_params`` is the ``connection_init`` payload of a WebSocket
    (Strawberry sets it), where the access token travels; ``handshake_token``
    is a token the WebSocket's handshake carried instead. ``position`` is the
    journal id a subscription's latest event came from: members of a shared
    subscription that are dropped resume from it.
    """

    __slots__ = ("_loaders", "cache", "connection_params", "core", "handshake_token", "position", "remote")

    def __init__(self, core: Core, remote: str | None, cache: bool = True) -> None:
        self.core = core
        self.remote = remote
        self.cache = cache
        self.connection_params: dict[str, Any] | None = None
        self.handshake_token: str | None = None
        self.position: int | None = None
        self._loaders: Loaders | None = None

    @property
    def loaders(self) -> Loaders:
        """Made on first use: most queries need none, and making them costs."""
        if self._loaders is None:
            self._loaders = Loaders(self.core, self.cache)
        return self._loaders


Info = strawberry.Info[GraphQLContext, None]
