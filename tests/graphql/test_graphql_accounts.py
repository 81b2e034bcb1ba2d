"""GraphQL: users, addresses, authentication, the authlog, 2FA, application passwords and quota.

Every operation goes through gql over HTTP against a real server, on both
storage backends. Where REST offers the same thing, the answers are compared
with REST's, since both front ends must show the core the same way.
"""

from __future__ import annotations

import time
from typing import Any

import pyotp
import pytest
from gqlhelpers import PASSWORD, USER_FIELDS, Gql, core, create_user
from helpers import UNKNOWN_ID, deliver_ok, simple_message

USER_QUERY = f"query($id: ID!) {{ user(id: $id) {{ {USER_FIELDS} }} }}"
AUTHENTICATE = """
    mutation($input: AuthenticateInput!) {
        authenticate(input: $input) { id username scope require2fa user { id address } }
    }
"""


async def rest_user(api: Any, user_id: str) -> dict[str, Any]:
    async with api.get(f"/users/{user_id}") as response:
        assert response.status == 200
        return await response.json()


async def test_user_shows_what_rest_shows(api, graphql: Gql):
    created = await create_user(graphql, address="testuser@example.com", name="Test User", quota=5 * 2**30)
    user = (await graphql.data(USER_QUERY, id=created["id"]))["user"]
    assert user == created
    rest = await rest_user(api, created["id"])
    for field in ("id", "username", "name", "address", "language", "enabled2fa", "activated", "disabled"):
        assert user[field] == rest[field], field
    assert user["forward"] is None and rest["forward"] is False
    assert user["retention"] is None and rest["retention"] is False
    # A 5 GiB quota does not fit GraphQL's Int; it is a Long.
    assert user["limits"]["quota"] == rest["limits"]["quota"] == {"allowed": 5 * 2**30, "used": 0}
    assert user["limits"]["recipients"] == {"allowed": 2000, "used": 0, "ttl": None}
    assert user["created"].endswith("Z")


async def test_create_user_defaults_and_conflicts(graphql: Gql):
    user = await create_user(graphql, "plain")
    assert user["address"] == "plain@localhost"
    assert user["language"] == "en"
    mailboxes = await graphql.data("query($id: ID!) { user(id: $id) { mailboxes { path specialUse } } }", id=user["id"])
    assert mailboxes["user"]["mailboxes"][0]["path"] == "INBOX"
    query = "mutation($input: CreateUserInput!) { createUser(input: $input) { id } }"
    await graphql.error(query, "UserExistsError", input={"username": "PLAIN", "password": PASSWORD})
    await graphql.error(
        query, "AddressExists", input={"username": "other", "password": PASSWORD, "address": "Plain@LOCALHOST"}
    )


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"username": "bad name"}, "username: use only letters and digits"),
        ({"quota": -1}, "quota: Input should be greater than or equal to 0"),
        ({"address": "not-an-address"}, "Invalid email address"),
        ({"language": "english!"}, "language:"),
        ({"targetUrl": "ftp://example.com/x"}, "targetUrl: expected an http:// or https:// URL"),
    ],
)
async def test_create_user_refuses_bad_input_with_the_cores_message(graphql: Gql, fields, fragment):
    query = "mutation($input: CreateUserInput!) { createUser(input: $input) { id } }"
    error = await graphql.error(
        query, "InputValidationError", input={"username": "someone", "password": "pw", **fields}
    )
    assert fragment in error["message"]
    assert error["path"] == ["createUser"]
    users = await graphql.data("{ users { totalCount } }")
    assert users["users"]["totalCount"] == 0


async def test_wrong_input_types_and_unknown_fields_are_graphql_errors(graphql: Gql):
    query = "mutation($input: CreateUserInput!) { createUser(input: $input) { id } }"
    error = await graphql.error(
        query, "GraphQLValidationFailed", input={"username": "x", "password": PASSWORD, "quota": "1024"}
    )
    assert "quota" in error["message"]
    error = await graphql.error(
        query, "GraphQLValidationFailed", input={"username": "x", "password": PASSWORD, "colour": "red"}
    )
    assert "colour" in error["message"]
    await graphql.error("{ users { nodes { passwordHash } } }", "GraphQLValidationFailed")


async def test_unknown_and_malformed_user_ids(graphql: Gql):
    error = await graphql.error(USER_QUERY, "UserNotFound", id=UNKNOWN_ID)
    assert error["message"] == "This user does not exist"
    error = await graphql.error(USER_QUERY, "InputValidationError", id="nope")
    assert "24 hexadecimal" in error["message"]


async def test_users_are_paged_with_cursors(graphql: Gql):
    ids = [(await create_user(graphql, f"pager{number}"))["id"] for number in range(5)]
    await create_user(graphql, "different")
    query = """
        query($after: String) {
            users(query: "pager", first: 2, after: $after) {
                totalCount
                pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
                edges { cursor node { id username } }
                nodes { id }
            }
        }
    """
    seen: list[str] = []
    after = None
    for page_number in range(3):
        page = (await graphql.data(query, after=after))["users"]
        assert page["totalCount"] == 5
        assert [edge["node"]["id"] for edge in page["edges"]] == [node["id"] for node in page["nodes"]]
        assert page["pageInfo"]["startCursor"] == page["edges"][0]["cursor"]
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        assert page["pageInfo"]["hasPreviousPage"] is (page_number > 0)
        assert page["pageInfo"]["hasNextPage"] is (page_number < 2)
        seen += [node["id"] for node in page["nodes"]]
        after = page["pageInfo"]["endCursor"]
    assert seen == ids
    # Any edge's cursor continues right after that edge.
    first_page = (await graphql.data(query))["users"]
    middle = first_page["edges"][0]["cursor"]
    assert [node["id"] for node in (await graphql.data(query, after=middle))["users"]["nodes"]] == ids[1:3]
    error = await graphql.error(query, "InputValidationError", after="garbage")
    assert error["message"] == "Invalid paging cursor"


async def test_update_user(api, graphql: Gql):
    user = await create_user(graphql, forward="elsewhere@example.org")
    query = f"mutation($id: ID!, $input: UpdateUserInput!) {{ updateUser(id: $id, input: $input) {{ {USER_FIELDS} }} }}"
    updated = (
        await graphql.data(query, id=user["id"], input={"name": "New Name", "quota": 2048, "retention": 3 * 86400000})
    )["updateUser"]
    assert updated["name"] == "New Name"
    assert updated["limits"]["quota"]["allowed"] == 2048
    assert updated["retention"] == 3 * 86400000
    assert updated["forward"] == "elsewhere@example.org"
    cleared = (await graphql.data(query, id=user["id"], input={"forward": "", "disabled": True}))["updateUser"]
    assert cleared["forward"] is None and cleared["disabled"] is True
    assert (await rest_user(api, user["id"]))["disabled"] is True
    error = await graphql.error(
        query, "AuthFailed", id=user["id"], input={"password": "newpassword", "existingPassword": "wrong"}
    )
    assert error["message"] == "Password verification failed"
    changed = await graphql.data(
        query, id=user["id"], input={"password": "newpassword", "existingPassword": PASSWORD, "disabled": False}
    )
    assert changed["updateUser"]["disabled"] is False
    result = await graphql.data(AUTHENTICATE, input={"username": "testuser", "password": "newpassword"})
    assert result["authenticate"]["username"] == "testuser"
    await graphql.error(query, "UserNotFound", id=UNKNOWN_ID, input={"name": "x"})


async def test_delete_user_removes_everything(api, graphql: Gql):
    user = await create_user(graphql, address="gone@example.com")
    await deliver_ok(api, "gone@example.com", simple_message("Before deletion"))
    assert (await graphql.data("mutation($id: ID!) { deleteUser(id: $id) }", id=user["id"]))["deleteUser"] is True
    await graphql.error(USER_QUERY, "UserNotFound", id=user["id"])
    async with api.get(f"/users/{user['id']}") as response:
        assert response.status == 404
    await graphql.error("mutation($id: ID!) { deleteUser(id: $id) }", "UserNotFound", id=user["id"])
    # Its address is free again, and nothing of it is left to find.
    assert (await graphql.data('{ addresses(query: "gone") { totalCount } }'))["addresses"]["totalCount"] == 0
    again = await create_user(graphql, "again", address="gone@example.com")
    assert again["address"] == "gone@example.com"
    mailboxes = await graphql.data("query($id: ID!) { user(id: $id) { mailboxes { total } } }", id=again["id"])
    assert all(mailbox["total"] == 0 for mailbox in mailboxes["user"]["mailboxes"])


async def test_addresses(graphql: Gql):
    user = await create_user(graphql, address="main@example.com")
    other = await create_user(graphql, "other", address="other@example.com")
    create = (
        "mutation($u: ID!, $input: CreateAddressInput!) { createAddress(user: $u, input: $input) { id address main } }"
    )
    alias = (await graphql.data(create, u=user["id"], input={"address": "Alias@Example.COM"}))["createAddress"]
    assert alias == {"id": alias["id"], "address": "Alias@example.com", "main": False}
    await graphql.error(create, "AddressExists", u=other["id"], input={"address": "alias@example.com"})
    await graphql.error(create, "InputValidationError", u=user["id"], input={"address": "nope"})
    listed = await graphql.data(
        "query($id: ID!) { user(id: $id) { addresses { address main user { username } } } }", id=user["id"]
    )
    assert {(item["address"], item["main"]) for item in listed["user"]["addresses"]} == {
        ("main@example.com", True),
        ("Alias@example.com", False),
    }
    update = (
        "mutation($u: ID!, $id: ID!, $input: UpdateAddressInput!) "
        "{ updateAddress(user: $u, id: $id, input: $input) { address main } }"
    )
    made_main = await graphql.data(update, u=user["id"], id=alias["id"], input={"main": True})
    assert made_main["updateAddress"] == {"address": "Alias@example.com", "main": True}
    error = await graphql.error(update, "InputValidationError", u=user["id"], id=alias["id"], input={"main": False})
    assert "main" in error["message"]
    delete = "mutation($u: ID!, $id: ID!) { deleteAddress(user: $u, id: $id) }"
    await graphql.error(delete, "NotAllowed", u=user["id"], id=alias["id"])
    await graphql.error(delete, "AddressNotFound", u=other["id"], id=alias["id"])
    search = """
        query($q: String) {
            addresses(query: $q) { totalCount nodes { address main user { id username } } }
        }
    """
    found = (await graphql.data(search, q="example.com"))["addresses"]
    assert found["totalCount"] == 3
    assert {(node["address"], node["main"], node["user"]["username"]) for node in found["nodes"]} == {
        ("main@example.com", False, "testuser"),
        ("Alias@example.com", True, "testuser"),
        ("other@example.com", True, "other"),
    }
    main_id = next(
        item["id"]
        for item in (
            await graphql.data("query($id: ID!) { user(id: $id) { addresses { id address } } }", id=user["id"])
        )["user"]["addresses"]
        if item["address"] == "main@example.com"
    )
    assert (await graphql.data(delete, u=user["id"], id=main_id))["deleteAddress"] is True
    assert (await graphql.data(search, q="main@"))["addresses"]["totalCount"] == 0


async def test_authenticate_and_the_authlog(graphql: Gql):
    user = await create_user(graphql, address="login@example.com")
    for username in ("testuser", "login@example.com", "LOGIN@example.com"):
        result = (await graphql.data(AUTHENTICATE, input={"username": username, "password": PASSWORD}))["authenticate"]
        assert result == {
            "id": user["id"],
            "username": "testuser",
            "scope": "master",
            "require2fa": False,
            "user": {"id": user["id"], "address": "login@example.com"},
        }
    error = await graphql.error(
        AUTHENTICATE, "AuthFailed", input={"username": "testuser", "password": "wrong", "ip": "192.0.2.7"}
    )
    assert error["message"] == "Authentication failed"
    await graphql.error(
        AUTHENTICATE, "InputValidationError", input={"username": "testuser", "password": PASSWORD, "scope": "web"}
    )
    log = """
        query($id: ID!, $after: String) {
            user(id: $id) { authlog(first: 2, after: $after) {
                totalCount pageInfo { hasNextPage endCursor } nodes { action result ip scope created }
            } }
        }
    """
    first = (await graphql.data(log, id=user["id"]))["user"]["authlog"]
    assert first["totalCount"] == 5  # account created, three logins, one failure
    assert first["nodes"][0] == {
        "action": "authentication",
        "result": "fail",
        "ip": "192.0.2.7",
        "scope": "master",
        "created": first["nodes"][0]["created"],
    }
    entries = list(first["nodes"])
    after = first["pageInfo"]["endCursor"]
    while after:
        page = (await graphql.data(log, id=user["id"], after=after))["user"]["authlog"]
        entries += page["nodes"]
        after = page["pageInfo"]["endCursor"] if page["pageInfo"]["hasNextPage"] else None
    assert [entry["action"] for entry in entries] == ["authentication"] * 4 + ["account created"]
    # The connecting address is logged when the client reports none.
    assert entries[1]["ip"] == "127.0.0.1"


async def test_failed_authentication_is_rate_limited(make_api):
    from gqlhelpers import open_graphql

    api = await make_api(auth_failures_per_user=2)
    async with open_graphql(api) as graphql:
        await create_user(graphql)
        for _ in range(2):
            await graphql.error(AUTHENTICATE, "AuthFailed", input={"username": "testuser", "password": "wrong"})
        error = await graphql.error(AUTHENTICATE, "RateLimited", input={"username": "testuser", "password": PASSWORD})
        assert error["extensions"]["retryAfter"] == 300


async def test_two_factor_authentication(api, graphql: Gql, transcript):
    user = await create_user(graphql)
    uid = user["id"]
    setup = 'mutation($u: ID!) { setupTwoFactor(user: $u, input: {issuer: "Example"}) { qrcode } }'
    qrcode = (await graphql.data(setup, u=uid))["setupTwoFactor"]["qrcode"]
    assert qrcode.startswith("data:image/png;base64,")
    # The tests read the pending seed from storage (an app would scan the QR code).
    stored = await core(api).storage.get_user(uid)
    assert stored is not None and stored.twofa_pending_seed
    totp = pyotp.TOTP(stored.twofa_pending_seed)
    enable = "mutation($u: ID!, $t: String!) { enableTwoFactor(user: $u, input: {token: $t}) }"
    check = "mutation($u: ID!, $t: String!) { checkTwoFactor(user: $u, input: {token: $t}) }"
    await graphql.error(check, "NotAllowed", u=uid, t=totp.now())
    await graphql.error(enable, "InputValidationError", u=uid, t="12345")
    wrong = next(
        f"{n:06d}"
        for n in range(0, 10**6, 111111)
        if f"{n:06d}" not in {totp.at(time.time() + 30 * k) for k in range(-2, 3)}
    )
    await graphql.error(enable, "AuthFailed", u=uid, t=wrong)
    token = totp.now()
    assert (await graphql.data(enable, u=uid, t=token))["enableTwoFactor"] is True
    assert (await graphql.data(USER_QUERY, id=uid))["user"]["enabled2fa"] is True
    await graphql.error(setup, "NotAllowed", u=uid)
    result = (await graphql.data(AUTHENTICATE, input={"username": "testuser", "password": PASSWORD}))["authenticate"]
    assert result["require2fa"] is True
    # The token that enabled 2FA is used up.
    error = await graphql.error(check, "AuthFailed", u=uid, t=token)
    assert error["message"] == "This 2FA token was already used"
    await graphql.error(
        AUTHENTICATE, "AuthFailed", input={"username": "testuser", "password": PASSWORD, "scope": "imap"}
    )
    disable = "mutation($u: ID!) { disableTwoFactor(user: $u) }"
    assert (await graphql.data(disable, u=uid))["disableTwoFactor"] is True
    assert (await graphql.data(USER_QUERY, id=uid))["user"]["enabled2fa"] is False
    actions = await graphql.data(
        "query($id: ID!) { user(id: $id) { authlog(first: 50) { nodes { action result } } } }", id=uid
    )
    assert {"action": "disable 2fa", "result": "success"} in actions["user"]["authlog"]["nodes"]
    assert {"action": "enable 2fa", "result": "success"} in actions["user"]["authlog"]["nodes"]
    seed = totp.secret
    assert not any(seed in text or seed.lower() in text for text in transcript)


async def test_application_passwords(graphql: Gql, transcript):
    user = await create_user(graphql)
    uid = user["id"]
    create = """
        mutation($u: ID!, $input: CreateApplicationPasswordInput!) {
            createApplicationPassword(user: $u, input: $input) {
                password applicationPassword { id description scopes created }
            }
        }
    """
    created = (await graphql.data(create, u=uid, input={"description": "Phone", "scopes": ["imap", "smtp"]}))[
        "createApplicationPassword"
    ]
    password = created["password"]
    assert len(password) == 16 and password.isalpha()
    assert created["applicationPassword"]["scopes"] == ["imap", "smtp"]
    await graphql.error(create, "InputValidationError", u=uid, input={"description": "", "scopes": ["imap"]})
    await graphql.error(create, "InputValidationError", u=uid, input={"description": "x", "scopes": ["web"]})
    listed = await graphql.data(
        "query($id: ID!) { user(id: $id) { applicationPasswords { id description scopes } } }", id=uid
    )
    assert listed["user"]["applicationPasswords"] == [
        {"id": created["applicationPassword"]["id"], "description": "Phone", "scopes": ["imap", "smtp"]}
    ]
    login = await graphql.data(AUTHENTICATE, input={"username": "testuser", "password": password, "scope": "imap"})
    assert login["authenticate"]["scope"] == "imap"
    await graphql.error(
        AUTHENTICATE, "AuthFailed", input={"username": "testuser", "password": password, "scope": "pop3"}
    )
    delete = "mutation($u: ID!, $id: ID!) { deleteApplicationPassword(user: $u, id: $id) }"
    asp_id = created["applicationPassword"]["id"]
    assert (await graphql.data(delete, u=uid, id=asp_id))["deleteApplicationPassword"] is True
    await graphql.error(delete, "AspNotFound", u=uid, id=asp_id)
    await graphql.error(
        AUTHENTICATE, "AuthFailed", input={"username": "testuser", "password": password, "scope": "imap"}
    )
    # The password was shown once, in the answer that created it.
    assert sum(password in text for text in transcript) == 1


async def test_reset_quota(api, graphql: Gql):
    user = await create_user(graphql, address="quota@example.com")
    raw = simple_message("Counted")
    await deliver_ok(api, "quota@example.com", raw)
    stored = len(raw) + len(b"Delivered-To: quota@example.com\r\n")
    used_query = "query($id: ID!) { user(id: $id) { limits { quota { used } } } }"

    async def used() -> int:
        return (await graphql.data(used_query, id=user["id"]))["user"]["limits"]["quota"]["used"]

    assert await used() == stored
    # The stored counter drifts away from the messages' sizes.
    assert await core(api).storage.update_user(user["id"], {"storage_used": stored + 12345}) is True
    assert await used() == stored + 12345
    reset = "mutation($u: ID!) { resetQuota(user: $u) { limits { quota { used } } } }"
    assert (await graphql.data(reset, u=user["id"]))["resetQuota"]["limits"]["quota"]["used"] == stored
    assert await used() == stored
    await graphql.error(reset, "UserNotFound", u=UNKNOWN_ID)
