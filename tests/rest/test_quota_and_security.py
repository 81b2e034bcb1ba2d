"""REST: quota reset, the access token, and concurrent requests."""

from __future__ import annotations

import asyncio

import pytest
from helpers import (
    PASSWORD,
    UNKNOWN_ID,
    assert_error,
    assert_ok,
    call,
    create_user,
    get,
    mailboxes,
)

TOKEN = "s3cret"

# Quota


async def test_quota_reset(api):
    user_id = await create_user(api, "testuser")
    reply = await call(api, "POST", f"/users/{user_id}/quota/reset", {})
    assert assert_ok(reply) == {"success": True, "storageUsed": 0}
    # An empty body is the same as {}.
    assert assert_ok(await call(api, "POST", f"/users/{user_id}/quota/reset")) == {"success": True, "storageUsed": 0}
    assert assert_ok(await get(api, f"/users/{user_id}"))["limits"]["quota"]["used"] == 0


@pytest.mark.parametrize("raw", [b'{"force": true}', b"[]", b"{", b'"reset"'])
async def test_quota_reset_refuses_bad_input(api, raw):
    user_id = await create_user(api, "testuser")
    reply = await call(api, "POST", f"/users/{user_id}/quota/reset", data=raw)
    assert_error(reply, 400, "InputValidationError")


async def test_quota_reset_of_unknown_user(api):
    assert_error(await call(api, "POST", f"/users/{UNKNOWN_ID}/quota/reset", {}), 404, "UserNotFound")
    assert_error(await call(api, "POST", "/users/zzz/quota/reset", {}), 400, "InputValidationError")


# The access token


async def test_requests_without_the_token_are_refused(make_api):
    api = await make_api(access_token=TOKEN)

    for headers in (None, {"X-Access-Token": "wrong"}, {"X-Access-Token": ""}, {"X-Access-Token": TOKEN + "x"}):
        reply = await call(api, "GET", "/users", headers=headers)
        assert_error(reply, 401, "InvalidToken")
    assert_error(await call(api, "GET", "/users?accessToken=wrong"), 401, "InvalidToken")
    assert_error(await call(api, "GET", "/users?accesstoken=" + TOKEN), 401, "InvalidToken")

    # Writes are refused too, and change nothing.
    reply = await call(api, "POST", "/users", {"username": "sneaky", "password": PASSWORD})
    assert_error(reply, 401, "InvalidToken")
    reply = await call(api, "POST", "/authenticate", {"username": "sneaky", "password": PASSWORD})
    assert_error(reply, 401, "InvalidToken")
    body = assert_ok(await call(api, "GET", "/users", headers={"X-Access-Token": TOKEN}))
    assert body["total"] == 0


async def test_token_in_header_or_query(make_api):
    api = await make_api(access_token=TOKEN)
    header = {"X-Access-Token": TOKEN}

    created = await call(api, "POST", "/users", {"username": "testuser", "password": PASSWORD}, headers=header)
    user_id = assert_ok(created)["id"]
    assert assert_ok(await call(api, "GET", f"/users/{user_id}", headers=header))["username"] == "testuser"
    assert assert_ok(await call(api, "GET", f"/users/{user_id}?accessToken={TOKEN}"))["username"] == "testuser"
    credentials = {"username": "testuser", "password": PASSWORD}
    reply = await call(api, "POST", f"/authenticate?accessToken={TOKEN}", credentials)
    assert assert_ok(reply)["id"] == user_id
    # The token is not an input of the endpoint it is sent to.
    assert assert_ok(await call(api, "GET", f"/users?accessToken={TOKEN}&query=test"))["query"] == "test"


async def test_paging_links_do_not_carry_the_token(make_api):
    api = await make_api(access_token=TOKEN)
    header = {"X-Access-Token": TOKEN}
    for number in range(3):
        assert_ok(
            await call(api, "POST", "/users", {"username": f"user{number}", "password": PASSWORD}, headers=header)
        )

    page = assert_ok(await call(api, "GET", f"/users?limit=1&accessToken={TOKEN}"))
    seen = [page["results"][0]["id"]]
    while page["next"]:
        assert TOKEN not in page["next"] and "accessToken" not in page["next"], page["next"]
        # Without the token the link is refused; with it, it works.
        assert_error(await call(api, "GET", page["next"]), 401, "InvalidToken")
        page = assert_ok(await call(api, "GET", page["next"], headers=header))
        assert TOKEN not in str(page["prev"])
        seen.append(page["results"][0]["id"])
    assert len(seen) == len(set(seen)) == 3


async def test_no_token_configured_means_open(api):
    assert assert_ok(await get(api, "/users"))["total"] == 0


# Concurrency


async def test_concurrent_creation_of_one_username(api):
    async def attempt(number: int):
        return await call(
            api, "POST", "/users", {"username": "racer", "password": PASSWORD, "address": f"racer{number}@example.com"}
        )

    replies = await asyncio.gather(*(attempt(number) for number in range(20)))
    statuses = sorted(reply.status for reply in replies)
    assert statuses == [200] + [409] * 19, statuses
    for reply in replies:
        if reply.status == 409:
            assert_error(reply, 409, "UserExistsError")

    body = assert_ok(await get(api, "/users", query="racer"))
    winner = next(reply.body["id"] for reply in replies if reply.status == 200)
    assert [item["id"] for item in body["results"]] == [winner]
    # Only the winner's address was stored.
    assert assert_ok(await get(api, "/addresses", query="racer"))["total"] == 1


async def test_concurrent_creation_of_one_address(api):
    owners = [await create_user(api, f"owner{number}") for number in range(5)]
    replies = await asyncio.gather(
        *(call(api, "POST", f"/users/{owner}/addresses", {"address": "contested@example.com"}) for owner in owners * 4)
    )
    assert sorted(reply.status for reply in replies) == [200] + [409] * 19
    assert assert_ok(await get(api, "/addresses", query="contested"))["total"] == 1


async def test_concurrent_creation_of_one_mailbox(api):
    user_id = await create_user(api, "testuser")
    replies = await asyncio.gather(
        *(call(api, "POST", f"/users/{user_id}/mailboxes", {"path": "Same/Path"}) for _ in range(20))
    )
    assert sorted(reply.status for reply in replies) == [200] + [409] * 19
    for reply in replies:
        if reply.status == 409:
            assert_error(reply, 409, "MailboxExists")
    winner = next(reply.body["id"] for reply in replies if reply.status == 200)
    found = await mailboxes(api, user_id)
    assert found["Same/Path"]["id"] == winner
    assert len(found) == 7
