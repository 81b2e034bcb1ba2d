"""A store survives a restart: opening it again keeps what it holds and adds nothing twice."""

from __future__ import annotations

from datetime import UTC, datetime

from merganser.storage import storage_from_url
from merganser.storage.base import Address, User


async def test_a_store_can_be_opened_again(storage_url):
    user = User(
        id="0123456789abcdef01234567",
        username="alice",
        name="",
        password_hash="x",
        address="alice@example.com",
        language="en",
        quota=1024,
        retention=0,
        recipients=10,
        forwards=10,
        created=datetime.now(UTC),
    )
    address = Address(
        id="0123456789abcdef01234568",
        user=user.id,
        address=user.address,
        addrview="alice@example.com",
        created=user.created,
    )
    for opening in range(3):
        store = storage_from_url(storage_url)
        await store.open()
        try:
            if opening == 0:
                await store.create_user(user, address, [])
            found = await store.get_user(user.id)
            assert found is not None and found.username == "alice"
        finally:
            await store.close()
