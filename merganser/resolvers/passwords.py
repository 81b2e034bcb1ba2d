"""Password hashing with bcrypt, off the event loop.

bcrypt is deliberately slow, so hashing and checking run in worker threads to
keep the server responsive while they work.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import string

import bcrypt

# bcrypt only reads the first 72 bytes; longer secrets are refused rather than
# silently truncated, so two different passwords can never both verify.
MAX_PASSWORD_BYTES = 72


@functools.lru_cache(maxsize=4)
def _dummy_hash(rounds: int) -> bytes:
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds))


async def hash_password(password: str, rounds: int) -> str:
    hashed = await asyncio.to_thread(bcrypt.hashpw, password.encode(), bcrypt.gensalt(rounds))
    return hashed.decode()


async def verify_password(password: str, hashed: str | None, rounds: int) -> bool:
    """Check a password; with no hash, still spend comparable time and say no.

    Spending the time either way keeps response timing from telling whether a
    username exists.
    """
    candidate = password.encode()[:MAX_PASSWORD_BYTES]
    if hashed is None:
        await asyncio.to_thread(bcrypt.checkpw, candidate, await asyncio.to_thread(_dummy_hash, rounds))
        return False
    return await asyncio.to_thread(bcrypt.checkpw, candidate, hashed.encode())


def generate_asp() -> str:
    """An application-specific password: 16 random lowercase letters (~75 bits)."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))
