"""Shared fixtures.

Storage
    ``storage_url`` is parametrized over both backends, so every test that uses
    it (directly or through ``storage``) runs once on SQLite and once on
    MongoDB. The MongoDB side talks to a real server: FerretDB built by
    ``scripts/ferretdb.sh`` and started once per session, or the server named
    by ``MERGANSER_TEST_MONGODB_URL`` (e.g. ``mongodb://127.0.0.1:27017``).
    Each test gets a fresh database that is dropped afterwards.

To leave one backend out, deselect the other: ``-k "not mongodb"`` runs
everything but the MongoDB side (``-k sqlite`` would also drop every test
that does not depend on a backend at all), ``-k "not sqlite"`` the reverse.

Servers and browsers
    ``make_api`` runs merganser (HTTP API and LMTP maildrop on free loopback
    ports) over ``storage_url`` with changed settings, ``api`` with the
    defaults. ``page`` is a headless Chromium page (Debian's chromium through
    Playwright) that fails its test if a script on it raised or if it loaded
    anything from anywhere but this machine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import pymongo
import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, async_playwright

from merganser.app import create_app
from merganser.config import Settings
from merganser.storage import Storage, storage_from_url

# The helpers shared by every test directory live in tests/rest/helpers.py (one module object for all).
sys.path.insert(0, str(Path(__file__).resolve().parent / "rest"))

from helpers import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
MONGODB_URL_ENV = "MERGANSER_TEST_MONGODB_URL"
FERRETDB_START_TIMEOUT = 20.0
CHROMIUM_PATHS = ("chromium", "chromium-browser", "google-chrome")
SCREENSHOTS = REPO / "test-output" / "screenshots"

ApiFactory = Callable[..., Awaitable[TestClient]]


# Helpers


def database_url(server_url: str, database: str) -> str:
    """``server_url`` with its database path replaced by ``database`` (query kept)."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def _ferretdb_binary() -> str:
    result = subprocess.run([str(REPO / "scripts" / "ferretdb.sh")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"scripts/ferretdb.sh failed ({result.returncode}):\n{result.stderr[-4000:]}", pytrace=False)
    return result.stdout.strip()


# MongoDB server


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``mongodb://HOST:PORT``) of a MongoDB-compatible server for the session."""
    external = os.environ.get(MONGODB_URL_ENV)
    if external:
        yield external.rstrip("/")
        return

    binary = _ferretdb_binary()
    workdir = tmp_path_factory.mktemp("ferretdb")
    (workdir / "data").mkdir()
    log_path = workdir / "ferretdb.log"
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                "--handler=sqlite",
                f"--sqlite-url=file:{workdir / 'data'}/",
                f"--listen-addr=127.0.0.1:{port}",
                f"--state-dir={workdir}",
                "--telemetry=disable",
                "--debug-addr=-",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, process, log_path, FERRETDB_START_TIMEOUT, name="FerretDB")
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Storage


@pytest.fixture(params=["sqlite", "mongodb"], ids=["sqlite", "mongodb"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty store: a new SQLite file, or a new MongoDB database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/merganser.db"
        return

    server = request.getfixturevalue("ferretdb")
    database = f"t_{uuid4().hex}"
    yield database_url(server, database)
    client: pymongo.MongoClient = pymongo.MongoClient(server, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(database)
    finally:
        client.close()


@pytest.fixture
async def storage(storage_url: str) -> AsyncIterator[Storage]:
    """An opened storage backend over an empty store."""
    store = storage_from_url(storage_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# Servers


@pytest.fixture
def make_api(storage_url: str, aiohttp_client: Any) -> ApiFactory:
    async def factory(**overrides: Any) -> TestClient:
        settings = dataclasses.replace(Settings(storage=storage_url, bcrypt_rounds=4, lmtp_port=0), **overrides)
        return await aiohttp_client(create_app(settings))

    return factory


@pytest.fixture
async def api(make_api: ApiFactory) -> TestClient:
    return await make_api()


# Browsers


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = next(filter(None, map(shutil.which, CHROMIUM_PATHS)), None)
    if executable is None:
        pytest.fail("Chromium is not installed (scripts/test.sh installs Debian's chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1200, "height": 750})
    page = await context.new_page()
    errors: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: None if _served_here(request.url) else outside.append(request.url))
    try:
        yield page
    finally:
        await context.close()
    assert errors == [], f"the page raised: {errors}"
    assert outside == [], "the page loaded files from elsewhere"


def _served_here(url: str) -> bool:
    """A URL the page may load: one of this machine's loopback servers, or inline data.

    The host is compared whole: ``http://127.0.0.1.example.org/`` or
    ``http://example.org/?from=127.0.0.1`` is somewhere else. A ``blob:`` URL
    is judged by the origin it names.
    """
    parts = urlsplit(url)
    if parts.scheme == "blob":
        parts = urlsplit(parts.path)
    return parts.scheme == "data" or (parts.scheme in ("http", "https", "ws", "wss") and parts.hostname == "127.0.0.1")


async def _screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path


@pytest.fixture
def screenshot() -> Callable[[Page, str], Awaitable[Path]]:
    """``await screenshot(page, "name.png")`` keeps what the page shows in test-output/screenshots/."""
    return _screenshot
