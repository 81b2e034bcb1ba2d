"""Fixtures for the REST API: a real server on a loopback port and an HTTP client.

``api`` runs on both storage backends (through ``storage_url``). ``make_api``
builds one with changed settings, e.g. an access token or lower rate limits.
Its LMTP maildrop listens on a free loopback port (``helpers.lmtp_port``).
``transcript`` is the list of every response text a test received through
``helpers.call`` (emptied before each test), for scanning replies for secrets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import helpers
import pytest
from aiohttp.test_utils import TestClient

from merganser.app import create_app
from merganser.config import Settings

ApiFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_api(storage_url: str, aiohttp_client: Any) -> ApiFactory:
    async def factory(**overrides: Any) -> TestClient:
        settings = dataclasses.replace(Settings(storage=storage_url, bcrypt_rounds=4, lmtp_port=0), **overrides)
        return await aiohttp_client(create_app(settings))

    return factory


@pytest.fixture
async def api(make_api: ApiFactory) -> TestClient:
    return await make_api()


@pytest.fixture(autouse=True)
def transcript() -> list[str]:
    helpers.TRANSCRIPT.clear()
    return helpers.TRANSCRIPT
