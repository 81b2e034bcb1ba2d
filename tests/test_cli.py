"""``merganser serve`` as an operator runs it, and the reference's curl examples.

These tests start the real command in a subprocess and talk to it with curl,
exactly as the reference's examples do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyotp
import pytest

from merganser.resolvers.hub import PAGE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[str]
    base: str
    data_dir: Path
    lmtp_port: int

    def curl(self, *args: str) -> Any:
        """Run curl like the reference does and decode its JSON answer."""
        result = subprocess.run(
            ["curl", "-sS", *[arg.replace("http://localhost:8080", self.base) for arg in args]],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return json.loads(result.stdout)

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=20)
        return self.process.returncode, output


def _start(tmp_path: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> Server:
    port = port or _free_port()
    lmtp_port = _free_port()
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "merganser", "serve", "--data-dir", str(data_dir), "--bcrypt-rounds", "4", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MERGANSER_HTTP_PORT": str(port), "MERGANSER_LMTP_PORT": str(lmtp_port), **(env or {})},
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output, _ = process.communicate()
                pytest.fail(f"merganser serve did not start:\n{output}")
            time.sleep(0.05)
    return Server(process, f"http://127.0.0.1:{port}", data_dir, lmtp_port)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = _start(tmp_path)
    yield running
    if running.process.poll() is None:
        running.stop()


JSON = ("-H", "content-type: application/json")


def test_reference_account_examples_in_order(server: Server) -> None:
    """The curl examples of the account sections, in the order the reference gives them."""
    first = server.curl(
        "-XPOST", "http://localhost:8080/users", *JSON, "-d", '{"username": "testuser01", "password": "pass01"}'
    )
    listed = server.curl("http://localhost:8080/users?query=testuser01")
    assert listed["success"] is True and listed["query"] == "testuser01"
    assert (listed["total"], listed["page"], listed["prev"], listed["next"]) == (1, 1, False, False)
    assert listed["results"] == [
        {
            "id": first["id"],
            "username": "testuser01",
            "name": "",
            "address": "testuser01@localhost",
            "quota": {"allowed": 1073741824, "used": 0},
            "disabled": False,
        }
    ]
    one = server.curl(f"http://localhost:8080/users/{first['id']}")
    assert one["limits"]["recipients"] == {"allowed": 2000, "used": 0, "ttl": False}
    assert (one["retention"], one["activated"], one["disabled"]) == (False, True, False)

    created = server.curl(
        "-XPOST",
        "http://localhost:8080/users",
        *JSON,
        "-d",
        '{"username": "testuser", "password": "secretpass", "address": "testuser@example.com", "ip": "192.168.10.10"}',
    )
    user = created["id"]
    assert created == {"success": True, "id": user}

    assert server.curl("-XPUT", f"http://localhost:8080/users/{user}", *JSON, "-d", '{"quota": 1024}') == {
        "success": True
    }
    assert server.curl(f"http://localhost:8080/users/{user}")["limits"]["quota"] == {"allowed": 1024, "used": 0}

    auth = server.curl(
        "-XPOST",
        "http://localhost:8080/authenticate",
        *JSON,
        "-d",
        '{"username": "testuser", "password": "secretpass", "scope": "pop3", "ip": "192.168.10.10"}',
    )
    assert auth == {"success": True, "id": user, "username": "testuser", "scope": "pop3", "require2fa": False}

    authlog = server.curl(f"http://localhost:8080/users/{user}/authlog")
    assert authlog["results"][0]["action"] == "authentication"
    assert authlog["results"][0]["result"] == "success"
    assert authlog["results"][0]["ip"] == "192.168.10.10"

    qrcode = server.curl(
        "-XPOST",
        f"http://localhost:8080/users/{user}/2fa",
        *JSON,
        "-d",
        '{"issuer": "testikas", "ip": "192.168.10.10"}',
    )
    assert qrcode["qrcode"].startswith("data:image/png;base64,")
    # An authenticator app would read the secret from the QR code; the test reads
    # it from the server's database instead, to compute real codes with pyotp.
    with sqlite3.connect(server.data_dir / "merganser.db") as db:
        (seed,) = db.execute("SELECT twofa_pending_seed FROM users WHERE id = ?", [user]).fetchone()
    totp = pyotp.TOTP(seed)
    token = totp.now()
    assert server.curl(
        "-XPUT",
        f"http://localhost:8080/users/{user}/2fa",
        *JSON,
        "-d",
        f'{{"token": "{token}", "ip": "192.168.10.10"}}',
    ) == {"success": True}
    next_token = totp.at(time.time() + 30)
    assert server.curl(f"http://localhost:8080/users/{user}/2fa?token={next_token}&ip=192.168.10.10") == {
        "success": True
    }
    assert (
        server.curl(f"http://localhost:8080/users/{user}/2fa?token={next_token}&ip=192.168.10.10")["code"]
        == "AuthFailed"
    )
    assert server.curl("-XDELETE", f"http://localhost:8080/users/{user}/2fa?ip=192.168.10.10") == {"success": True}

    asp = server.curl(
        "-XPOST",
        f"http://localhost:8080/users/{user}/asps",
        *JSON,
        "-d",
        '{"description": "Mac OSX Mail Client", "scopes": ["*"], "ip": "192.168.10.10"}',
    )
    assert len(asp["password"]) == 16 and asp["password"].isalpha() and asp["password"].islower()
    asps = server.curl(f"http://localhost:8080/users/{user}/asps")
    assert [(item["id"], item["description"], item["scopes"]) for item in asps["results"]] == [
        (asp["id"], "Mac OSX Mail Client", ["*"])
    ]
    asp_login = server.curl(
        "-XPOST",
        "http://localhost:8080/authenticate",
        *JSON,
        "-d",
        json.dumps({"username": "testuser", "password": asp["password"], "scope": "pop3", "ip": "192.168.10.10"}),
    )
    assert asp_login["success"] is True
    assert server.curl("-XDELETE", f"http://localhost:8080/users/{user}/asps/{asp['id']}?ip=192.168.10.10") == {
        "success": True
    }
    assert server.curl(f"http://localhost:8080/user/{user}/asps") == {"success": True, "results": []}

    found = server.curl("http://localhost:8080/addresses?query=testuser01")
    assert [item["address"] for item in found["results"]] == ["testuser01@localhost"]
    assert found["results"][0]["user"] == first["id"]
    addresses = server.curl(f"http://localhost:8080/users/{user}/addresses")["results"]
    assert [(item["address"], item["main"]) for item in addresses] == [("testuser@example.com", True)]
    main = server.curl(f"http://localhost:8080/users/{user}/addresses/{addresses[0]['id']}")
    assert main["address"] == "testuser@example.com" and main["main"] is True
    alias = server.curl(
        "-XPOST", f"http://localhost:8080/users/{user}/addresses", *JSON, "-d", '{"address": "alias@example.com"}'
    )
    assert server.curl(
        "-XPUT", f"http://localhost:8080/users/{user}/addresses/{alias['id']}", *JSON, "-d", '{"main": true}'
    ) == {"success": True}
    assert server.curl(f"http://localhost:8080/users/{user}")["address"] == "alias@example.com"
    assert server.curl("-XDELETE", f"http://localhost:8080/users/{user}/addresses/{addresses[0]['id']}") == {
        "success": True
    }

    mailboxes = server.curl(f"http://localhost:8080/user/{user}/mailboxes")["results"]
    assert [(item["path"], item["specialUse"]) for item in mailboxes] == [
        ("INBOX", None),
        ("Archive", "\\Archive"),
        ("Drafts", "\\Drafts"),
        ("Junk", "\\Junk"),
        ("Sent Mail", "\\Sent"),
        ("Trash", "\\Trash"),
    ]
    counted = server.curl(f"http://localhost:8080/users/{user}/mailboxes?counters=true")
    assert all((item["total"], item["unseen"]) == (0, 0) for item in counted["mailboxes"])
    inbox = server.curl(f"http://localhost:8080/users/{user}/mailboxes/{mailboxes[0]['id']}")
    assert (inbox["name"], inbox["path"], inbox["total"], inbox["unseen"]) == ("INBOX", "INBOX", 0, 0)
    new = server.curl(
        "-XPOST", f"http://localhost:8080/users/{user}/mailboxes", *JSON, "-d", '{"path": "My New mailbox"}'
    )
    nested = server.curl(
        "-XPOST",
        f"http://localhost:8080/users/{user}/mailboxes",
        *JSON,
        "-d",
        '{"path": "Some parent/Subfolder/My New mailbox"}',
    )
    assert server.curl(f"http://localhost:8080/users/{user}/mailboxes/{nested['id']}")["name"] == "My New mailbox"
    assert server.curl(
        "-XPUT",
        f"http://localhost:8080/users/{user}/mailboxes/{new['id']}",
        *JSON,
        "-d",
        '{"path": "New Mailbox Name"}',
    ) == {"success": True}
    assert server.curl(f"http://localhost:8080/users/{user}/mailboxes/{new['id']}")["path"] == "New Mailbox Name"
    assert server.curl("-XDELETE", f"http://localhost:8080/users/{user}/mailboxes/{new['id']}") == {"success": True}
    assert server.curl(f"http://localhost:8080/users/{user}/mailboxes/{new['id']}")["code"] == "MailboxNotFound"

    reset = server.curl("-XPOST", f"http://localhost:8080/users/{user}/quota/reset", *JSON, "-d", "{}")
    assert reset == {"success": True, "storageUsed": 0}


def test_serve_logs_listener_and_stops_cleanly_on_sigterm(server: Server) -> None:
    code, output = server.stop()
    assert code == 0
    assert f"HTTP API listening on {server.base}" in output
    assert f"LMTP maildrop listening on 127.0.0.1:{server.lmtp_port}" in output
    assert "Traceback" not in output


def test_settings_from_config_file_environment_and_flags(tmp_path: Path) -> None:
    """Flags beat the environment, which beats the config file."""
    config = tmp_path / "merganser.toml"
    config.write_text('domain = "from-file.example"\naccess_token = "file-token"\n')
    port = _free_port()
    server = _start(
        tmp_path,
        "--config",
        str(config),
        "--access-token",
        "flag-token",
        env={"MERGANSER_DOMAIN": "from-env.example", "MERGANSER_ACCESS_TOKEN": "env-token"},
        port=port,
    )
    try:
        assert server.curl(f"{server.base}/users")["code"] == "InvalidToken"
        assert server.curl("-H", "X-Access-Token: env-token", f"{server.base}/users")["code"] == "InvalidToken"
        created = server.curl(
            "-H",
            "X-Access-Token: flag-token",
            "-XPOST",
            f"{server.base}/users",
            *JSON,
            "-d",
            '{"username": "someone", "password": "pw"}',
        )
        user = server.curl(f"{server.base}/users/{created['id']}?accessToken=flag-token")
        assert user["address"] == "someone@from-env.example"
    finally:
        code, output = server.stop()
    assert code == 0
    assert "flag-token" not in output, "the access token must not be logged"


def test_bad_config_is_reported_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("http_port = 'eighty'\n")
    result = subprocess.run(
        [sys.executable, "-m", "merganser", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "http_port" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("--heartbeat-interval=0", "'heartbeat_interval' must be at least 1 second, got 0"),
        ("MERGANSER_HEARTBEAT_INTERVAL=-5", "'heartbeat_interval' must be at least 1 second, got -5"),
        (f"subscriber_buffer = {PAGE - 1}", f"'subscriber_buffer' must be at least {PAGE}"),
    ],
)
def test_settings_that_would_break_update_streams_are_refused(tmp_path: Path, source: str, message: str) -> None:
    """A heartbeat interval of 0 would make streams spin; a buffer under a page would drop every subscriber."""
    command = [sys.executable, "-m", "merganser", "serve", "--data-dir", str(tmp_path)]
    env = dict(os.environ)
    if source.startswith("--"):
        command.append(source)
    elif source.startswith("MERGANSER_"):
        name, _, value = source.partition("=")
        env[name] = value
    else:
        config = tmp_path / "merganser.toml"
        config.write_text(source + "\n")
        command += ["--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_is_reported_without_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "merganser", "serve", "--data-dir", str(tmp_path), "--lmtp-port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr
