"""What every resolver is handed: the storage and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from merganser.config import Settings
from merganser.storage.base import Storage


@dataclass(slots=True)
class Core:
    storage: Storage
    settings: Settings
