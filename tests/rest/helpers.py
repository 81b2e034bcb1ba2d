"""Small helpers shared by the REST API tests.

Test modules in this directory import them as ``from helpers import ...``:
``tests/`` has no ``__init__.py``, so pytest puts ``tests/rest`` on
``sys.path`` when it collects the modules here.

Every request goes through :func:`call`, which also enforces what must hold
for *every* response of the API: never a 500, always a JSON body, and never a
password hash in it. Each response text is kept in :data:`TRANSCRIPT` so that
a test can scan everything the server said for a secret.

The last section (waiting, ports and processes) is shared by every test
directory: ``tests/conftest.py`` and top-level test modules put
``tests/rest`` on ``sys.path`` to import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from merganser.app import LMTP_SERVER
from merganser.resolvers.context import Core
from merganser.rest_compat.http import CORE

PASSWORD = "secretpass"
UNKNOWN_ID = "0123456789abcdef01234567"
BCRYPT_MARKERS = ("$2b$", "$2a$", "$2y$")
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
OBJECT_ID = re.compile(r"[0-9a-f]{24}")

# Texts of every response received through ``call`` (cleared per test by the
# ``transcript`` fixture in conftest.py).
TRANSCRIPT: list[str] = []

_NO_BODY = object()


@dataclass
class Reply:
    status: int
    body: Any
    text: str
    headers: CIMultiDictProxy[str]


async def call(
    api: TestClient,
    method: str,
    path: str,
    json: Any = _NO_BODY,
    *,
    data: bytes | str | None = None,
    params: Any = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """Send one request and decode the JSON reply, checking the invariants."""
    kwargs: dict[str, Any] = {"params": params, "headers": headers}
    if json is not _NO_BODY:
        kwargs["json"] = json
    elif data is not None:
        kwargs["data"] = data
        kwargs["headers"] = {"Content-Type": "application/json", **(headers or {})}
    async with api.request(method, path, **kwargs) as response:
        text = await response.text()
        status = response.status
        content_type = response.content_type
        reply_headers = response.headers
    TRANSCRIPT.append(text)
    assert status < 500, f"{method} {path} answered {status}: {text}"
    assert content_type == "application/json", f"{method} {path}: {content_type} {text!r}"
    for marker in BCRYPT_MARKERS:
        assert marker not in text, f"{method} {path} leaked a password hash: {text}"
    return Reply(status, orjson.loads(text), text, reply_headers)


async def get(api: TestClient, path: str, **params: Any) -> Reply:
    return await call(api, "GET", path, params=params or None)


def assert_error(reply: Reply, status: int, code: str | None = None) -> None:
    """A failure reply: the exact status, and exactly ``{"error", "code"}``."""
    assert reply.status == status, reply.text
    assert isinstance(reply.body, dict), reply.text
    assert set(reply.body) == {"error", "code"}, reply.text
    assert isinstance(reply.body["error"], str) and reply.body["error"], reply.text
    assert isinstance(reply.body["code"], str) and reply.body["code"], reply.text
    if code is not None:
        assert reply.body["code"] == code, reply.text


def assert_ok(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.text
    assert reply.body.get("success") is True, reply.text
    return reply.body


def core(api: TestClient) -> Core:
    """The server's core (storage and settings); for peeking at stored state only."""
    return api.server.app[CORE]


# Users


async def create_user(api: TestClient, username: str = "testuser", password: str = PASSWORD, **fields: Any) -> str:
    reply = await call(api, "POST", "/users", {"username": username, "password": password, **fields})
    body = assert_ok(reply)
    assert set(body) == {"success", "id"}, reply.text
    assert OBJECT_ID.fullmatch(body["id"]), reply.text
    return body["id"]


async def get_user(api: TestClient, user_id: str) -> dict[str, Any]:
    return assert_ok(await get(api, f"/users/{user_id}"))


async def user_count(api: TestClient, query: str = "") -> int:
    body = assert_ok(await get(api, "/users", query=query) if query else await get(api, "/users"))
    return body["total"]


async def authenticate(
    api: TestClient, username: str, password: str = PASSWORD, scope: str | None = None, **fields: Any
) -> Reply:
    payload: dict[str, Any] = {"username": username, "password": password, **fields}
    if scope is not None:
        payload["scope"] = scope
    return await call(api, "POST", "/authenticate", payload)


async def authlog(api: TestClient, user_id: str, **params: Any) -> list[dict[str, Any]]:
    return assert_ok(await get(api, f"/users/{user_id}/authlog", **params))["results"]


# Paging


async def follow(api: TestClient, first: str, direction: str = "next") -> list[dict[str, Any]]:
    """Fetch ``first`` and keep following the ``direction`` link; return every page body."""
    pages = [assert_ok(await call(api, "GET", first))]
    while pages[-1][direction] is not False:
        link = pages[-1][direction]
        assert isinstance(link, str) and link.startswith("/"), link
        pages.append(assert_ok(await call(api, "GET", link)))
        assert len(pages) < 100, "paging does not end"
    return pages


def ids_of(pages: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for page in pages for item in page["results"]]


# Mailboxes and addresses


async def mailboxes(api: TestClient, user_id: str, **params: Any) -> dict[str, dict[str, Any]]:
    """The user's mailboxes keyed by path."""
    results = assert_ok(await get(api, f"/users/{user_id}/mailboxes", **params))["results"]
    return {mailbox["path"]: mailbox for mailbox in results}


async def create_mailbox(api: TestClient, user_id: str, path: str, **fields: Any) -> str:
    body = assert_ok(await call(api, "POST", f"/users/{user_id}/mailboxes", {"path": path, **fields}))
    assert OBJECT_ID.fullmatch(body["id"]), body
    return body["id"]


async def addresses(api: TestClient, user_id: str) -> list[dict[str, Any]]:
    return assert_ok(await get(api, f"/users/{user_id}/addresses"))["results"]


async def add_address(api: TestClient, user_id: str, address: str, **fields: Any) -> str:
    body = assert_ok(await call(api, "POST", f"/users/{user_id}/addresses", {"address": address, **fields}))
    assert set(body) == {"success", "id"}, body
    return body["id"]


async def create_asp(api: TestClient, user_id: str, description: str = "Mail app", **fields: Any) -> dict[str, Any]:
    return assert_ok(await call(api, "POST", f"/users/{user_id}/asps", {"description": description, **fields}))


# Messages


def crlf(text: str) -> bytes:
    """A message written with "\\n" line ends, as the CRLF bytes that travel over LMTP."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def simple_message(subject: str = "Hello", body: str = "Hello there.", **headers: str) -> bytes:
    """A small text message; extra headers are given as keyword arguments (``Message_ID="<a@b>"``)."""
    lines = [
        "From: Sender Name <sender@example.org>",
        "To: Test User <testuser@example.com>",
        f"Subject: {subject}",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
        "",
        body,
        "",
    ]
    return crlf("\n".join(lines))


async def mailbox_id(api: TestClient, user_id: str, path: str = "INBOX") -> str:
    return (await mailboxes(api, user_id))[path]["id"]


async def counters(api: TestClient, user_id: str, mailbox: str) -> tuple[int, int]:
    """(total, unseen) of one mailbox."""
    body = assert_ok(await get(api, f"/users/{user_id}/mailboxes/{mailbox}"))
    return body["total"], body["unseen"]


async def list_messages(api: TestClient, user_id: str, mailbox: str, **params: Any) -> dict[str, Any]:
    return assert_ok(await get(api, f"/users/{user_id}/mailboxes/{mailbox}/messages", **params))


async def message_ids(api: TestClient, user_id: str, mailbox: str) -> list[str]:
    """Ids of every message in a mailbox, newest first (at most 250)."""
    return [item["id"] for item in (await list_messages(api, user_id, mailbox, limit=250))["results"]]


async def get_message(api: TestClient, user_id: str, mailbox: str, message: str) -> dict[str, Any]:
    return assert_ok(await get(api, f"/users/{user_id}/mailboxes/{mailbox}/messages/{message}"))


async def raw_request(
    api: TestClient, method: str, path: str, **kwargs: Any
) -> tuple[int, bytes, CIMultiDictProxy[str]]:
    """A request whose reply may not be JSON (message sources, attachments); never a 500."""
    async with api.request(method, path, **kwargs) as response:
        content = await response.read()
        status, reply_headers = response.status, response.headers
    assert status < 500, f"{method} {path} answered {status}: {content[:500]!r}"
    return status, content, reply_headers


async def message_source(api: TestClient, user_id: str, mailbox: str, message: str) -> bytes:
    status, content, headers = await raw_request(
        api, "GET", f"/users/{user_id}/mailboxes/{mailbox}/messages/{message}/message.eml"
    )
    assert status == 200, content
    assert headers["Content-Type"] == "message/rfc822", headers
    return content


async def upload_message(api: TestClient, user_id: str, mailbox: str, raw: bytes, **params: Any) -> dict[str, Any]:
    """POST a raw message/rfc822 body; query parameters carry the flags."""
    reply = await call(
        api,
        "POST",
        f"/users/{user_id}/mailboxes/{mailbox}/messages",
        data=raw,
        params=params or None,
        headers={"Content-Type": "message/rfc822"},
    )
    body = assert_ok(reply)
    assert set(body) == {"success", "id", "mailbox", "uid"}, reply.text
    return body


async def quota_used(api: TestClient, user_id: str) -> int:
    return (await get_user(api, user_id))["limits"]["quota"]["used"]


# LMTP


def lmtp_port(api: TestClient) -> int:
    """The port the server's LMTP maildrop listens on."""
    return api.server.app[LMTP_SERVER].sockets[0].getsockname()[1]


LmtpReply = tuple[int, bytes]


@dataclass
class Transaction:
    """The server's replies to one LMTP mail transaction."""

    mail: LmtpReply
    rcpt: list[LmtpReply] = field(default_factory=list)
    data: list[LmtpReply] = field(default_factory=list)

    @property
    def data_codes(self) -> list[int]:
        return [code for code, _ in self.data]


def dot_stuff(raw: bytes) -> bytes:
    """RFC 5321 4.5.2: a line starting with "." gets another one."""
    return re.sub(rb"(?m)^\.", b"..", raw)


def lmtp_transaction(
    port: int,
    recipients: list[str],
    raw: bytes,
    sender: str = "sender@example.org",
    mail_options: tuple[str, ...] = (),
) -> Transaction:
    """One mail transaction with a real LMTP client (blocking: run it in a thread).

    After DATA the server answers once per accepted recipient; every reply is
    read. ``raw`` must end with CRLF.
    """
    assert raw.endswith(b"\r\n")
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as client:
        code, message = client.ehlo("client.example.org")  # LHLO
        assert code == 250, message
        result = Transaction(client.mail(sender, list(mail_options)))
        if result.mail[0] != 250:
            return result
        result.rcpt = [client.rcpt(address) for address in recipients]
        accepted = sum(1 for code, _ in result.rcpt if code == 250)
        if not accepted:
            return result
        code, message = client.docmd("DATA")
        assert code == 354, message
        client.send(dot_stuff(raw) + b".\r\n")
        result.data = [client.getreply() for _ in range(accepted)]
        return result


async def deliver(api: TestClient, recipients: str | list[str], raw: bytes, **options: Any) -> Transaction:
    """Deliver over the server's LMTP port from a worker thread (the server runs on this loop)."""
    targets = [recipients] if isinstance(recipients, str) else recipients
    return await asyncio.to_thread(lmtp_transaction, lmtp_port(api), targets, raw, **options)


async def deliver_ok(api: TestClient, recipient: str, raw: bytes) -> None:
    """Deliver to one recipient and insist on 250 at RCPT and after DATA."""
    result = await deliver(api, recipient, raw)
    assert result.rcpt[0][0] == 250, result
    assert result.data_codes == [250], result


# Waiting, ports and processes

LOOPBACK = "127.0.0.1"


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``condition`` until it holds; ``timeout`` only guards against a hang (fails naming ``what``)."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, for a failure message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0, name: str = "the process"
) -> None:
    """Return once something accepts connections on the loopback ``port``.

    Fails with the end of ``log`` if ``process`` exits first, or if nothing
    listens within ``timeout`` seconds (a guard against a hang).
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{tail(log)}", pytrace=False)
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not listen on port {port} within {timeout:g} s:\n{tail(log)}", pytrace=False)
        time.sleep(0.05)
