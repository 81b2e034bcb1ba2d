"""REST: addresses (/users/{id}/addresses and the GET /addresses search)."""

from __future__ import annotations

import pytest
from helpers import (
    ISO_UTC,
    OBJECT_ID,
    add_address,
    addresses,
    assert_error,
    assert_ok,
    authenticate,
    call,
    create_user,
    follow,
    get,
    get_user,
    ids_of,
)

IDN_ADDRESS = "андрис@уайлддак.орг"
IDN_PUNYCODE = "андрис@" + "уайлддак.орг".encode("idna").decode()


def mains(listed):
    return {item["address"]: item["main"] for item in listed}


async def test_new_user_has_its_main_address(api):
    user_id = await create_user(api, "testuser")
    listed = await addresses(api, user_id)
    assert len(listed) == 1
    entry = listed[0]
    assert set(entry) == {"id", "address", "main", "created"}
    assert (entry["address"], entry["main"]) == ("testuser@localhost", True)
    assert OBJECT_ID.fullmatch(entry["id"])
    assert ISO_UTC.fullmatch(entry["created"])


async def test_add_list_and_get_an_alias(api):
    user_id = await create_user(api, "testuser")
    alias_id = await add_address(api, user_id, "alias@example.com")

    listed = await addresses(api, user_id)
    assert [(item["address"], item["main"]) for item in listed] == [
        ("testuser@localhost", True),
        ("alias@example.com", False),
    ]
    assert listed[1]["id"] == alias_id

    one = assert_ok(await get(api, f"/users/{user_id}/addresses/{alias_id}"))
    assert one == {"success": True, **listed[1]}
    main = assert_ok(await get(api, f"/users/{user_id}/addresses/{listed[0]['id']}"))
    assert main["main"] is True
    # The alias now logs the user in; the main address on the user is unchanged.
    assert assert_ok(await authenticate(api, "alias@example.com"))["id"] == user_id
    assert (await get_user(api, user_id))["address"] == "testuser@localhost"


async def test_add_an_alias_as_main(api):
    user_id = await create_user(api, "testuser")
    await add_address(api, user_id, "new-main@example.com", main=True)
    assert mains(await addresses(api, user_id)) == {"testuser@localhost": False, "new-main@example.com": True}
    assert (await get_user(api, user_id))["address"] == "new-main@example.com"


async def test_put_main_moves_the_flag(api):
    user_id = await create_user(api, "testuser")
    alias_id = await add_address(api, user_id, "alias@example.com")

    reply = await call(api, "PUT", f"/users/{user_id}/addresses/{alias_id}", {"main": True})
    assert assert_ok(reply) == {"success": True}
    assert mains(await addresses(api, user_id)) == {"testuser@localhost": False, "alias@example.com": True}
    assert (await get_user(api, user_id))["address"] == "alias@example.com"
    listed = assert_ok(await get(api, "/users", query="testuser"))["results"]
    assert listed[0]["address"] == "alias@example.com"
    # Setting it again is harmless.
    assert_ok(await call(api, "PUT", f"/users/{user_id}/addresses/{alias_id}", {"main": True}))
    assert mains(await addresses(api, user_id)) == {"testuser@localhost": False, "alias@example.com": True}


@pytest.mark.parametrize("payload", [{"main": False}, {"main": "true"}, {}, {"main": True, "address": "x@example.com"}])
async def test_put_refuses_anything_but_main_true(api, payload):
    user_id = await create_user(api, "testuser")
    alias_id = await add_address(api, user_id, "alias@example.com")
    main_id = (await addresses(api, user_id))[0]["id"]

    for address_id in (alias_id, main_id):
        reply = await call(api, "PUT", f"/users/{user_id}/addresses/{address_id}", payload)
        assert_error(reply, 400, "InputValidationError")
    assert mains(await addresses(api, user_id)) == {"testuser@localhost": True, "alias@example.com": False}
    assert (await get_user(api, user_id))["address"] == "testuser@localhost"


async def test_delete_an_alias(api):
    user_id = await create_user(api, "testuser")
    alias_id = await add_address(api, user_id, "alias@example.com")

    reply = await call(api, "DELETE", f"/users/{user_id}/addresses/{alias_id}")
    assert assert_ok(reply) == {"success": True}
    assert [item["address"] for item in await addresses(api, user_id)] == ["testuser@localhost"]
    assert_error(await get(api, f"/users/{user_id}/addresses/{alias_id}"), 404, "AddressNotFound")
    assert_error(await call(api, "DELETE", f"/users/{user_id}/addresses/{alias_id}"), 404, "AddressNotFound")
    assert_error(await authenticate(api, "alias@example.com"), 403, "AuthFailed")
    # The address is free again.
    other = await create_user(api, "other")
    await add_address(api, other, "alias@example.com")


async def test_the_main_address_can_not_be_deleted(api):
    user_id = await create_user(api, "testuser")
    alias_id = await add_address(api, user_id, "alias@example.com")
    main_id = (await addresses(api, user_id))[0]["id"]

    assert_error(await call(api, "DELETE", f"/users/{user_id}/addresses/{main_id}"), 403, "NotAllowed")
    assert mains(await addresses(api, user_id)) == {"testuser@localhost": True, "alias@example.com": False}

    # After moving the flag, the old main can go and the new one can not.
    assert_ok(await call(api, "PUT", f"/users/{user_id}/addresses/{alias_id}", {"main": True}))
    assert_error(await call(api, "DELETE", f"/users/{user_id}/addresses/{alias_id}"), 403, "NotAllowed")
    assert_ok(await call(api, "DELETE", f"/users/{user_id}/addresses/{main_id}"))
    assert mains(await addresses(api, user_id)) == {"alias@example.com": True}


async def test_duplicates_are_refused_case_insensitively_and_across_users(api):
    user_id = await create_user(api, "testuser")
    other_id = await create_user(api, "other")
    await add_address(api, user_id, "Alias@Example.com")

    for owner in (user_id, other_id):
        for spelling in ("alias@example.com", "Alias@Example.com", "ALIAS@EXAMPLE.COM"):
            reply = await call(api, "POST", f"/users/{owner}/addresses", {"address": spelling})
            assert_error(reply, 409, "AddressExists")
        # Another user's main address is taken too.
        reply = await call(api, "POST", f"/users/{owner}/addresses", {"address": "TestUser@localhost"})
        assert_error(reply, 409, "AddressExists")

    # As written by the user, with the domain lowercased.
    assert [item["address"] for item in await addresses(api, user_id)] == ["testuser@localhost", "Alias@example.com"]
    assert [item["address"] for item in await addresses(api, other_id)] == ["other@localhost"]
    assert assert_ok(await get(api, "/addresses", query="alias@example.com"))["total"] == 1


async def test_internationalized_address(api):
    user_id = await create_user(api, "testuser")
    other_id = await create_user(api, "other")
    address_id = await add_address(api, user_id, IDN_ADDRESS)

    one = assert_ok(await get(api, f"/users/{user_id}/addresses/{address_id}"))
    assert one["address"] == IDN_ADDRESS
    # The punycode spelling of the domain is the same address.
    assert IDN_PUNYCODE != IDN_ADDRESS
    for owner in (user_id, other_id):
        reply = await call(api, "POST", f"/users/{owner}/addresses", {"address": IDN_PUNYCODE})
        assert_error(reply, 409, "AddressExists")
    assert len(await addresses(api, user_id)) == 2
    assert len(await addresses(api, other_id)) == 1
    # Either spelling logs the user in.
    assert assert_ok(await authenticate(api, IDN_ADDRESS))["id"] == user_id
    assert assert_ok(await authenticate(api, IDN_PUNYCODE))["id"] == user_id


async def test_punycode_first_then_unicode_is_a_duplicate(api):
    user_id = await create_user(api, "testuser")
    await add_address(api, user_id, IDN_PUNYCODE)
    reply = await call(api, "POST", f"/users/{user_id}/addresses", {"address": IDN_ADDRESS})
    assert_error(reply, 409, "AddressExists")
    assert len(await addresses(api, user_id)) == 2


@pytest.mark.parametrize(
    "payload",
    [
        {"address": "not-an-address"},
        {"address": "two@@example.com"},
        {"address": "spaces in@example.com"},
        {"address": ""},
        {"address": 42},
        {},
        {"address": "fine@example.com", "main": "yes"},
        {"address": "fine@example.com", "colour": "red"},
    ],
)
async def test_add_refuses_bad_input(api, payload):
    user_id = await create_user(api, "testuser")
    assert_error(await call(api, "POST", f"/users/{user_id}/addresses", payload), 400, "InputValidationError")
    assert mains(await addresses(api, user_id)) == {"testuser@localhost": True}
    assert assert_ok(await get(api, "/addresses"))["total"] == 1


async def test_address_of_another_user_is_not_found(api):
    user_a = await create_user(api, "usera")
    user_b = await create_user(api, "userb")
    alias_a = await add_address(api, user_a, "alias-a@example.com")
    main_a = (await addresses(api, user_a))[0]["id"]

    for address_id in (alias_a, main_a):
        path = f"/users/{user_b}/addresses/{address_id}"
        assert_error(await get(api, path), 404, "AddressNotFound")
        assert_error(await call(api, "PUT", path, {"main": True}), 404, "AddressNotFound")
        assert_error(await call(api, "DELETE", path), 404, "AddressNotFound")

    assert mains(await addresses(api, user_a)) == {"usera@localhost": True, "alias-a@example.com": False}
    assert mains(await addresses(api, user_b)) == {"userb@localhost": True}
    assert (await get_user(api, user_b))["address"] == "userb@localhost"


# Searching all addresses


async def test_search_is_a_partial_case_insensitive_match(api):
    alice = await create_user(api, "alice")
    bob = await create_user(api, "bob")
    sales = await add_address(api, alice, "sales@example.com")
    team = await add_address(api, bob, "Sales-Team@example.org")
    await add_address(api, alice, "support@example.com")

    body = assert_ok(await get(api, "/addresses", query="SALES"))
    assert body == {
        "success": True,
        "query": "SALES",
        "total": 2,
        "page": 1,
        "prev": False,
        "next": False,
        "results": [
            {"id": sales, "address": "sales@example.com", "user": alice},
            {"id": team, "address": "Sales-Team@example.org", "user": bob},
        ],
    }
    found = assert_ok(await get(api, "/addresses", query="e.com"))["results"]
    assert [item["address"] for item in found] == ["sales@example.com", "support@example.com"]
    assert assert_ok(await get(api, "/addresses", query="nothing-like-this"))["results"] == []
    everything = assert_ok(await get(api, "/addresses"))
    assert (everything["query"], everything["total"]) == ("", 5)


async def test_search_paging(api):
    user_id = await create_user(api, "testuser")
    ids = [await add_address(api, user_id, f"page{number}@example.net") for number in range(5)]
    await add_address(api, user_id, "unrelated@example.org")

    pages = await follow(api, "/addresses?query=example.net&limit=2")
    assert [len(page["results"]) for page in pages] == [2, 2, 1]
    assert ids_of(pages) == ids
    assert [page["page"] for page in pages] == [1, 2, 3]
    assert [page["total"] for page in pages] == [5, 5, 5]
    assert all(page["query"] == "example.net" for page in pages)

    back = await follow(api, pages[-1]["prev"], "prev")
    assert ids_of(back) == ids[2:4] + ids[0:2]


@pytest.mark.parametrize("term", ["андрис", "УАЙЛДДАК", "дак.орг"])
async def test_search_for_a_unicode_term(api, term):
    user_id = await create_user(api, "testuser")
    address_id = await add_address(api, user_id, IDN_ADDRESS)
    body = assert_ok(await get(api, "/addresses", query=term))
    assert body["query"] == term
    assert body["results"] == [{"id": address_id, "address": IDN_ADDRESS, "user": user_id}]


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=1000", "next=garbage", "user=x"])
async def test_search_refuses_bad_query(api, query):
    assert_error(await call(api, "GET", f"/addresses?{query}"), 400, "InputValidationError")
