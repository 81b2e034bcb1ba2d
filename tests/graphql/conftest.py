"""Fixtures for the GraphQL API: a real server on a loopback port and a real GraphQL client (gql).

``api`` and ``make_api`` (tests/conftest.py) run merganser on both storage
backends. ``graphql`` is a gql session
over HTTP (``AIOHTTPTransport``) against it, wrapped by ``gqlhelpers.Gql`` so
that every answer is kept in ``transcript`` for scanning it for secrets.
``account`` is a user with the address ``gqlhelpers.USER`` and its mailboxes.
The REST tests' helpers (LMTP delivery, test messages) are shared: pytest puts
``tests/rest`` on ``sys.path`` only for modules collected there, so it is
added here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rest"))

from gqlhelpers import TRANSCRIPT, USER, Gql, create_user, mailbox_ids, open_graphql


@pytest.fixture
async def graphql(api: TestClient) -> AsyncIterator[Gql]:
    async with open_graphql(api) as client:
        yield client


@pytest.fixture
async def account(graphql: Gql) -> tuple[str, dict[str, str]]:
    """A user with the address ``USER``: its id and its mailboxes' ids by path."""
    user = await create_user(graphql, address=USER)
    return user["id"], await mailbox_ids(graphql, user["id"])


@pytest.fixture(autouse=True)
def transcript() -> list[str]:
    TRANSCRIPT.clear()
    return TRANSCRIPT
