"""REST: POST /authenticate, GET /users/{id}/authlog, rate limiting, and secrets in responses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from helpers import (
    BCRYPT_MARKERS,
    ISO_UTC,
    OBJECT_ID,
    PASSWORD,
    assert_error,
    assert_ok,
    authenticate,
    authlog,
    call,
    core,
    create_asp,
    create_user,
    follow,
    get,
    ids_of,
)

# Authenticating


async def test_authenticate_with_username(api):
    user_id = await create_user(api, "testuser")
    reply = await authenticate(api, "testuser")
    assert assert_ok(reply) == {
        "success": True,
        "id": user_id,
        "username": "testuser",
        "scope": "master",
        "require2fa": False,
    }
    # Usernames are matched case-insensitively; the stored spelling is returned.
    assert assert_ok(await authenticate(api, "TestUser"))["username"] == "testuser"


@pytest.mark.parametrize(
    "login", ["testuser@localhost", "TESTUSER@LOCALHOST", "alias@example.com", "ALIAS@Example.COM"]
)
async def test_authenticate_with_an_address(api, login):
    user_id = await create_user(api, "testuser")
    assert_ok(await call(api, "POST", f"/users/{user_id}/addresses", {"address": "alias@example.com"}))

    assert assert_ok(await authenticate(api, login)) == {
        "success": True,
        "id": user_id,
        "username": "testuser",
        "scope": "master",
        "require2fa": False,
    }


async def test_wrong_password_is_refused(api):
    await create_user(api, "testuser")
    assert_error(await authenticate(api, "testuser", "wrongpass"), 403, "AuthFailed")
    assert_error(await authenticate(api, "testuser@localhost", "wrongpass"), 403, "AuthFailed")
    # The password is case-sensitive.
    assert_error(await authenticate(api, "testuser", PASSWORD.upper()), 403, "AuthFailed")


@pytest.mark.parametrize("login", ["nobody", "nobody@localhost", "not@an@address", "@localhost"])
async def test_unknown_user_is_refused(api, login):
    await create_user(api, "testuser")
    assert_error(await authenticate(api, login), 403, "AuthFailed")


@pytest.mark.parametrize("scope", ["master", "imap", "pop3", "smtp"])
async def test_master_password_works_for_every_scope(api, scope):
    user_id = await create_user(api, "testuser")
    assert assert_ok(await authenticate(api, "testuser", scope=scope)) == {
        "success": True,
        "id": user_id,
        "username": "testuser",
        "scope": scope,
        "require2fa": False,
    }


@pytest.mark.parametrize(
    "payload",
    [
        {"username": "testuser", "password": PASSWORD, "scope": "ftp"},
        {"username": "testuser", "password": PASSWORD, "scope": "IMAP"},
        {"username": "testuser", "password": PASSWORD, "scope": ""},
        {"username": "testuser"},
        {"username": "testuser", "password": ""},
        {"password": PASSWORD},
        {"username": "testuser", "password": 12345678},
        {"username": "testuser", "password": PASSWORD, "ip": "not-an-ip"},
        {"username": "testuser", "password": PASSWORD, "remember": True},
    ],
    ids=[
        "scope-ftp",
        "scope-uppercase",
        "scope-empty",
        "no-password",
        "empty-password",
        "no-username",
        "password-number",
        "bad-ip",
        "unknown-field",
    ],
)
async def test_authenticate_refuses_bad_input(api, payload):
    user_id = await create_user(api, "testuser")
    assert_error(await call(api, "POST", "/authenticate", payload), 400, "InputValidationError")
    # Refused input is not an attempt: nothing is logged.
    assert [entry["action"] for entry in await authlog(api, user_id)] == ["account created"]


# The authentication log


async def test_authlog_lists_attempts_newest_first(api):
    started = datetime.now(UTC)
    user_id = await create_user(api, "testuser", ip="192.0.2.1")
    assert_ok(await authenticate(api, "testuser", scope="imap", protocol="IMAP", ip="192.0.2.10"))
    assert_error(await authenticate(api, "testuser", "wrongpass", ip="2001:db8::1"), 403, "AuthFailed")

    body = assert_ok(await get(api, f"/users/{user_id}/authlog"))
    assert (body["total"], body["page"], body["prev"], body["next"]) == (3, 1, False, False)
    entries = body["results"]
    created = [entry.pop("created") for entry in entries]
    ids = [entry.pop("id") for entry in entries]
    assert entries == [
        {"action": "authentication", "result": "fail", "scope": "master", "ip": "2001:db8::1"},
        {"action": "authentication", "result": "success", "scope": "imap", "protocol": "IMAP", "ip": "192.0.2.10"},
        {"action": "account created", "result": "success", "ip": "192.0.2.1"},
    ]
    assert all(OBJECT_ID.fullmatch(entry_id) for entry_id in ids)
    assert len(set(ids)) == 3
    for stamp in created:
        assert ISO_UTC.fullmatch(stamp), stamp
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert started - timedelta(seconds=1) <= moment <= datetime.now(UTC) + timedelta(seconds=1)
    assert created == sorted(created, reverse=True)


async def test_authlog_records_the_ip_sent_in_the_body(api):
    user_id = await create_user(api, "testuser")
    assert_ok(await authenticate(api, "testuser", ip="203.0.113.99"))
    assert_ok(await authenticate(api, "testuser"))

    entries = await authlog(api, user_id)
    # Without an ip in the body, the connecting address is recorded.
    assert [entry["ip"] for entry in entries] == ["127.0.0.1", "203.0.113.99", "127.0.0.1"]


async def test_authlog_of_an_unknown_user(api):
    await create_user(api, "testuser")
    assert_error(await get(api, "/users/0123456789abcdef01234567/authlog"), 404, "UserNotFound")


async def test_authlog_paging(api):
    user_id = await create_user(api, "testuser")
    for number in range(5):
        assert_error(await authenticate(api, "testuser", "wrongpass", ip=f"192.0.2.{number}"), 403, "AuthFailed")

    pages = await follow(api, f"/users/{user_id}/authlog?limit=2")
    assert [len(page["results"]) for page in pages] == [2, 2, 2]
    assert [page["page"] for page in pages] == [1, 2, 3]
    assert [page["total"] for page in pages] == [6, 6, 6]
    entries = [entry for page in pages for entry in page["results"]]
    # Newest first across pages: the five failures from the last to the first, then the creation.
    assert [entry["ip"] for entry in entries[:5]] == [f"192.0.2.{number}" for number in range(4, -1, -1)]
    assert entries[5]["action"] == "account created"
    assert len(set(ids_of(pages))) == 6

    back = await follow(api, pages[-1]["prev"], "prev")
    assert [page["page"] for page in back] == [2, 1]
    assert ids_of(back) == ids_of(pages)[2:4] + ids_of(pages)[0:2]
    assert back[-1]["prev"] is False


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=1000", "next=garbage"])
async def test_authlog_refuses_bad_query(api, query):
    user_id = await create_user(api, "testuser")
    assert_error(await call(api, "GET", f"/users/{user_id}/authlog?{query}"), 400, "InputValidationError")


# Rate limiting


async def test_failures_per_user_are_rate_limited(make_api):
    api = await make_api(auth_failures_per_user=3)
    user_id = await create_user(api, "testuser")
    other_id = await create_user(api, "otheruser")

    for _ in range(3):
        assert_error(await authenticate(api, "testuser", "wrongpass", ip="192.0.2.20"), 403, "AuthFailed")

    # Even the right password is refused now, from any address and by any login name.
    reply = await authenticate(api, "testuser", ip="192.0.2.20")
    assert_error(reply, 429, "RateLimited")
    assert reply.headers["Retry-After"] == "300"
    assert_error(await authenticate(api, "testuser@localhost", ip="192.0.2.21", scope="imap"), 429, "RateLimited")

    # Other users are not affected.
    assert assert_ok(await authenticate(api, "otheruser", ip="192.0.2.20"))["id"] == other_id

    # Every attempt is in the log: the failures, then the refused ones, each with its address.
    attempts = [entry for entry in await authlog(api, user_id) if entry["action"] == "authentication"]
    assert [(entry["result"], entry["ip"]) for entry in reversed(attempts)] == [("fail", "192.0.2.20")] * 3 + [
        ("rate limited", "192.0.2.20"),
        ("rate limited", "192.0.2.21"),
    ]


async def test_failures_per_ip_are_rate_limited(make_api):
    api = await make_api(auth_failures_per_ip=3)
    user_id = await create_user(api, "testuser")
    ip = "198.51.100.7"

    assert_error(await authenticate(api, "testuser", "wrongpass", ip=ip), 403, "AuthFailed")
    assert_error(await authenticate(api, "ghostone", "anything", ip=ip), 403, "AuthFailed")
    assert_error(await authenticate(api, "ghost@example.com", "anything", ip=ip), 403, "AuthFailed")

    reply = await authenticate(api, "testuser", ip=ip)
    assert_error(reply, 429, "RateLimited")
    assert reply.headers["Retry-After"] == "300"
    assert_error(await authenticate(api, "ghostthree", "anything", ip=ip), 429, "RateLimited")

    # The limit is per address: the same user from elsewhere gets in.
    assert assert_ok(await authenticate(api, "testuser", ip="198.51.100.8"))["id"] == user_id

    attempts = [
        (entry["result"], entry["ip"]) for entry in await authlog(api, user_id) if entry["action"] == "authentication"
    ]
    # Newest first: the success from elsewhere, and at the start the failure that counted towards the limit.
    assert attempts[0] == ("success", "198.51.100.8")
    assert attempts[-1] == ("fail", ip)
    assert ("success", ip) not in attempts


async def test_wrong_existing_password_counts_towards_the_limit(make_api):
    api = await make_api(auth_failures_per_user=3)
    user_id = await create_user(api, "testuser")

    for _ in range(3):
        reply = await call(api, "PUT", f"/users/{user_id}", {"name": "Changed", "existingPassword": "wrongpass"})
        assert_error(reply, 403, "AuthFailed")
    reply = await call(api, "PUT", f"/users/{user_id}", {"name": "Changed", "existingPassword": PASSWORD})
    assert_error(reply, 429, "RateLimited")
    assert assert_ok(await get(api, f"/users/{user_id}"))["name"] == ""
    assert [entry["action"] for entry in await authlog(api, user_id)][:3] == ["password check"] * 3


# Secrets never leave the server


async def test_no_response_contains_a_password_hash_or_the_totp_seed(api, transcript):
    """Drive every user, ASP, authlog and 2FA endpoint, then scan everything the server said."""
    user_id = await create_user(api, "testuser", ip="192.0.2.1")
    other_id = await create_user(api, "otheruser")
    assert_ok(await get(api, f"/users/{user_id}"))
    assert_ok(await get(api, "/users"))
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"password": "newsecret", "existingPassword": PASSWORD}))
    assert_error(await call(api, "PUT", f"/users/{other_id}", {"existingPassword": "wrongpass"}), 403, "AuthFailed")

    asp = await create_asp(api, user_id, scopes=["imap"])
    assert_ok(await get(api, f"/users/{user_id}/asps"))
    assert_ok(await authenticate(api, "testuser", asp["password"], scope="imap"))
    assert_ok(await authenticate(api, "testuser", "newsecret"))
    assert_error(await authenticate(api, "testuser", PASSWORD), 403, "AuthFailed")
    assert_error(await authenticate(api, "nobody", PASSWORD), 403, "AuthFailed")

    assert_ok(await call(api, "POST", f"/users/{user_id}/2fa", {"issuer": "merganser-test"}))
    # Read the pending seed from storage (as an authenticator app would read it from the QR code).
    seed = (await core(api).storage.get_user(user_id)).twofa_pending_seed
    assert seed
    totp = pyotp.TOTP(seed)
    assert_ok(await call(api, "PUT", f"/users/{user_id}/2fa", {"token": totp.now()}))
    assert_ok(await get(api, f"/users/{user_id}"))
    assert_ok(await authenticate(api, "testuser", "newsecret"))
    assert_ok(await get(api, f"/users/{user_id}/2fa", token=totp.at(datetime.now(UTC) + timedelta(seconds=30))))
    assert_ok(await get(api, f"/users/{user_id}/authlog"))
    assert_ok(await call(api, "DELETE", f"/users/{user_id}/2fa"))
    assert_ok(await call(api, "DELETE", f"/users/{user_id}/asps/{asp['id']}"))
    assert_ok(await get(api, f"/users/{user_id}/authlog"))

    stored = await core(api).storage.get_user(user_id)
    assert len(transcript) >= 20
    for text in transcript:
        for marker in BCRYPT_MARKERS:
            assert marker not in text
        assert stored.password_hash not in text
        assert seed not in text and seed.lower() not in text
        assert "newsecret" not in text and PASSWORD not in text
    # The ASP password appears exactly once: in the reply that created it.
    assert sum(asp["password"] in text for text in transcript) == 1
