"""REST: TOTP two-factor authentication (POST, PUT, GET, DELETE /users/{id}/2fa) with real codes.

How the tests get the secret: an authenticator app reads it from the QR code,
but decoding a QR image needs an image decoder that may not be installed. So
the tests read the *pending* seed from storage through the server's core
(``app[CORE].storage``), and use it ONLY to compute codes with pyotp, exactly
as the app would. Every check of behaviour goes through the HTTP API.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pyotp
import pytest
from helpers import (
    PASSWORD,
    assert_error,
    assert_ok,
    authenticate,
    authlog,
    call,
    core,
    create_asp,
    create_user,
    get,
    get_user,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URL_PREFIX = "data:image/png;base64,"
IP = "192.0.2.44"


async def pending_seed(api: Any, user_id: str) -> str:
    """The seed shown in the QR code, read from storage (see the module docstring)."""
    user = await core(api).storage.get_user(user_id)
    assert user is not None and user.twofa_pending_seed
    return user.twofa_pending_seed


def wrong_token(totp: pyotp.TOTP) -> str:
    """A well-formed token that is valid for no time step near now."""
    now = time.time()
    near = {totp.at(now + 30 * offset) for offset in range(-3, 4)}
    return next(token for token in (f"{n:06d}" for n in range(0, 1000000, 111111)) if token not in near)


async def setup_2fa(api: Any, user_id: str, **fields: Any) -> pyotp.TOTP:
    """POST /2fa and check the QR code; return the authenticator for the new seed."""
    body = assert_ok(await call(api, "POST", f"/users/{user_id}/2fa", {"ip": IP, **fields}))
    assert set(body) == {"success", "qrcode"}
    assert body["qrcode"].startswith(DATA_URL_PREFIX)
    png = base64.b64decode(body["qrcode"].removeprefix(DATA_URL_PREFIX), validate=True)
    assert png.startswith(PNG_SIGNATURE)
    return pyotp.TOTP(await pending_seed(api, user_id))


async def enable_2fa(api: Any, user_id: str) -> pyotp.TOTP:
    totp = await setup_2fa(api, user_id)
    assert_ok(await call(api, "PUT", f"/users/{user_id}/2fa", {"token": totp.now(), "ip": IP}))
    return totp


async def test_full_flow(api, transcript):
    user_id = await create_user(api, "testuser")
    asp = await create_asp(api, user_id, "IMAP client", scopes=["imap"])

    # Setup: a PNG QR code; nothing is enabled yet.
    totp = await setup_2fa(api, user_id, issuer="testikas")
    assert (await get_user(api, user_id))["enabled2fa"] is False
    assert assert_ok(await authenticate(api, "testuser"))["require2fa"] is False

    # Verify: a wrong token is refused and leaves 2FA off; the current one enables it.
    reply = await call(api, "PUT", f"/users/{user_id}/2fa", {"token": wrong_token(totp), "ip": IP})
    assert_error(reply, 403, "AuthFailed")
    assert (await get_user(api, user_id))["enabled2fa"] is False
    assert assert_ok(await call(api, "PUT", f"/users/{user_id}/2fa", {"token": totp.now(), "ip": IP})) == {
        "success": True
    }
    assert (await get_user(api, user_id))["enabled2fa"] is True

    # Setting up again is refused while enabled.
    reply = await call(api, "POST", f"/users/{user_id}/2fa", {"ip": IP})
    assert_error(reply, 403, "NotAllowed")
    assert "already enabled" in reply.body["error"]

    # The master password still logs in to "master", but asks for a token ...
    assert assert_ok(await authenticate(api, "testuser")) == {
        "success": True,
        "id": user_id,
        "username": "testuser",
        "scope": "master",
        "require2fa": True,
    }
    # ... and no longer works for the mail protocols, where ASPs must be used.
    for scope in ("imap", "pop3", "smtp"):
        assert_error(await authenticate(api, "testuser", scope=scope), 403, "AuthFailed")
    assert assert_ok(await authenticate(api, "testuser", asp["password"], scope="imap")) == {
        "success": True,
        "id": user_id,
        "username": "testuser",
        "scope": "imap",
        "require2fa": False,
    }

    # Check: a valid code (here the next time step's) works once; a replay is refused.
    token = totp.at(time.time() + 30)
    assert assert_ok(await get(api, f"/users/{user_id}/2fa", token=token, ip=IP)) == {"success": True}
    assert_error(await get(api, f"/users/{user_id}/2fa", token=token, ip=IP), 403, "AuthFailed")
    assert_error(await get(api, f"/users/{user_id}/2fa", token=wrong_token(totp), ip=IP), 403, "AuthFailed")
    assert_error(await get(api, f"/users/{user_id}/2fa", token="12ab", ip=IP), 400, "InputValidationError")

    # Disable: the master password works for the mail protocols again.
    assert assert_ok(await call(api, "DELETE", f"/users/{user_id}/2fa?ip={IP}")) == {"success": True}
    assert (await get_user(api, user_id))["enabled2fa"] is False
    assert assert_ok(await authenticate(api, "testuser", scope="imap"))["scope"] == "imap"
    assert assert_ok(await authenticate(api, "testuser"))["require2fa"] is False
    reply = await get(api, f"/users/{user_id}/2fa", token=totp.at(time.time() + 30), ip=IP)
    assert_error(reply, 403, "NotAllowed")

    # Each step is in the log with the ip it came from.
    events = [(entry["action"], entry["result"], entry["ip"]) for entry in await authlog(api, user_id, limit=50)]
    for event in [
        ("setup 2fa", "success", IP),
        ("enable 2fa", "fail", IP),
        ("enable 2fa", "success", IP),
        ("check 2fa", "success", IP),
        ("check 2fa", "fail", IP),
        ("disable 2fa", "success", IP),
    ]:
        assert event in events, event

    # The seed was never sent to the client in plain text.
    seed = totp.secret
    assert not any(seed in text or seed.lower() in text for text in transcript)


async def test_enable_without_setup_is_refused(api):
    user_id = await create_user(api, "testuser")
    reply = await call(api, "PUT", f"/users/{user_id}/2fa", {"token": "123456"})
    assert_error(reply, 403, "NotAllowed")
    assert (await get_user(api, user_id))["enabled2fa"] is False


async def test_check_without_2fa_is_refused(api):
    user_id = await create_user(api, "testuser")
    assert_error(await get(api, f"/users/{user_id}/2fa", token="123456"), 403, "NotAllowed")


async def test_setup_again_replaces_the_pending_seed(api):
    user_id = await create_user(api, "testuser")
    first = await setup_2fa(api, user_id)
    second = await setup_2fa(api, user_id)
    assert first.secret != second.secret

    # Only the newest QR code's codes enable 2FA.
    if first.now() != second.now():
        reply = await call(api, "PUT", f"/users/{user_id}/2fa", {"token": first.now()})
        assert_error(reply, 403, "AuthFailed")
    assert_ok(await call(api, "PUT", f"/users/{user_id}/2fa", {"token": second.now()}))
    assert (await get_user(api, user_id))["enabled2fa"] is True


async def test_the_token_that_enabled_2fa_can_not_be_replayed(api):
    user_id = await create_user(api, "testuser")
    totp = await setup_2fa(api, user_id)
    token = totp.now()
    assert_ok(await call(api, "PUT", f"/users/{user_id}/2fa", {"token": token}))
    assert_error(await get(api, f"/users/{user_id}/2fa", token=token), 403, "AuthFailed")


async def test_concurrent_use_of_one_token_succeeds_once(api):
    user_id = await create_user(api, "testuser")
    totp = await enable_2fa(api, user_id)
    token = totp.at(time.time() + 30)

    replies = await asyncio.gather(*(get(api, f"/users/{user_id}/2fa", token=token) for _ in range(5)))
    assert sorted(reply.status for reply in replies) == [200, 403, 403, 403, 403]


async def test_setup_after_disabling_starts_over(api):
    user_id = await create_user(api, "testuser")
    old = await enable_2fa(api, user_id)
    assert_ok(await call(api, "DELETE", f"/users/{user_id}/2fa"))

    new = await setup_2fa(api, user_id)
    assert new.secret != old.secret
    assert (await get_user(api, user_id))["enabled2fa"] is False
    assert assert_ok(await authenticate(api, "testuser", PASSWORD, scope="smtp"))["scope"] == "smtp"


@pytest.mark.parametrize(
    ("method", "payload_or_query"),
    [
        ("PUT", {"token": "12ab"}),
        ("PUT", {"token": "1234567"}),
        ("PUT", {"token": 123456}),
        ("PUT", {}),
        ("PUT", {"token": "123456", "ip": "nowhere"}),
        ("GET", "token=12ab"),
        ("GET", "token=%EF%BC%91%EF%BC%92%EF%BC%93%EF%BC%94%EF%BC%95%EF%BC%96"),  # fullwidth digits
        ("GET", ""),
        ("POST", {"issuer": ""}),
        ("POST", {"issuer": 42}),
        ("DELETE", "ip=nowhere"),
    ],
)
async def test_bad_input_is_refused(api, method, payload_or_query):
    user_id = await create_user(api, "testuser")
    await setup_2fa(api, user_id)
    seed = await pending_seed(api, user_id)

    path = f"/users/{user_id}/2fa"
    if isinstance(payload_or_query, dict):
        reply = await call(api, method, path, payload_or_query)
    else:
        reply = await call(api, method, f"{path}?{payload_or_query}")
    assert_error(reply, 400, "InputValidationError")

    # Nothing changed: 2FA is still pending with the same seed.
    assert (await get_user(api, user_id))["enabled2fa"] is False
    assert await pending_seed(api, user_id) == seed
