"""What every resolver is handed: the storage, the settings and shared services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from merganser.config import Settings
from merganser.resolvers.hub import UpdateHub
from merganser.storage.base import Storage

if TYPE_CHECKING:
    from merganser.resolvers.forwarding import Forwarder


@dataclass(slots=True)
class Core:
    storage: Storage
    settings: Settings
    forwarder: Forwarder | None = None
    updates: UpdateHub = field(init=False)

    def __post_init__(self) -> None:
        self.updates = UpdateHub(self.storage, self.settings.subscriber_buffer)
        self.storage.add_journal_listener(self.updates.journal_grew)
