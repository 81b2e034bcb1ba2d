"""Fixtures for the REST API tests.

The server fixtures (``api``, ``make_api``) live in tests/conftest.py, as the
GraphQL tests use them too; its LMTP maildrop listens on a free loopback port
(``helpers.lmtp_port``). ``transcript`` is the list of every response text a
test received through ``helpers.call`` (emptied before each test), for
scanning replies for secrets.
"""

from __future__ import annotations

import helpers
import pytest


@pytest.fixture(autouse=True)
def transcript() -> list[str]:
    helpers.TRANSCRIPT.clear()
    return helpers.TRANSCRIPT
