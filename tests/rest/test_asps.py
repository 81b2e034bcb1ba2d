"""REST: application-specific passwords (/users/{id}/asps) and their scopes at /authenticate."""

from __future__ import annotations

import re

import pytest
from helpers import (
    ISO_UTC,
    OBJECT_ID,
    assert_error,
    assert_ok,
    authenticate,
    call,
    create_asp,
    create_user,
    get,
)

ASP_PASSWORD = re.compile(r"[a-z]{16}")


async def list_asps(api, user_id):
    return assert_ok(await get(api, f"/users/{user_id}/asps"))["results"]


async def test_create_returns_the_password_once(api):
    user_id = await create_user(api, "testuser")
    reply = await call(api, "POST", f"/users/{user_id}/asps", {"description": "OSX Mail App", "ip": "192.0.2.3"})
    created = assert_ok(reply)
    assert set(created) == {"success", "id", "password"}
    assert OBJECT_ID.fullmatch(created["id"])
    assert ASP_PASSWORD.fullmatch(created["password"]), created["password"]

    listing = await get(api, f"/users/{user_id}/asps")
    assert created["password"] not in listing.text
    results = assert_ok(listing)["results"]
    assert len(results) == 1
    entry = results[0]
    assert set(entry) == {"id", "description", "scopes", "created"}
    assert (entry["id"], entry["description"], entry["scopes"]) == (created["id"], "OSX Mail App", ["*"])
    assert ISO_UTC.fullmatch(entry["created"])

    # Two ASPs get different passwords.
    second = await create_asp(api, user_id, "Nodemailer", scopes=["smtp"])
    assert second["password"] != created["password"]
    assert [(item["description"], item["scopes"]) for item in await list_asps(api, user_id)] == [
        ("OSX Mail App", ["*"]),
        ("Nodemailer", ["smtp"]),
    ]


async def test_scopes_are_kept(api):
    user_id = await create_user(api, "testuser")
    await create_asp(api, user_id, "two", scopes=["smtp", "imap"])
    await create_asp(api, user_id, "star", scopes=["*"])
    await create_asp(api, user_id, "star and imap", scopes=["imap", "*"])
    scopes = {item["description"]: item["scopes"] for item in await list_asps(api, user_id)}
    assert sorted(scopes["two"]) == ["imap", "smtp"]
    assert scopes["star"] == ["*"]
    assert scopes["star and imap"] == ["*"]


@pytest.mark.parametrize(
    "payload",
    [
        {"description": "App", "scopes": ["ftp"]},
        {"description": "App", "scopes": []},
        {"description": "App", "scopes": ["master"]},
        {"description": "App", "scopes": "imap"},
        {"description": "App", "scopes": ["imap", 1]},
        {"description": ""},
        {"scopes": ["imap"]},
        {"description": "App", "password": "chosenbyclient"},
        {"description": "App", "ip": "nowhere"},
    ],
    ids=[
        "ftp",
        "empty",
        "master",
        "not-a-list",
        "not-a-string",
        "empty-description",
        "no-description",
        "unknown-field",
        "bad-ip",
    ],
)
async def test_create_refuses_bad_input(api, payload):
    user_id = await create_user(api, "testuser")
    assert_error(await call(api, "POST", f"/users/{user_id}/asps", payload), 400, "InputValidationError")
    assert await list_asps(api, user_id) == []


async def test_delete(api):
    user_id = await create_user(api, "testuser")
    kept = await create_asp(api, user_id, "kept")
    gone = await create_asp(api, user_id, "gone", scopes=["imap"])

    reply = await call(api, "DELETE", f"/users/{user_id}/asps/{gone['id']}")
    assert assert_ok(reply) == {"success": True}
    assert [item["id"] for item in await list_asps(api, user_id)] == [kept["id"]]
    assert_error(await authenticate(api, "testuser", gone["password"], scope="imap"), 403, "AuthFailed")

    assert_error(await call(api, "DELETE", f"/users/{user_id}/asps/{gone['id']}"), 404, "AspNotFound")


async def test_delete_under_another_user_is_not_found(api):
    owner = await create_user(api, "owner")
    other = await create_user(api, "other")
    asp = await create_asp(api, owner, "owner's app", scopes=["imap"])

    assert_error(await call(api, "DELETE", f"/users/{other}/asps/{asp['id']}"), 404, "AspNotFound")
    assert [item["id"] for item in await list_asps(api, owner)] == [asp["id"]]
    assert assert_ok(await authenticate(api, "owner", asp["password"], scope="imap"))["id"] == owner
    # Nor does one user's ASP log anyone else in.
    assert_error(await authenticate(api, "other", asp["password"], scope="imap"), 403, "AuthFailed")


async def test_asp_scope_is_enforced(api):
    user_id = await create_user(api, "testuser")
    smtp_only = (await create_asp(api, user_id, "Nodemailer", scopes=["smtp"]))["password"]

    assert assert_ok(await authenticate(api, "testuser", smtp_only, scope="smtp")) == {
        "success": True,
        "id": user_id,
        "username": "testuser",
        "scope": "smtp",
        "require2fa": False,
    }
    for scope in ("imap", "pop3", "master", None):  # None: the default scope, master
        assert_error(await authenticate(api, "testuser", smtp_only, scope=scope), 403, "AuthFailed")


async def test_wildcard_asp_works_for_every_mail_protocol_but_not_master(api):
    user_id = await create_user(api, "testuser")
    everything = (await create_asp(api, user_id, "Mail client"))["password"]

    for scope in ("imap", "pop3", "smtp"):
        reply = await authenticate(api, "testuser@localhost", everything, scope=scope)
        assert assert_ok(reply)["scope"] == scope
        assert reply.body["require2fa"] is False
    assert_error(await authenticate(api, "testuser", everything, scope="master"), 403, "AuthFailed")
    # The master password keeps working alongside.
    assert_ok(await authenticate(api, "testuser", scope="imap"))


async def test_asp_with_spaces_or_in_upper_case_still_works(api):
    user_id = await create_user(api, "testuser")
    password = (await create_asp(api, user_id, "Phone"))["password"]

    spaced = " ".join(password[index : index + 4] for index in range(0, 16, 4))  # "abcd efgh ijkl mnop"
    assert assert_ok(await authenticate(api, "testuser", spaced, scope="imap"))["id"] == user_id
    assert assert_ok(await authenticate(api, "testuser", password.upper(), scope="pop3"))["id"] == user_id
    # But a different password of the same shape does not.
    other = "".join("a" if char != "a" else "b" for char in password)
    assert_error(await authenticate(api, "testuser", other, scope="imap"), 403, "AuthFailed")


async def test_authlog_records_asp_changes_and_use(api):
    user_id = await create_user(api, "testuser")
    reply = await call(api, "POST", f"/users/{user_id}/asps", {"description": "App", "ip": "192.0.2.5"})
    asp = assert_ok(reply)
    assert_ok(await authenticate(api, "testuser", asp["password"], scope="smtp", ip="192.0.2.6"))
    assert_ok(await call(api, "DELETE", f"/users/{user_id}/asps/{asp['id']}?ip=192.0.2.7"))

    log = await get(api, f"/users/{user_id}/authlog")
    assert asp["password"] not in log.text
    entries = assert_ok(log)["results"]
    for entry in entries:
        del entry["id"], entry["created"]
    assert entries[:3] == [
        {"action": "delete asp", "result": "success", "asp": asp["id"], "ip": "192.0.2.7"},
        {"action": "authentication", "result": "success", "asp": asp["id"], "scope": "smtp", "ip": "192.0.2.6"},
        {"action": "create asp", "result": "success", "asp": asp["id"], "ip": "192.0.2.5"},
    ]


async def test_the_user_path_alias_works_like_users(api):
    # The reference's heading spells the listing GET /user/{user}/asps.
    user_id = await create_user(api, "testuser")
    created = assert_ok(await call(api, "POST", f"/user/{user_id}/asps", {"description": "Via alias"}))
    listed = assert_ok(await get(api, f"/user/{user_id}/asps"))["results"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert listed == await list_asps(api, user_id)
    assert_ok(await call(api, "DELETE", f"/user/{user_id}/asps/{created['id']}"))
    assert await list_asps(api, user_id) == []
