"""REST: mailboxes (/users/{id}/mailboxes, also under the /user/{id}/ spelling)."""

from __future__ import annotations

import unicodedata

import pytest
from helpers import (
    OBJECT_ID,
    assert_error,
    assert_ok,
    call,
    create_mailbox,
    create_user,
    get,
    mailboxes,
)

THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
MAILBOX_FIELDS = {"id", "name", "path", "specialUse", "modifyIndex", "subscribed", "retention"}
ENGLISH = [
    ("INBOX", None),
    ("Archive", "\\Archive"),
    ("Drafts", "\\Drafts"),
    ("Junk", "\\Junk"),
    ("Sent Mail", "\\Sent"),
    ("Trash", "\\Trash"),
]


async def listing(api, user_id, prefix="/users"):
    return assert_ok(await get(api, f"{prefix}/{user_id}/mailboxes"))["results"]


async def test_new_user_has_the_default_mailboxes(api):
    user_id = await create_user(api, "testuser")
    results = await listing(api, user_id)

    # INBOX first, then by path.
    assert [(item["path"], item["specialUse"]) for item in results] == ENGLISH
    for item in results:
        assert set(item) == MAILBOX_FIELDS, item
        assert OBJECT_ID.fullmatch(item["id"])
        assert item["name"] == item["path"]
        assert item["subscribed"] is True
        assert item["modifyIndex"] == 0
    assert len({item["id"] for item in results}) == 6
    # Trash and Junk keep messages for 30 days at most; the rest for ever.
    assert {item["path"]: item["retention"] for item in results} == {
        "INBOX": False,
        "Archive": False,
        "Drafts": False,
        "Junk": THIRTY_DAYS_MS,
        "Sent Mail": False,
        "Trash": THIRTY_DAYS_MS,
    }


@pytest.mark.parametrize(
    ("language", "names"),
    [
        ("et", ["Saadetud kirjad", "Mustandid", "Rämpspost", "Prügikast", "Arhiiv"]),
        ("de", ["Gesendet", "Entwürfe", "Spam", "Papierkorb", "Archiv"]),
        ("xx", ["Sent Mail", "Drafts", "Junk", "Trash", "Archive"]),
        ("en", ["Sent Mail", "Drafts", "Junk", "Trash", "Archive"]),
    ],
)
async def test_default_mailbox_names_follow_the_language(api, language, names):
    user_id = await create_user(api, "testuser", language=language)
    by_use = {item["specialUse"]: item["path"] for item in await listing(api, user_id)}
    assert by_use == {
        None: "INBOX",
        "\\Sent": names[0],
        "\\Drafts": names[1],
        "\\Junk": names[2],
        "\\Trash": names[3],
        "\\Archive": names[4],
    }


async def test_counters(api):
    user_id = await create_user(api, "testuser")
    body = assert_ok(await get(api, f"/users/{user_id}/mailboxes", counters="true"))

    # The reference lists counters under "mailboxes"; "results" is kept for uniformity.
    assert body["mailboxes"] == body["results"]
    assert [(item["path"], item["specialUse"]) for item in body["mailboxes"]] == ENGLISH
    for item in body["mailboxes"]:
        assert set(item) == MAILBOX_FIELDS | {"total", "unseen"}
        assert (item["total"], item["unseen"]) == (0, 0)

    plain = assert_ok(await get(api, f"/users/{user_id}/mailboxes", counters="false"))
    assert "mailboxes" not in plain
    assert all("total" not in item for item in plain["results"])
    assert_error(await get(api, f"/users/{user_id}/mailboxes", counters="maybe"), 400, "InputValidationError")


async def test_get_one_mailbox(api):
    user_id = await create_user(api, "testuser")
    inbox = (await mailboxes(api, user_id))["INBOX"]
    body = assert_ok(await get(api, f"/users/{user_id}/mailboxes/{inbox['id']}"))
    assert body == {"success": True, **inbox, "total": 0, "unseen": 0}


async def test_create_a_nested_mailbox(api):
    user_id = await create_user(api, "testuser")
    path = "Some parent/Subfolder/My New mailbox"
    mailbox_id = await create_mailbox(api, user_id, path)

    body = assert_ok(await get(api, f"/users/{user_id}/mailboxes/{mailbox_id}"))
    assert body == {
        "success": True,
        "id": mailbox_id,
        "name": "My New mailbox",
        "path": path,
        "specialUse": None,
        "modifyIndex": 0,
        "subscribed": True,
        "retention": False,
        "total": 0,
        "unseen": 0,
    }
    assert (await mailboxes(api, user_id))[path]["id"] == mailbox_id


async def test_create_with_retention_and_unsubscribed(api):
    user_id = await create_user(api, "testuser")
    mailbox_id = await create_mailbox(api, user_id, "Kept", retention=3600000, subscribed=False)
    body = assert_ok(await get(api, f"/users/{user_id}/mailboxes/{mailbox_id}"))
    assert (body["retention"], body["subscribed"]) == (3600000, False)


async def test_create_a_unicode_mailbox(api):
    user_id = await create_user(api, "testuser")
    path = "Входящие/Ünïcödé 📬"
    mailbox_id = await create_mailbox(api, user_id, path)
    body = assert_ok(await get(api, f"/users/{user_id}/mailboxes/{mailbox_id}"))
    assert (body["path"], body["name"]) == (path, "Ünïcödé 📬")

    # The same name in decomposed Unicode is the same mailbox.
    decomposed = unicodedata.normalize("NFD", path)
    assert decomposed != path
    reply = await call(api, "POST", f"/users/{user_id}/mailboxes", {"path": decomposed})
    assert_error(reply, 409, "MailboxExists")


@pytest.mark.parametrize("path", ["My Folder", "INBOX", "inbox", "Trash"])
async def test_duplicate_path_is_refused(api, path):
    user_id = await create_user(api, "testuser")
    await create_mailbox(api, user_id, "My Folder")
    before = await mailboxes(api, user_id)

    assert_error(await call(api, "POST", f"/users/{user_id}/mailboxes", {"path": path}), 409, "MailboxExists")
    assert await mailboxes(api, user_id) == before


async def test_the_same_path_for_another_user_is_fine(api):
    first = await create_user(api, "first")
    second = await create_user(api, "second")
    await create_mailbox(api, first, "Shared Name")
    await create_mailbox(api, second, "Shared Name")
    assert "Shared Name" in await mailboxes(api, first)
    assert "Shared Name" in await mailboxes(api, second)


@pytest.mark.parametrize(
    "payload",
    [
        {"path": ""},
        {"path": "a//b"},
        {"path": "/a"},
        {"path": "a/"},
        {"path": "   "},
        {"path": "a/ /b"},
        {"path": "bad\x00name"},
        {"path": 42},
        {},
        {"path": "x" * 300},
        {"path": "Fine", "retention": -1},
        {"path": "Fine", "retention": "1000"},
        {"path": "Fine", "specialUse": "\\Trash"},
    ],
    ids=[
        "empty",
        "double-slash",
        "leading-slash",
        "trailing-slash",
        "blank",
        "blank-segment",
        "nul",
        "number",
        "missing",
        "segment-too-long",
        "negative-retention",
        "retention-string",
        "unknown-field",
    ],
)
async def test_create_refuses_bad_input(api, payload):
    user_id = await create_user(api, "testuser")
    before = await mailboxes(api, user_id)
    assert_error(await call(api, "POST", f"/users/{user_id}/mailboxes", payload), 400, "InputValidationError")
    assert await mailboxes(api, user_id) == before


async def test_rename_moves_children_too(api):
    user_id = await create_user(api, "testuser")
    parent = await create_mailbox(api, user_id, "A")
    child = await create_mailbox(api, user_id, "A/B")
    grandchild = await create_mailbox(api, user_id, "A/B/D")
    lookalike = await create_mailbox(api, user_id, "AB")

    reply = await call(api, "PUT", f"/users/{user_id}/mailboxes/{parent}", {"path": "C"})
    assert assert_ok(reply) == {"success": True}

    after = await mailboxes(api, user_id)
    assert (after["C"]["id"], after["C/B"]["id"], after["C/B/D"]["id"]) == (parent, child, grandchild)
    assert (after["C"]["name"], after["C/B"]["name"], after["C/B/D"]["name"]) == ("C", "B", "D")
    assert after["AB"]["id"] == lookalike  # only children move, not names that merely start alike
    assert not {"A", "A/B", "A/B/D"} & set(after)


async def test_rename_a_child_into_a_new_parent(api):
    user_id = await create_user(api, "testuser")
    mailbox_id = await create_mailbox(api, user_id, "Projects/Old")
    assert_ok(await call(api, "PUT", f"/users/{user_id}/mailboxes/{mailbox_id}", {"path": "Archive/2017/Old"}))
    body = assert_ok(await get(api, f"/users/{user_id}/mailboxes/{mailbox_id}"))
    assert (body["path"], body["name"]) == ("Archive/2017/Old", "Old")


async def test_inbox_can_not_be_renamed(api):
    user_id = await create_user(api, "testuser")
    before = await mailboxes(api, user_id)
    reply = await call(api, "PUT", f"/users/{user_id}/mailboxes/{before['INBOX']['id']}", {"path": "Renamed"})
    assert_error(reply, 403, "NotAllowed")
    assert await mailboxes(api, user_id) == before


@pytest.mark.parametrize("target", ["INBOX", "inbox", "Mine/Below"])
async def test_rename_to_inbox_or_below_itself_is_refused(api, target):
    user_id = await create_user(api, "testuser")
    await create_mailbox(api, user_id, "Mine")
    before = await mailboxes(api, user_id)
    reply = await call(api, "PUT", f"/users/{user_id}/mailboxes/{before['Mine']['id']}", {"path": target})
    assert_error(reply, 403, "NotAllowed")
    assert await mailboxes(api, user_id) == before


async def test_rename_to_an_existing_path_changes_nothing(api):
    user_id = await create_user(api, "testuser")
    source = await create_mailbox(api, user_id, "X")
    await create_mailbox(api, user_id, "Y")
    before = await mailboxes(api, user_id)

    assert_error(await call(api, "PUT", f"/users/{user_id}/mailboxes/{source}", {"path": "Y"}), 409, "MailboxExists")
    reply = await call(api, "PUT", f"/users/{user_id}/mailboxes/{source}", {"path": "Trash"})
    assert_error(reply, 409, "MailboxExists")
    assert await mailboxes(api, user_id) == before


async def test_rename_whose_child_would_clash_changes_nothing(api):
    user_id = await create_user(api, "testuser")
    parent = await create_mailbox(api, user_id, "P")
    await create_mailbox(api, user_id, "P/A")
    await create_mailbox(api, user_id, "P/Q")
    await create_mailbox(api, user_id, "R/Q")  # "R" itself does not exist
    before = await mailboxes(api, user_id)

    # Renaming P to R would move P/Q onto the existing R/Q: refused as a whole.
    assert_error(await call(api, "PUT", f"/users/{user_id}/mailboxes/{parent}", {"path": "R"}), 409, "MailboxExists")
    assert await mailboxes(api, user_id) == before


async def test_rename_refuses_bad_paths(api):
    user_id = await create_user(api, "testuser")
    mailbox_id = await create_mailbox(api, user_id, "Mine")
    before = await mailboxes(api, user_id)
    for path in ("", "a//b", "/a", 7):
        reply = await call(api, "PUT", f"/users/{user_id}/mailboxes/{mailbox_id}", {"path": path})
        assert_error(reply, 400, "InputValidationError")
    assert await mailboxes(api, user_id) == before


async def test_update_retention_and_subscription(api):
    user_id = await create_user(api, "testuser")
    mailbox_id = await create_mailbox(api, user_id, "Mine")
    path = f"/users/{user_id}/mailboxes/{mailbox_id}"

    assert assert_ok(await call(api, "PUT", path, {"retention": 86400000})) == {"success": True}
    assert assert_ok(await get(api, path))["retention"] == 86400000
    assert_ok(await call(api, "PUT", path, {"subscribed": False}))
    body = assert_ok(await get(api, path))
    assert (body["retention"], body["subscribed"], body["path"]) == (86400000, False, "Mine")
    assert_ok(await call(api, "PUT", path, {"retention": 0}))
    assert assert_ok(await get(api, path))["retention"] is False

    # Trash keeps its 30-day cap.
    trash = (await mailboxes(api, user_id))["Trash"]["id"]
    assert_ok(await call(api, "PUT", f"/users/{user_id}/mailboxes/{trash}", {"retention": 2 * THIRTY_DAYS_MS}))
    assert assert_ok(await get(api, f"/users/{user_id}/mailboxes/{trash}"))["retention"] == THIRTY_DAYS_MS

    before = await mailboxes(api, user_id)
    for payload in ({"retention": -5}, {"retention": "1"}, {"subscribed": "no"}, {"name": "x"}):
        assert_error(await call(api, "PUT", path, payload), 400, "InputValidationError")
    assert await mailboxes(api, user_id) == before


async def test_delete_a_mailbox(api):
    user_id = await create_user(api, "testuser")
    mailbox_id = await create_mailbox(api, user_id, "Temporary")
    path = f"/users/{user_id}/mailboxes/{mailbox_id}"

    assert assert_ok(await call(api, "DELETE", path)) == {"success": True}
    assert_error(await get(api, path), 404, "MailboxNotFound")
    assert_error(await call(api, "DELETE", path), 404, "MailboxNotFound")
    assert_error(await call(api, "PUT", path, {"retention": 1}), 404, "MailboxNotFound")
    assert "Temporary" not in await mailboxes(api, user_id)
    # The path can be used again, by a new mailbox.
    assert await create_mailbox(api, user_id, "Temporary") != mailbox_id


@pytest.mark.parametrize("path", ["INBOX", "Trash", "Sent Mail", "Drafts", "Junk", "Archive"])
async def test_special_mailboxes_can_not_be_deleted(api, path):
    user_id = await create_user(api, "testuser")
    before = await mailboxes(api, user_id)
    reply = await call(api, "DELETE", f"/users/{user_id}/mailboxes/{before[path]['id']}")
    assert_error(reply, 403, "NotAllowed")
    assert await mailboxes(api, user_id) == before


async def test_mailbox_of_another_user_is_not_found(api):
    owner = await create_user(api, "owner")
    other = await create_user(api, "other")
    mailbox_id = await create_mailbox(api, owner, "Private")
    path = f"/users/{other}/mailboxes/{mailbox_id}"

    assert_error(await get(api, path), 404, "MailboxNotFound")
    assert_error(await call(api, "PUT", path, {"path": "Stolen"}), 404, "MailboxNotFound")
    assert_error(await call(api, "DELETE", path), 404, "MailboxNotFound")
    assert (await mailboxes(api, owner))["Private"]["id"] == mailbox_id


async def test_the_user_path_alias_works_like_users(api):
    user_id = await create_user(api, "testuser")
    assert await listing(api, user_id, "/user") == await listing(api, user_id, "/users")

    created = assert_ok(await call(api, "POST", f"/user/{user_id}/mailboxes", {"path": "Via Alias"}))
    one = assert_ok(await get(api, f"/user/{user_id}/mailboxes/{created['id']}"))
    assert one["path"] == "Via Alias"
    assert_ok(await call(api, "PUT", f"/user/{user_id}/mailboxes/{created['id']}", {"path": "Renamed"}))
    assert (await mailboxes(api, user_id))["Renamed"]["id"] == created["id"]
    assert_ok(await call(api, "DELETE", f"/user/{user_id}/mailboxes/{created['id']}"))
    assert "Renamed" not in await mailboxes(api, user_id)
    assert_error(await get(api, "/user/zzz/mailboxes"), 400, "InputValidationError")
    assert_error(await get(api, "/user/0123456789abcdef01234567/mailboxes"), 404, "UserNotFound")
