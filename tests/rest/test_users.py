"""REST: user accounts — POST/GET/PUT /users, listing and paging, and bad input.

Every bad request must be answered with a 4xx status and a JSON body holding
both ``error`` and ``code``, and must leave the store as it was; each test
checks the latter with a GET afterwards. ``helpers.call`` asserts on every
response that it is JSON and never a 500.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from helpers import (
    PASSWORD,
    UNKNOWN_ID,
    assert_error,
    assert_ok,
    authenticate,
    call,
    create_user,
    follow,
    get,
    get_user,
    ids_of,
    mailboxes,
)

GIB = 1073741824
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000


def expected_user(user_id: str, username: str, address: str, **changes: Any) -> dict[str, Any]:
    """GET /users/{id} of a user created with nothing but username and password."""
    user: dict[str, Any] = {
        "success": True,
        "id": user_id,
        "username": username,
        "name": "",
        "address": address,
        "language": "en",
        "forward": False,
        "targetUrl": False,
        "retention": False,
        "enabled2fa": False,
        "limits": {
            "quota": {"allowed": GIB, "used": 0},
            "recipients": {"allowed": 2000, "used": 0, "ttl": False},
            "forwards": {"allowed": 2000, "used": 0, "ttl": False},
        },
        "activated": True,
        "disabled": False,
    }
    user.update(changes)
    return user


# Creating and reading users


async def test_create_user_applies_defaults(api):
    user_id = await create_user(api, "TestUser")

    # The generated address is username@domain, lowercased; the username keeps its case.
    assert await get_user(api, user_id) == expected_user(user_id, "TestUser", "testuser@localhost")
    assert set(await mailboxes(api, user_id)) == {"INBOX", "Sent Mail", "Drafts", "Junk", "Trash", "Archive"}
    listed = assert_ok(await get(api, f"/users/{user_id}/addresses"))["results"]
    assert [(item["address"], item["main"]) for item in listed] == [("testuser@localhost", True)]


async def test_get_user_has_every_field_of_the_reference(api):
    user_id = await create_user(api, "testuser01", address="testuser01@example.com")
    reply = await get(api, f"/users/{user_id}")
    user = assert_ok(reply)

    # The fields of the reference's example, with the same types and values.
    assert user["id"] == user_id
    assert user["username"] == "testuser01"
    assert user["address"] == "testuser01@example.com"
    assert user["retention"] is False
    assert user["limits"] == {
        "quota": {"allowed": GIB, "used": 0},
        "recipients": {"allowed": 2000, "used": 0, "ttl": False},
        "forwards": {"allowed": 2000, "used": 0, "ttl": False},
    }
    assert user["activated"] is True
    assert user["disabled"] is False
    # Fields the reference's example leaves out but the parameters imply.
    assert {key: user[key] for key in ("name", "language", "forward", "targetUrl", "enabled2fa")} == {
        "name": "",
        "language": "en",
        "forward": False,
        "targetUrl": False,
        "enabled2fa": False,
    }


async def test_create_user_with_every_field(api):
    user_id = await create_user(
        api,
        "fulluser",
        address="Full.User@Example.COM",
        name="Full User",
        forward="elsewhere@example.org",
        targetUrl="https://example.org/upload",
        quota=1024,
        retention=3600000,
        language="et",
        recipients=10,
        forwards=5,
        ip="192.0.2.1",
    )

    assert await get_user(api, user_id) == expected_user(
        user_id,
        "fulluser",
        "Full.User@example.com",
        name="Full User",
        language="et",
        forward="elsewhere@example.org",
        targetUrl="https://example.org/upload",
        retention=3600000,
        limits={
            "quota": {"allowed": 1024, "used": 0},
            "recipients": {"allowed": 10, "used": 0, "ttl": False},
            "forwards": {"allowed": 5, "used": 0, "ttl": False},
        },
    )
    # The user's retention applies to the default mailboxes; Trash and Junk stay capped at 30 days.
    retention = {mailbox["specialUse"]: mailbox["retention"] for mailbox in (await mailboxes(api, user_id)).values()}
    assert retention == {
        None: 3600000,
        "\\Sent": 3600000,
        "\\Drafts": 3600000,
        "\\Junk": 3600000,
        "\\Trash": 3600000,
        "\\Archive": 3600000,
    }
    # The ip of the request is the one recorded for the account's creation.
    log = assert_ok(await get(api, f"/users/{user_id}/authlog"))["results"]
    assert [(entry["action"], entry["result"], entry["ip"]) for entry in log] == [
        ("account created", "success", "192.0.2.1")
    ]


async def test_new_user_can_authenticate(api):
    user_id = await create_user(api, "testuser")
    reply = await authenticate(api, "testuser")
    assert assert_ok(reply) == {
        "success": True,
        "id": user_id,
        "username": "testuser",
        "scope": "master",
        "require2fa": False,
    }


# Listing users


async def test_list_users_shape(api):
    user_id = await create_user(api, "testuser01", name="Test User")
    body = assert_ok(await get(api, "/users", query="testuser01"))
    assert body == {
        "success": True,
        "query": "testuser01",
        "total": 1,
        "page": 1,
        "prev": False,
        "next": False,
        "results": [
            {
                "id": user_id,
                "username": "testuser01",
                "name": "Test User",
                "address": "testuser01@localhost",
                "quota": {"allowed": GIB, "used": 0},
                "disabled": False,
            }
        ],
    }


async def test_list_users_query_is_a_partial_case_insensitive_match(api):
    alpha_one = await create_user(api, "AlphaOne")
    alpha_two = await create_user(api, "alphatwo")
    beta = await create_user(api, "beta")

    async def found(query: str) -> list[str]:
        body = assert_ok(await get(api, "/users", query=query))
        assert body["query"] == query
        assert body["total"] == len(body["results"])
        return [item["id"] for item in body["results"]]

    assert await found("ALPHA") == [alpha_one, alpha_two]
    assert await found("pha") == [alpha_one, alpha_two]
    assert await found("Eta") == [beta]
    assert await found("aTwO") == [alpha_two]
    assert await found("nobody") == []

    everyone = assert_ok(await get(api, "/users"))
    assert everyone["query"] == ""
    assert everyone["total"] == 3
    assert [item["id"] for item in everyone["results"]] == [alpha_one, alpha_two, beta]


async def test_list_users_limit(api):
    ids = [await create_user(api, f"limited{number}") for number in range(3)]
    body = assert_ok(await get(api, "/users", limit=2))
    assert [item["id"] for item in body["results"]] == ids[:2]
    assert body["total"] == 3
    assert body["page"] == 1
    assert body["prev"] is False
    assert isinstance(body["next"], str)

    body = assert_ok(await get(api, "/users", limit=3))
    assert [item["id"] for item in body["results"]] == ids
    assert body["next"] is False


async def test_paging_follows_next_to_the_end_and_prev_back(api):
    ids = [await create_user(api, f"pager{number}") for number in range(7)]

    pages = await follow(api, "/users?limit=3")
    assert [len(page["results"]) for page in pages] == [3, 3, 1]
    assert ids_of(pages) == ids  # every user exactly once, in creation order
    assert [page["page"] for page in pages] == [1, 2, 3]
    assert [page["total"] for page in pages] == [7, 7, 7]
    assert pages[0]["prev"] is False
    assert all("limit=3" in page["next"] for page in pages[:-1])

    back = await follow(api, pages[-1]["prev"], "prev")
    assert [page["page"] for page in back] == [2, 1]
    assert [[item["id"] for item in page["results"]] for page in back] == [ids[3:6], ids[0:3]]
    assert all(isinstance(page["next"], str) for page in back)
    assert back[-1]["prev"] is False


async def test_paging_keeps_the_query(api):
    matching = []
    for number in range(5):
        matching.append(await create_user(api, f"match{number}"))
        await create_user(api, f"other{number}")

    pages = await follow(api, "/users?query=MATCH&limit=2")
    assert ids_of(pages) == matching
    assert [page["query"] for page in pages] == ["MATCH"] * 3
    assert [page["total"] for page in pages] == [5, 5, 5]


async def test_users_added_while_paging_cause_no_repeats_or_skips(api):
    originals = [await create_user(api, f"orig{number}") for number in range(7)]

    first = assert_ok(await get(api, "/users", limit=3))
    added = [await create_user(api, "added0")]
    second = assert_ok(await call(api, "GET", first["next"]))
    added.append(await create_user(api, "added1"))
    rest = await follow(api, second["next"])

    collected = ids_of([first, second, *rest])
    assert len(collected) == len(set(collected)), "a user was listed twice"
    assert [user_id for user_id in collected if user_id in originals] == originals
    # Users created after the listing started come after the originals.
    assert collected == originals + added


# Updating users


async def test_update_quota(api):
    user_id = await create_user(api, "testuser")
    reply = await call(api, "PUT", f"/users/{user_id}", {"quota": 1024})
    assert assert_ok(reply) == {"success": True}
    assert (await get_user(api, user_id))["limits"]["quota"] == {"allowed": 1024, "used": 0}
    listed = assert_ok(await get(api, "/users", query="testuser"))["results"]
    assert listed[0]["quota"] == {"allowed": 1024, "used": 0}


async def test_update_other_fields(api):
    user_id = await create_user(api, "testuser")
    changes = {"name": "New Name", "language": "de", "retention": 86400000, "recipients": 100, "forwards": 50}
    assert_ok(await call(api, "PUT", f"/users/{user_id}", changes))

    user = await get_user(api, user_id)
    assert (user["name"], user["language"], user["retention"]) == ("New Name", "de", 86400000)
    assert user["limits"]["recipients"] == {"allowed": 100, "used": 0, "ttl": False}
    assert user["limits"]["forwards"] == {"allowed": 50, "used": 0, "ttl": False}

    # An empty update changes nothing and succeeds.
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {}))
    assert await get_user(api, user_id) == user


async def test_password_change(api):
    user_id = await create_user(api, "testuser")
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"password": "newsecret"}))

    assert_error(await authenticate(api, "testuser", PASSWORD), 403, "AuthFailed")
    assert assert_ok(await authenticate(api, "testuser", "newsecret"))["id"] == user_id


async def test_wrong_existing_password_changes_nothing(api):
    user_id = await create_user(api, "testuser")
    before = await get_user(api, user_id)

    reply = await call(
        api,
        "PUT",
        f"/users/{user_id}",
        {"name": "Changed", "quota": 1, "password": "newsecret", "existingPassword": "wrongpass"},
    )
    assert_error(reply, 403, "AuthFailed")
    assert await get_user(api, user_id) == before
    assert_ok(await authenticate(api, "testuser", PASSWORD))
    assert_error(await authenticate(api, "testuser", "newsecret"), 403, "AuthFailed")


async def test_right_existing_password_applies_the_change(api):
    user_id = await create_user(api, "testuser")
    reply = await call(
        api, "PUT", f"/users/{user_id}", {"name": "Changed", "password": "newsecret", "existingPassword": PASSWORD}
    )
    assert assert_ok(reply) == {"success": True}
    assert (await get_user(api, user_id))["name"] == "Changed"
    assert_ok(await authenticate(api, "testuser", "newsecret"))
    assert_error(await authenticate(api, "testuser", PASSWORD), 403, "AuthFailed")


async def test_disabled_user_can_not_authenticate(api):
    user_id = await create_user(api, "testuser")
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"disabled": True}))

    assert (await get_user(api, user_id))["disabled"] is True
    assert assert_ok(await get(api, "/users"))["results"][0]["disabled"] is True
    for scope in ("master", "imap", "pop3", "smtp"):
        assert_error(await authenticate(api, "testuser", scope=scope), 403, "AuthFailed")

    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"disabled": False}))
    assert_ok(await authenticate(api, "testuser"))


@pytest.mark.parametrize(
    ("field", "value"), [("forward", "elsewhere@example.org"), ("targetUrl", "https://example.org/upload")]
)
async def test_forward_and_target_url_are_set_and_cleared(api, field, value):
    user_id = await create_user(api, "testuser")
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {field: value}))
    assert (await get_user(api, user_id))[field] == value

    # The reference's convention: an empty string clears the setting.
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {field: ""}))
    assert (await get_user(api, user_id))[field] is False


# Bad input: POST /users

VALID = {"username": "baduser", "password": PASSWORD}

BAD_CREATE_BODIES = [
    pytest.param(b'{"username": "baduser", "password": ', id="malformed-json"),
    pytest.param(b"{'username': 'baduser'}", id="single-quoted-json"),
    pytest.param(orjson.dumps([VALID]), id="json-array"),
    pytest.param(b'"baduser"', id="json-string"),
    pytest.param(b"null", id="json-null"),
    pytest.param(orjson.dumps({**VALID, "quota": "1024"}), id="quota-as-string"),
    pytest.param(orjson.dumps({**VALID, "quota": 1024.5}), id="quota-as-float"),
    pytest.param(orjson.dumps({**VALID, "quota": -1}), id="negative-quota"),
    pytest.param(orjson.dumps({**VALID, "username": 123}), id="username-as-number"),
    pytest.param(orjson.dumps({**VALID, "colour": "red"}), id="unknown-field"),
    pytest.param(orjson.dumps({**VALID, "username": "bad.name"}), id="username-with-dot"),
    pytest.param(orjson.dumps({**VALID, "username": "bad name"}), id="username-with-space"),
    pytest.param(orjson.dumps({**VALID, "username": ""}), id="empty-username"),
    pytest.param(orjson.dumps({"username": "baduser"}), id="missing-password"),
    pytest.param(orjson.dumps({**VALID, "password": ""}), id="empty-password"),
    pytest.param(orjson.dumps({"password": PASSWORD}), id="missing-username"),
    pytest.param(orjson.dumps({**VALID, "address": "not-an-address"}), id="invalid-address"),
    pytest.param(orjson.dumps({**VALID, "forward": "not-an-address"}), id="invalid-forward"),
    pytest.param(orjson.dumps({**VALID, "targetUrl": "ftp://example.org/"}), id="invalid-target-url"),
    pytest.param(orjson.dumps({**VALID, "language": "english!"}), id="invalid-language"),
    pytest.param(orjson.dumps({**VALID, "ip": "not-an-ip"}), id="invalid-ip"),
]


@pytest.mark.parametrize("raw", BAD_CREATE_BODIES)
async def test_create_user_refuses_bad_input(api, raw):
    existing = await create_user(api, "existing")

    reply = await call(api, "POST", "/users", data=raw)
    assert_error(reply, 400, "InputValidationError")

    body = assert_ok(await get(api, "/users"))
    assert (body["total"], [item["id"] for item in body["results"]]) == (1, [existing])
    # Nothing of the refused user was stored, not even its address.
    assert assert_ok(await get(api, "/addresses", query="baduser"))["total"] == 0


async def test_duplicate_username_is_refused(api):
    user_id = await create_user(api, "testuser", address="first@example.com")

    for username in ("testuser", "TestUser", "TESTUSER"):
        reply = await call(
            api, "POST", "/users", {"username": username, "password": PASSWORD, "address": "second@example.com"}
        )
        assert_error(reply, 409, "UserExistsError")

    body = assert_ok(await get(api, "/users", query="testuser"))
    assert [item["id"] for item in body["results"]] == [user_id]
    # The refused users' address was not left behind: it can still be taken.
    assert assert_ok(await get(api, "/addresses", query="second@example.com"))["total"] == 0
    await create_user(api, "otheruser", address="second@example.com")


async def test_duplicate_address_is_refused_and_the_user_not_created(api):
    first = await create_user(api, "dupaddr1", address="shared@example.com")

    reply = await call(
        api, "POST", "/users", {"username": "dupaddr2", "password": PASSWORD, "address": "Shared@EXAMPLE.com"}
    )
    assert_error(reply, 409, "AddressExists")

    body = assert_ok(await get(api, "/users", query="dupaddr"))
    assert (body["total"], [item["id"] for item in body["results"]]) == (1, [first])
    # Nothing was left half-created: the username is still free.
    second = await create_user(api, "dupaddr2", address="other@example.com")
    assert (await get_user(api, second))["address"] == "other@example.com"


async def test_generated_address_clashing_with_an_alias_is_refused(api):
    owner = await create_user(api, "owner")
    assert_ok(await call(api, "POST", f"/users/{owner}/addresses", {"address": "carol@localhost"}))

    assert_error(await call(api, "POST", "/users", {"username": "Carol", "password": PASSWORD}), 409, "AddressExists")
    assert assert_ok(await get(api, "/users", query="carol"))["total"] == 0


# Bad input: PUT /users/{id}

BAD_UPDATE_BODIES = [
    pytest.param(b'{"name": "Changed"', id="malformed-json"),
    pytest.param(orjson.dumps([{"name": "Changed"}]), id="json-array"),
    pytest.param(orjson.dumps({"quota": "1024"}), id="quota-as-string"),
    pytest.param(orjson.dumps({"quota": -1}), id="negative-quota"),
    pytest.param(orjson.dumps({"disabled": "yes"}), id="disabled-as-string"),
    pytest.param(orjson.dumps({"disabled": 1}), id="disabled-as-number"),
    pytest.param(orjson.dumps({"name": 123}), id="name-as-number"),
    pytest.param(orjson.dumps({"nmae": "Changed"}), id="unknown-field"),
    pytest.param(orjson.dumps({"username": "renamed"}), id="username-not-updatable"),
    pytest.param(orjson.dumps({"name": "Changed", "quota": -1}), id="valid-and-invalid-field"),
    pytest.param(orjson.dumps({"name": "Changed", "forward": "not-an-address"}), id="invalid-forward"),
    pytest.param(orjson.dumps({"targetUrl": "javascript:alert(1)"}), id="invalid-target-url"),
    pytest.param(orjson.dumps({"password": ""}), id="empty-password"),
    pytest.param(orjson.dumps({"password": "x" * 73}), id="password-over-72-bytes"),
]


@pytest.mark.parametrize("raw", BAD_UPDATE_BODIES)
async def test_update_user_refuses_bad_input(api, raw):
    user_id = await create_user(api, "testuser")
    before = await get_user(api, user_id)

    assert_error(await call(api, "PUT", f"/users/{user_id}", data=raw), 400, "InputValidationError")

    assert await get_user(api, user_id) == before
    assert_ok(await authenticate(api, "testuser", PASSWORD))


# Bad input: query strings


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=0",
        "limit=1000",
        "limit=-1",
        "limit=2.5",
        "page=0",
        "page=abc",
        "next=garbage",
        "previous=garbage",
        "colour=red",
    ],
)
async def test_list_users_refuses_bad_query(api, query):
    user_id = await create_user(api, "testuser")
    assert_error(await call(api, "GET", f"/users?{query}"), 400, "InputValidationError")
    body = assert_ok(await get(api, "/users"))
    assert (body["total"], [item["id"] for item in body["results"]]) == (1, [user_id])


async def test_paging_cursor_is_checked(api):
    for number in range(3):
        await create_user(api, f"cursor{number}")
    first = assert_ok(await get(api, "/users", limit=1))
    cursor = first["next"].split("next=")[1].split("&")[0]

    # A next cursor is not a previous cursor, and both at once make no sense.
    assert_error(await call(api, "GET", f"/users?limit=1&previous={cursor}"), 400, "InputValidationError")
    assert_error(await call(api, "GET", f"/users?limit=1&next={cursor}&previous={cursor}"), 400, "InputValidationError")
    # A tampered cursor is refused, not passed on to storage.
    assert_error(await call(api, "GET", f"/users?limit=1&next={cursor[:-2]}"), 400, "InputValidationError")
    assert_ok(await call(api, "GET", f"/users?limit=1&next={cursor}"))


# Bad input: ids in paths

USER_PATHS = [
    ("GET", "/users/{}"),
    ("PUT", "/users/{}"),
    ("GET", "/users/{}/addresses"),
    ("POST", "/users/{}/addresses"),
    ("GET", "/users/{}/mailboxes"),
    ("POST", "/users/{}/mailboxes"),
    ("GET", "/users/{}/asps"),
    ("POST", "/users/{}/asps"),
    ("GET", "/users/{}/authlog"),
    ("POST", "/users/{}/2fa"),
    ("DELETE", "/users/{}/2fa"),
    ("POST", "/users/{}/quota/reset"),
]

BODIES = {
    "PUT /users/{}": {"name": "Changed"},
    "POST /users/{}/addresses": {"address": "new@example.com"},
    "POST /users/{}/mailboxes": {"path": "New"},
    "POST /users/{}/asps": {"description": "App"},
}


@pytest.mark.parametrize(("method", "template"), USER_PATHS, ids=[f"{m} {p}" for m, p in USER_PATHS])
async def test_invalid_and_unknown_user_ids(api, method, template):
    user_id = await create_user(api, "testuser")
    before = await get_user(api, user_id)
    payload = BODIES.get(f"{method} {template}", {})

    assert_error(await call(api, method, template.format("zzz"), payload), 400, "InputValidationError")
    assert_error(await call(api, method, template.format(UNKNOWN_ID), payload), 404, "UserNotFound")
    # An id with one character too many is malformed, not a prefix match.
    assert_error(await call(api, method, template.format(user_id + "0"), payload), 400, "InputValidationError")

    assert await get_user(api, user_id) == before
    assert assert_ok(await get(api, "/users"))["total"] == 1
    assert assert_ok(await get(api, "/addresses"))["total"] == 1


@pytest.mark.parametrize(
    ("method", "template", "not_found"),
    [
        ("GET", "/users/{user}/addresses/{id}", "AddressNotFound"),
        ("PUT", "/users/{user}/addresses/{id}", "AddressNotFound"),
        ("DELETE", "/users/{user}/addresses/{id}", "AddressNotFound"),
        ("GET", "/users/{user}/mailboxes/{id}", "MailboxNotFound"),
        ("PUT", "/users/{user}/mailboxes/{id}", "MailboxNotFound"),
        ("DELETE", "/users/{user}/mailboxes/{id}", "MailboxNotFound"),
        ("DELETE", "/users/{user}/asps/{id}", "AspNotFound"),
    ],
)
async def test_invalid_and_unknown_sub_resource_ids(api, method, template, not_found):
    user_id = await create_user(api, "testuser")
    payload = {"main": True} if "addresses" in template and method == "PUT" else {}
    before = await mailboxes(api, user_id)

    reply = await call(api, method, template.format(user=user_id, id="zzz"), payload)
    assert_error(reply, 400, "InputValidationError")
    reply = await call(api, method, template.format(user=user_id, id=UNKNOWN_ID), payload)
    assert_error(reply, 404, not_found)

    assert await mailboxes(api, user_id) == before
    assert len(assert_ok(await get(api, f"/users/{user_id}/addresses"))["results"]) == 1


# Bad input: the HTTP level


async def test_oversized_body_is_refused(make_api):
    api = await make_api(max_body_size=1000)
    user_id = await create_user(api, "testuser")
    before = await get_user(api, user_id)

    empty = orjson.dumps({"username": "biguser", "password": PASSWORD, "name": ""})
    big = orjson.dumps({"username": "biguser", "password": PASSWORD, "name": "x" * (2000 - len(empty))})
    assert len(big) == 2000
    assert_error(await call(api, "POST", "/users", data=big), 413, "PayloadTooLarge")
    big_update = orjson.dumps({"name": "y" * 2000})
    assert_error(await call(api, "PUT", f"/users/{user_id}", data=big_update), 413, "PayloadTooLarge")

    assert assert_ok(await get(api, "/users"))["total"] == 1
    assert await get_user(api, user_id) == before
    # A body under the limit is still accepted.
    assert_ok(await call(api, "PUT", f"/users/{user_id}", {"name": "z" * 200}))


@pytest.mark.parametrize("path", ["/nothing", "/users/0123456789abcdef01234567/nothing", "/user", "/users/"])
async def test_unknown_endpoint(api, path):
    assert_error(await call(api, "GET", path), 404, "NotFound")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/users"),
        ("PATCH", "/users"),
        ("DELETE", f"/users/{UNKNOWN_ID}"),
        ("GET", "/authenticate"),
        ("PUT", "/addresses"),
        ("GET", f"/users/{UNKNOWN_ID}/quota/reset"),
    ],
)
async def test_wrong_method(api, method, path):
    user_id = await create_user(api, "testuser")
    assert_error(await call(api, method, path.replace(UNKNOWN_ID, user_id)), 405, "MethodNotAllowed")
    assert assert_ok(await get(api, "/users"))["total"] == 1
