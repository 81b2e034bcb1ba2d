"""Storage backends behind one interface, chosen by a URL.

``sqlite:///path/to/file.db`` selects the embedded backend (the default);
``mongodb://host:port/database`` (or ``mongodb+srv://``) selects MongoDB.
"""

from __future__ import annotations

from merganser.storage.base import Storage


def storage_from_url(url: str) -> Storage:
    """Build (but do not open) the backend the URL names."""
    if url.startswith("sqlite:///"):
        from merganser.storage.sqlite import SQLiteStorage

        return SQLiteStorage(url.removeprefix("sqlite:///"))
    if url.startswith(("mongodb://", "mongodb+srv://")):
        from merganser.storage.mongodb import MongoStorage

        return MongoStorage(url)
    raise ValueError(f"unsupported storage URL {url!r}: use sqlite:///PATH or mongodb://HOST:PORT/DB")


__all__ = ["Storage", "storage_from_url"]
