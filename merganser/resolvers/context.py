"""What every resolver is handed: the storage, the settings and shared services."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from merganser.config import Settings
from merganser.storage.base import Storage

if TYPE_CHECKING:
    from merganser.resolvers.forwarding import Forwarder


@dataclass(slots=True)
class Core:
    storage: Storage
    settings: Settings
    forwarder: Forwarder | None = None
