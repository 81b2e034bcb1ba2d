"""REST: messages (/users/{id}/mailboxes/{mailbox}/messages…, /users/{id}/search).

Messages arrive through the real LMTP maildrop or the upload endpoint; the
core is only used to run the expired-message collector.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

import pytest
from helpers import (
    ISO_UTC,
    OBJECT_ID,
    UNKNOWN_ID,
    assert_error,
    assert_ok,
    call,
    core,
    counters,
    create_mailbox,
    create_user,
    crlf,
    deliver_ok,
    follow,
    get,
    get_message,
    ids_of,
    list_messages,
    mailbox_id,
    mailboxes,
    message_ids,
    message_source,
    quota_used,
    raw_request,
    simple_message,
    upload_message,
)

from merganser.resolvers.messages import collect_garbage

USER = "testuser@example.com"
THIRTY_DAYS = timedelta(days=30)
LISTED_FIELDS = {
    "id",
    "mailbox",
    "thread",
    "uid",
    "from",
    "subject",
    "date",
    "intro",
    "attachments",
    "size",
    "seen",
    "deleted",
    "flagged",
    "draft",
}
DETAIL_FIELDS = LISTED_FIELDS | {"success", "to", "cc", "messageId", "expires", "html", "text"}

PDF_BYTES = bytes(range(256)) * 8
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 3


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode().rstrip("\n")


RICH = crlf(
    "From: Sender Name <sender@example.org>\n"
    "To: Test User <testuser@example.com>, second@example.com\n"
    "Cc: =?utf-8?q?J=C3=BCri_Copy?= <copy@example.com>\n"
    "Subject: Quarterly report\n"
    "Message-ID: <report-1@example.org>\n"
    "Date: Wed, 02 Nov 2011 21:19:08 +0200\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="XYZ"\n'
    "\n"
    "--XYZ\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "Hello <b> & world\n"
    "line two\n"
    "\n"
    "second paragraph\n"
    "--XYZ\n"
    'Content-Type: application/pdf; name="report.pdf"\n'
    'Content-Disposition: attachment; filename="report.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    "\n" + b64(PDF_BYTES) + "\n"
    "--XYZ\n"
    "Content-Type: image/png\n"
    'Content-Disposition: attachment; filename="../../evil name.png"\n'
    "Content-Transfer-Encoding: base64\n"
    "\n" + b64(PNG_BYTES) + "\n"
    "--XYZ\n"
    "Content-Type: application/octet-stream\n"
    "Content-Disposition: attachment; filename*=UTF-8''K%C3%A4se%20r%C3%A9sum%C3%A9.bin\n"
    "Content-Transfer-Encoding: base64\n"
    "\n" + b64(b"cheese\x00\xff") + "\n"
    "--XYZ--\n"
)


async def new_user(api, username: str = "testuser", address: str = USER, **fields) -> str:
    return await create_user(api, username, address=address, **fields)


async def upload(api, user_id: str, mailbox: str, raw: bytes | None = None, **params) -> str:
    return (await upload_message(api, user_id, mailbox, raw or simple_message(), **params))["id"]


def messages_path(user_id: str, mailbox: str, message: str | None = None) -> str:
    path = f"/users/{user_id}/mailboxes/{mailbox}/messages"
    return f"{path}/{message}" if message else path


def parse_time(value: str) -> datetime:
    assert ISO_UTC.fullmatch(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# Listing


async def test_listing_shape(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    raw = simple_message(
        "Subject line", "Beginning text in the message.\r\n\r\nMore  text.", Date="Wed, 02 Nov 2011 19:19:08 +0000"
    )
    await deliver_ok(api, USER, raw)

    body = await list_messages(api, user_id, inbox)
    assert set(body) == {"success", "total", "page", "prev", "next", "specialUse", "results"}
    assert (body["total"], body["page"], body["prev"], body["next"], body["specialUse"]) == (1, 1, False, False, None)
    [item] = body["results"]
    assert set(item) == LISTED_FIELDS
    assert OBJECT_ID.fullmatch(item["id"]) and OBJECT_ID.fullmatch(item["thread"])
    assert item == {
        "id": item["id"],
        "mailbox": inbox,
        "thread": item["thread"],
        "uid": 1,
        "from": {"address": "sender@example.org", "name": "Sender Name"},
        "subject": "Subject line",
        "date": "2011-11-02T19:19:08.000Z",
        "intro": "Beginning text in the message. More text.",
        "attachments": False,
        "size": len(f"Delivered-To: {USER}\r\n") + len(raw),
        "seen": False,
        "deleted": False,
        "flagged": False,
        "draft": False,
    }

    trash = await mailbox_id(api, user_id, "Trash")
    assert (await list_messages(api, user_id, trash))["specialUse"] == "\\Trash"


async def test_listing_date_falls_back_to_arrival_and_converts_to_utc(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    before = datetime.now(UTC).replace(microsecond=0)
    await upload(api, user_id, inbox, crlf("Subject: No date\n\nbody\n"))
    await upload(api, user_id, inbox, simple_message("Zoned", Date="Wed, 02 Nov 2011 21:19:08 +0200"))

    newest, oldest = (await list_messages(api, user_id, inbox))["results"]
    assert newest["date"] == "2011-11-02T19:19:08.000Z"
    arrived = parse_time(oldest["date"])
    assert before <= arrived <= datetime.now(UTC)
    assert oldest["from"] is None
    assert oldest["subject"] == "No date"


async def test_listing_order(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    ids = [await upload(api, user_id, inbox, simple_message(f"Message {n}")) for n in range(4)]

    default = (await list_messages(api, user_id, inbox))["results"]
    assert [item["id"] for item in default] == ids[::-1]
    assert [item["uid"] for item in default] == [4, 3, 2, 1]
    desc = (await list_messages(api, user_id, inbox, order="desc"))["results"]
    assert [item["id"] for item in desc] == ids[::-1]
    asc = (await list_messages(api, user_id, inbox, order="asc"))["results"]
    assert [item["id"] for item in asc] == ids
    assert [item["subject"] for item in asc] == [f"Message {n}" for n in range(4)]

    assert_error(await get(api, messages_path(user_id, inbox), order="newest"), 400, "InputValidationError")


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "251"}, {"limit": "ten"}, {"page": "0"}, {"next": "garbage"}, {"colour": "red"}],
)
async def test_listing_refuses_bad_parameters(api, params):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    await upload(api, user_id, inbox)
    assert_error(await get(api, messages_path(user_id, inbox), **params), 400, "InputValidationError")


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_paging_through_next_and_prev(api, order):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    ids = [await upload(api, user_id, inbox, simple_message(f"Message {n}")) for n in range(5)]
    expected = ids[::-1] if order == "desc" else ids

    pages = await follow(api, f"{messages_path(user_id, inbox)}?limit=2&order={order}")
    assert [len(page["results"]) for page in pages] == [2, 2, 1]
    assert [page["page"] for page in pages] == [1, 2, 3]
    assert all(page["total"] == 5 for page in pages)
    assert ids_of(pages) == expected
    assert pages[0]["prev"] is False
    assert pages[-1]["next"] is False

    back = await follow(api, pages[-1]["prev"], "prev")
    assert [len(page["results"]) for page in back] == [2, 2]
    assert [item for page in reversed(back) for item in ids_of([page])] == expected[:4]


# One message


async def test_get_message_details(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    await deliver_ok(api, USER, RICH)
    [message_id] = await message_ids(api, user_id, inbox)

    details = await get_message(api, user_id, inbox, message_id)
    assert set(details) == DETAIL_FIELDS
    listed = (await list_messages(api, user_id, inbox))["results"][0]
    assert {key: details[key] for key in LISTED_FIELDS} == {**listed, "attachments": details["attachments"]}
    assert listed["attachments"] is True
    assert details["from"] == {"address": "sender@example.org", "name": "Sender Name"}
    assert details["to"] == [
        {"address": "testuser@example.com", "name": "Test User"},
        {"address": "second@example.com", "name": ""},
    ]
    assert details["cc"] == [{"address": "copy@example.com", "name": "Jüri Copy"}]
    assert details["subject"] == "Quarterly report"
    assert details["messageId"] == "<report-1@example.org>"
    assert details["date"] == "2011-11-02T19:19:08.000Z"
    assert details["expires"] is False
    assert details["text"] == "Hello <b> & world\nline two\n\nsecond paragraph"
    # Without an HTML part the plain text is shown as escaped HTML.
    assert details["html"] == ["<p>Hello &lt;b&gt; &amp; world<br>line two</p><p>second paragraph</p>"]
    assert details["intro"] == "Hello <b> & world line two second paragraph"
    assert details["attachments"] == [
        {
            "id": "ATT00001",
            "filename": "report.pdf",
            "contentType": "application/pdf",
            "disposition": "attachment",
            "size": len(PDF_BYTES),
        },
        {
            "id": "ATT00002",
            "filename": "evil name.png",
            "contentType": "image/png",
            "disposition": "attachment",
            "size": len(PNG_BYTES),
        },
        {
            "id": "ATT00003",
            "filename": "Käse résumé.bin",
            "contentType": "application/octet-stream",
            "disposition": "attachment",
            "size": 8,
        },
    ]


async def test_html_part_is_shown_as_sent(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    raw = crlf(
        "From: sender@example.org\n"
        "Subject: Alternative\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="alt"\n'
        "\n"
        "--alt\n"
        "Content-Type: text/plain\n"
        "\n"
        "Plain version\n"
        "--alt\n"
        "Content-Type: text/html\n"
        "\n"
        "<p>HTML <b>version</b></p>\n"
        "--alt--\n"
    )
    message_id = await upload(api, user_id, inbox, raw)
    details = await get_message(api, user_id, inbox, message_id)
    assert details["html"] == ["<p>HTML <b>version</b></p>"]
    assert details["text"] == "Plain version"
    assert details["attachments"] == []
    assert details["messageId"] is None
    assert details["to"] == [] and details["cc"] == []


async def test_attachment_download(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    message_id = await upload(api, user_id, inbox, RICH)
    base = f"{messages_path(user_id, inbox, message_id)}/attachments"

    status, content, headers = await raw_request(api, "GET", f"{base}/ATT00001")
    assert status == 200
    assert content == PDF_BYTES
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"] == "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"

    status, content, headers = await raw_request(api, "GET", f"{base}/ATT00002")
    assert (status, content) == (200, PNG_BYTES)
    assert headers["Content-Type"] == "image/png"
    # No directories survive, whatever the sender put in the name.
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"evil name.png\"; filename*=UTF-8''evil%20name.png"
    )

    status, content, headers = await raw_request(api, "GET", f"{base}/ATT00003")
    assert (status, content) == (200, b"cheese\x00\xff")
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Disposition"] == (
        "attachment; filename=\"K_se r_sum_.bin\"; filename*=UTF-8''K%C3%A4se%20r%C3%A9sum%C3%A9.bin"
    )

    assert_error(await get(api, f"{base}/ATT00004"), 404, "AttachmentNotFound")


async def test_attachment_names_with_quotes_and_undecodable_content(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    raw = crlf(
        "From: sender@example.org\n"
        "Subject: Odd attachments\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n'
        "\n"
        "--b\n"
        "Content-Type: text/plain\n"
        "\n"
        "body\n"
        "--b\n"
        "Content-Type: text/csv\n"
        'Content-Disposition: attachment; filename="a\\"b;c.csv"\n'
        "\n"
        "x,y\n"
        "--b\n"
        'Content-Type: application/octet-stream; name="broken.bin"\n'
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "!!!! not base64 @@@@\n"
        "--b--\n"
    )
    message_id = await upload(api, user_id, inbox, raw)
    details = await get_message(api, user_id, inbox, message_id)
    assert [(item["id"], item["filename"]) for item in details["attachments"]] == [
        ("ATT00001", 'a"b;c.csv'),
        ("ATT00002", "broken.bin"),
    ]
    base = f"{messages_path(user_id, inbox, message_id)}/attachments"

    status, content, headers = await raw_request(api, "GET", f"{base}/ATT00001")
    assert (status, content, headers["Content-Type"]) == (200, b"x,y", "text/csv")
    assert headers["Content-Disposition"] == "attachment; filename=\"a_b;c.csv\"; filename*=UTF-8''a%22b%3Bc.csv"
    # Content that does not decode is served as far as it goes, never as a server error.
    status, content, headers = await raw_request(api, "GET", f"{base}/ATT00002")
    assert status == 200
    assert len(content) == details["attachments"][1]["size"]
    assert headers["Content-Type"] == "application/octet-stream"


# Flags, expiry, moves


async def test_flags_are_toggled(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    first = await upload(api, user_id, inbox)
    second = await upload(api, user_id, inbox)
    assert await counters(api, user_id, inbox) == (2, 2)

    reply = await call(
        api,
        "PUT",
        messages_path(user_id, inbox, first),
        {"seen": True, "flagged": True, "draft": True, "deleted": True},
    )
    assert assert_ok(reply) == {"success": True}
    listed = {item["id"]: item for item in (await list_messages(api, user_id, inbox))["results"]}
    flags = ("seen", "flagged", "draft", "deleted")
    assert [listed[first][flag] for flag in flags] == [True, True, True, True]
    assert [listed[second][flag] for flag in flags] == [False, False, False, False]
    assert await counters(api, user_id, inbox) == (2, 1)

    # Setting seen again changes nothing; clearing only some leaves the others.
    assert_ok(await call(api, "PUT", messages_path(user_id, inbox, first), {"seen": True}))
    assert await counters(api, user_id, inbox) == (2, 1)
    assert_ok(await call(api, "PUT", messages_path(user_id, inbox, first), {"seen": False, "draft": False}))
    details = await get_message(api, user_id, inbox, first)
    assert [details[flag] for flag in flags] == [False, True, False, True]
    assert await counters(api, user_id, inbox) == (2, 2)

    assert_ok(await call(api, "PUT", messages_path(user_id, inbox, second), {"seen": True}))
    assert_ok(await call(api, "PUT", messages_path(user_id, inbox, first), {"seen": True}))
    assert await counters(api, user_id, inbox) == (2, 0)


async def test_expires_in_the_past_is_collected(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    doomed = await upload(api, user_id, inbox, simple_message("Doomed"))
    kept = await upload(api, user_id, inbox, simple_message("Kept"))
    kept_size = len(await message_source(api, user_id, inbox, kept))

    reply = await call(api, "PUT", messages_path(user_id, inbox, doomed), {"expires": "2000-01-01T00:00:00Z"})
    assert assert_ok(reply) == {"success": True}
    assert (await get_message(api, user_id, inbox, doomed))["expires"] == "2000-01-01T00:00:00.000Z"
    assert await message_ids(api, user_id, inbox) == [kept, doomed]

    assert await collect_garbage(core(api)) == 1
    assert await message_ids(api, user_id, inbox) == [kept]
    assert await counters(api, user_id, inbox) == (1, 1)
    assert await quota_used(api, user_id) == kept_size
    assert_error(await get(api, messages_path(user_id, inbox, doomed)), 404, "MessageNotFound")
    assert await collect_garbage(core(api)) == 0


async def test_expires_as_timestamp_and_false_clears_it(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    message_id = await upload(api, user_id, inbox)
    path = messages_path(user_id, inbox, message_id)

    assert_ok(await call(api, "PUT", path, {"expires": 946684800000}))
    assert (await get_message(api, user_id, inbox, message_id))["expires"] == "2000-01-01T00:00:00.000Z"
    assert_ok(await call(api, "PUT", path, {"expires": False}))
    assert (await get_message(api, user_id, inbox, message_id))["expires"] is False

    assert await collect_garbage(core(api)) == 0
    assert await message_ids(api, user_id, inbox) == [message_id]


async def test_move_to_another_mailbox(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    archive = await mailbox_id(api, user_id, "Archive")
    moved = await upload(api, user_id, inbox, simple_message("Move me"))
    stays = await upload(api, user_id, inbox, simple_message("Stay"))
    existing = [await upload(api, user_id, archive, seen="true") for _ in range(2)]
    source_bytes = await message_source(api, user_id, inbox, moved)
    used = await quota_used(api, user_id)
    assert await counters(api, user_id, inbox) == (2, 2)
    assert await counters(api, user_id, archive) == (2, 0)

    reply = await call(api, "PUT", messages_path(user_id, inbox, moved), {"newMailbox": archive, "flagged": True})
    body = assert_ok(reply)
    assert body == {"success": True, "mailbox": archive, "id": moved, "uid": 3}

    assert await message_ids(api, user_id, inbox) == [stays]
    assert await message_ids(api, user_id, archive) == [moved, *existing[::-1]]
    assert_error(await get(api, messages_path(user_id, inbox, moved)), 404, "MessageNotFound")
    details = await get_message(api, user_id, archive, moved)
    assert (details["mailbox"], details["uid"], details["flagged"], details["seen"]) == (archive, 3, True, False)
    assert await message_source(api, user_id, archive, moved) == source_bytes
    assert await counters(api, user_id, inbox) == (1, 1)
    assert await counters(api, user_id, archive) == (3, 1)
    assert await quota_used(api, user_id) == used

    # The next message in the target takes the next uid after the moved one.
    assert (await upload_message(api, user_id, archive, simple_message()))["uid"] == 4
    # Moving to where it already is changes nothing.
    assert assert_ok(await call(api, "PUT", messages_path(user_id, archive, moved), {"newMailbox": archive})) == {
        "success": True
    }
    assert (await get_message(api, user_id, archive, moved))["uid"] == 3


async def test_move_to_a_mailbox_of_another_user_is_refused(api):
    user_id = await new_user(api)
    other = await new_user(api, "other", "other@example.com")
    inbox = await mailbox_id(api, user_id)
    other_inbox = await mailbox_id(api, other)
    message_id = await upload(api, user_id, inbox)

    reply = await call(api, "PUT", messages_path(user_id, inbox, message_id), {"newMailbox": other_inbox})
    assert_error(reply, 404, "MailboxNotFound")
    reply = await call(api, "PUT", messages_path(user_id, inbox, message_id), {"newMailbox": other_inbox, "seen": True})
    assert_error(reply, 404, "MailboxNotFound")

    assert await message_ids(api, user_id, inbox) == [message_id]
    assert (await get_message(api, user_id, inbox, message_id))["seen"] is False
    assert await message_ids(api, other, other_inbox) == []
    assert await counters(api, other, other_inbox) == (0, 0)
    assert await quota_used(api, other) == 0
    assert_error(
        await call(api, "PUT", messages_path(user_id, inbox, message_id), {"newMailbox": UNKNOWN_ID}),
        404,
        "MailboxNotFound",
    )


async def test_moved_to_trash_is_left_out_of_search_and_expires(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    trash = await mailbox_id(api, user_id, "Trash")
    message_id = await upload(api, user_id, inbox, simple_message("Pineapple news"))
    search = f"/users/{user_id}/search"
    assert [item["id"] for item in assert_ok(await get(api, search, query="pineapple"))["results"]] == [message_id]

    before = datetime.now(UTC)
    assert_ok(await call(api, "PUT", messages_path(user_id, inbox, message_id), {"newMailbox": trash}))

    assert assert_ok(await get(api, search, query="pineapple"))["total"] == 0
    found = assert_ok(await get(api, search, query="pineapple", mailbox=trash))
    assert [item["id"] for item in found["results"]] == [message_id]
    # Trash keeps nothing longer than 30 days.
    expires = parse_time((await get_message(api, user_id, trash, message_id))["expires"])
    assert before + THIRTY_DAYS - timedelta(seconds=1) <= expires <= datetime.now(UTC) + THIRTY_DAYS


# Retention


async def test_trash_caps_requested_expiry_to_thirty_days(api):
    user_id = await new_user(api)
    trash = await mailbox_id(api, user_id, "Trash")
    message_id = await upload(api, user_id, trash)
    uploaded = parse_time((await get_message(api, user_id, trash, message_id))["expires"])
    assert uploaded <= datetime.now(UTC) + THIRTY_DAYS

    assert_ok(await call(api, "PUT", messages_path(user_id, trash, message_id), {"expires": "2100-01-01T00:00:00Z"}))
    capped = parse_time((await get_message(api, user_id, trash, message_id))["expires"])
    assert capped <= datetime.now(UTC) + THIRTY_DAYS
    # Clearing the expiry in Trash also falls back to the cap.
    assert_ok(await call(api, "PUT", messages_path(user_id, trash, message_id), {"expires": False}))
    cleared = (await get_message(api, user_id, trash, message_id))["expires"]
    assert cleared is not False and parse_time(cleared) <= datetime.now(UTC) + THIRTY_DAYS
    # An earlier expiry than the cap is kept as asked.
    assert_ok(await call(api, "PUT", messages_path(user_id, trash, message_id), {"expires": "2001-01-01T00:00:00Z"}))
    assert (await get_message(api, user_id, trash, message_id))["expires"] == "2001-01-01T00:00:00.000Z"


async def test_mailbox_retention_on_upload_and_collection(api):
    user_id = await new_user(api)
    short = await create_mailbox(api, user_id, "Short", retention=60_000)
    before = datetime.now(UTC)
    message_id = await upload(api, user_id, short)
    expires = parse_time((await get_message(api, user_id, short, message_id))["expires"])
    assert before + timedelta(seconds=59) <= expires <= datetime.now(UTC) + timedelta(seconds=61)

    # Not yet expired: the collector leaves it alone.
    assert await collect_garbage(core(api)) == 0
    assert await message_ids(api, user_id, short) == [message_id]
    # Once the retention has passed it is collected.
    assert await collect_garbage(core(api), datetime.now(UTC) + timedelta(seconds=62)) == 1
    assert await message_ids(api, user_id, short) == []
    assert await quota_used(api, user_id) == 0


async def test_inbox_retention_applies_to_delivered_mail(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    assert_ok(await call(api, "PUT", f"/users/{user_id}/mailboxes/{inbox}", {"retention": 1}))
    assert (await mailboxes(api, user_id))["INBOX"]["retention"] == 1

    await deliver_ok(api, USER, simple_message("Short-lived"))
    [message_id] = await message_ids(api, user_id, inbox)
    assert (await get_message(api, user_id, inbox, message_id))["expires"] is not False
    await asyncio.sleep(0.01)
    assert await collect_garbage(core(api)) == 1
    assert await message_ids(api, user_id, inbox) == []
    assert await counters(api, user_id, inbox) == (0, 0)
    assert await quota_used(api, user_id) == 0


# Delete and quota


async def test_delete_message(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    doomed = await upload(api, user_id, inbox, simple_message("Doomed", "x" * 500))
    kept = await upload(api, user_id, inbox, simple_message("Kept"))
    size = len(await message_source(api, user_id, inbox, doomed))
    used = await quota_used(api, user_id)

    assert assert_ok(await call(api, "DELETE", messages_path(user_id, inbox, doomed))) == {"success": True}
    assert await message_ids(api, user_id, inbox) == [kept]
    assert await quota_used(api, user_id) == used - size
    assert await counters(api, user_id, inbox) == (1, 1)
    assert_error(await get(api, messages_path(user_id, inbox, doomed)), 404, "MessageNotFound")
    assert_error(await call(api, "DELETE", messages_path(user_id, inbox, doomed)), 404, "MessageNotFound")
    assert await quota_used(api, user_id) == used - size


async def test_deleting_a_mailbox_deletes_its_messages_and_frees_quota(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    folder = await create_mailbox(api, user_id, "Projects")
    kept = await upload(api, user_id, inbox, simple_message("Kept pineapple"))
    for n in range(3):
        await upload(api, user_id, folder, simple_message(f"Gone pineapple {n}"))
    kept_size = len(await message_source(api, user_id, inbox, kept))

    assert_ok(await call(api, "DELETE", f"/users/{user_id}/mailboxes/{folder}"))
    assert await quota_used(api, user_id) == kept_size
    found = assert_ok(await get(api, f"/users/{user_id}/search", query="pineapple"))
    assert [item["id"] for item in found["results"]] == [kept]
    assert_error(await get(api, messages_path(user_id, folder)), 404, "MailboxNotFound")
    reset = assert_ok(await call(api, "POST", f"/users/{user_id}/quota/reset", {}))
    assert reset["storageUsed"] == kept_size


async def test_quota_is_the_sum_of_stored_sources(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    drafts = await mailbox_id(api, user_id, "Drafts")
    await deliver_ok(api, USER, simple_message("One", "a" * 100))
    await deliver_ok(api, USER, RICH)
    await upload(api, user_id, drafts, simple_message("Draft", "b" * 300), draft="true")
    doomed = await upload(api, user_id, inbox, simple_message("Three", "c" * 700))
    assert_ok(await call(api, "DELETE", messages_path(user_id, inbox, doomed)))

    sizes = [
        len(await message_source(api, user_id, mailbox, message))
        for mailbox in (inbox, drafts)
        for message in await message_ids(api, user_id, mailbox)
    ]
    assert len(sizes) == 3
    assert await quota_used(api, user_id) == sum(sizes)
    reset = assert_ok(await call(api, "POST", f"/users/{user_id}/quota/reset", {}))
    assert reset == {"success": True, "storageUsed": sum(sizes)}
    assert await quota_used(api, user_id) == sum(sizes)


async def test_upload_over_quota_is_refused(api):
    user_id = await new_user(api, quota=600)
    inbox = await mailbox_id(api, user_id)
    await upload(api, user_id, inbox, simple_message("Fits", "a" * 300))
    used = await quota_used(api, user_id)

    reply = await call(
        api,
        "POST",
        messages_path(user_id, inbox),
        data=simple_message("Too big", "b" * 300),
        headers={"Content-Type": "message/rfc822"},
    )
    assert_error(reply, 403, "OverQuota")
    assert await quota_used(api, user_id) == used
    assert len(await message_ids(api, user_id, inbox)) == 1


# Search


async def test_search(api):
    user_id = await new_user(api)
    folders = {path: await mailbox_id(api, user_id, path) for path in ("INBOX", "Archive", "Trash", "Junk")}
    inbox_hit = await upload(api, user_id, folders["INBOX"], simple_message("Pineapple offer", "Fresh fruit."))
    archive_hit = await upload(api, user_id, folders["Archive"], simple_message("Old", "A pineapple and a banana."))
    await upload(api, user_id, folders["Trash"], simple_message("Pineapple in the bin"))
    await upload(api, user_id, folders["Junk"], simple_message("Cheap pineapple"))
    await upload(api, user_id, folders["INBOX"], simple_message("Nothing here", "Just apples."))
    search = f"/users/{user_id}/search"

    body = assert_ok(await get(api, search, query="pineapple"))
    assert set(body) == {"success", "query", "total", "page", "prev", "next", "results"}
    assert (body["query"], body["total"], body["prev"], body["next"]) == ("pineapple", 2, False, False)
    assert [item["id"] for item in body["results"]] == [archive_hit, inbox_hit]
    assert all(set(item) == LISTED_FIELDS for item in body["results"])
    assert body["results"][0]["mailbox"] == folders["Archive"]

    # Every word must match; case does not matter.
    assert [item["id"] for item in assert_ok(await get(api, search, query="PINEAPPLE banana"))["results"]] == [
        archive_hit
    ]
    assert assert_ok(await get(api, search, query="pineapple kiwi"))["total"] == 0
    # Senders and subjects are searched too.
    assert assert_ok(await get(api, search, query="sender@example.org"))["total"] == 3
    # A mailbox narrows the search, and asking for Trash by id finds what is there.
    by_mailbox = assert_ok(await get(api, search, query="pineapple", mailbox=folders["INBOX"]))
    assert [item["id"] for item in by_mailbox["results"]] == [inbox_hit]
    assert assert_ok(await get(api, search, query="pineapple", mailbox=folders["Trash"]))["total"] == 1
    assert assert_ok(await get(api, search, query="pineapple", mailbox=folders["Junk"]))["total"] == 1

    nothing = assert_ok(await get(api, search, query="zanzibar"))
    assert (nothing["total"], nothing["results"]) == (0, [])


async def test_search_unicode_words(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    hit = await upload(api, user_id, inbox, crlf("Subject: Einkauf\n\nIch mag Käse und Brot.\n"))
    other = await upload(api, user_id, inbox, crlf("Subject: Other\n\nIch mag Brot und Butter.\n"))
    search = f"/users/{user_id}/search"

    for query in ("Käse", "käse", "KÄSE", "käse brot", "Einkauf"):
        assert [item["id"] for item in assert_ok(await get(api, search, query=query))["results"]] == [hit], query
    assert [item["id"] for item in assert_ok(await get(api, search, query="butter"))["results"]] == [other]
    assert [item["id"] for item in assert_ok(await get(api, search, query="brot"))["results"]] == [other, hit]
    assert assert_ok(await get(api, search, query="käse butter"))["total"] == 0


async def test_search_ignores_diacritics_on_every_backend(api):
    """Both backends must answer the same; the reference's MongoDB text index ignores diacritics,
    and so does the SQLite index ("unicode61 remove_diacritics 2")."""
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    accented = await upload(api, user_id, inbox, crlf("Subject: a\n\nIch mag Käse.\n"))
    plain = await upload(api, user_id, inbox, crlf("Subject: b\n\nIch mag Kase.\n"))
    search = f"/users/{user_id}/search"

    for query in ("Käse", "Kase", "KASE"):
        found = assert_ok(await get(api, search, query=query))["results"]
        assert [item["id"] for item in found] == [plain, accented], query


async def test_search_paging(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    ids = [await upload(api, user_id, inbox, simple_message(f"Common {n}")) for n in range(5)]
    await upload(api, user_id, inbox, simple_message("Unrelated"))

    pages = await follow(api, f"/users/{user_id}/search?query=common&limit=2")
    assert [len(page["results"]) for page in pages] == [2, 2, 1]
    assert all(page["total"] == 5 and page["query"] == "common" for page in pages)
    # Newest first, each message once.
    assert ids_of(pages) == ids[::-1]
    back = await follow(api, pages[-1]["prev"], "prev")
    assert [item for page in reversed(back) for item in ids_of([page])] == ids[::-1][:4]


@pytest.mark.parametrize("params", [{"query": ""}, {}, {"query": "!! ?"}, {"query": "x" * 1025}])
async def test_search_refuses_empty_queries(api, params):
    user_id = await new_user(api)
    assert_error(await get(api, f"/users/{user_id}/search", **params), 400, "InputValidationError")


@pytest.mark.parametrize(
    ("query", "status"),
    [('" OR *', 200), ("NEAR(pineapple fruit)", 200), ("subject:pineapple", 200), ("$where", 200), ("{x}", 400)],
)
async def test_search_query_syntax_is_not_interpreted(api, query, status):
    user_id = await new_user(api)
    await upload(api, user_id, await mailbox_id(api, user_id), simple_message("Pineapple fruit"))
    reply = await get(api, f"/users/{user_id}/search", query=query)
    if status == 400:
        assert_error(reply, 400, "InputValidationError")
    else:
        # Operators are plain words: "or", "near", "subject" are not in the message.
        assert (reply.status, reply.body["total"], reply.body["query"]) == (200, 0, query)


async def test_search_of_unknown_user_or_mailbox(api):
    user_id = await new_user(api)
    other = await new_user(api, "other", "other@example.com")
    assert_error(await get(api, f"/users/{UNKNOWN_ID}/search", query="word"), 404, "UserNotFound")
    assert_error(await get(api, f"/users/{user_id}/search", query="word", mailbox=UNKNOWN_ID), 404, "MailboxNotFound")
    other_inbox = await mailbox_id(api, other)
    assert_error(await get(api, f"/users/{user_id}/search", query="word", mailbox=other_inbox), 404, "MailboxNotFound")
    assert_error(await get(api, f"/users/{user_id}/search", query="word", mailbox="zzz"), 400, "InputValidationError")


async def test_search_does_not_see_other_users_mail(api):
    user_id = await new_user(api)
    other = await new_user(api, "other", "other@example.com")
    await upload(api, other, await mailbox_id(api, other), simple_message("Pineapple secret"))
    assert assert_ok(await get(api, f"/users/{user_id}/search", query="pineapple"))["total"] == 0


# Upload


async def test_upload_raw_rfc822(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    raw = simple_message("Uploaded", "Line one\r\n.line with a dot\r\n")

    body = await upload_message(api, user_id, inbox, raw, seen="true")
    assert (body["mailbox"], body["uid"]) == (inbox, 1)
    assert OBJECT_ID.fullmatch(body["id"])
    details = await get_message(api, user_id, inbox, body["id"])
    assert (details["seen"], details["flagged"], details["draft"], details["deleted"]) == (True, False, False, False)
    assert details["subject"] == "Uploaded"
    assert await message_source(api, user_id, inbox, body["id"]) == raw
    assert await counters(api, user_id, inbox) == (1, 0)
    assert await quota_used(api, user_id) == len(raw)


async def test_upload_json(api):
    user_id = await new_user(api)
    sent = await mailbox_id(api, user_id, "Sent Mail")
    text = "From: me@example.com\nTo: you@example.org\nSubject: Grüße\n\nBare newlines and UTF-8: äöü\n"

    reply = await call(
        api,
        "POST",
        messages_path(user_id, sent),
        {"raw": text, "flagged": True, "date": "2020-01-02T03:04:05Z"},
    )
    body = assert_ok(reply)
    assert (body["mailbox"], body["uid"]) == (sent, 1)
    listed = (await list_messages(api, user_id, sent))["results"]
    assert [item["id"] for item in listed] == [body["id"]]
    item = listed[0]
    assert (item["seen"], item["flagged"], item["draft"], item["deleted"]) == (False, True, False, False)
    assert item["subject"] == "Grüße"
    # No Date header: the given date is the message's date.
    assert item["date"] == "2020-01-02T03:04:05.000Z"
    assert await message_source(api, user_id, sent, body["id"]) == text.encode()
    assert await counters(api, user_id, sent) == (1, 1)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"raw": ""},
        {"raw": 42},
        {"raw": "Subject: x\n\nbody\n", "colour": "red"},
        {"raw": "Subject: x\n\nbody\n", "seen": "yes"},
        {"raw": "Subject: x\n\nbody\n", "date": "yesterday"},
    ],
)
async def test_upload_refuses_bad_input(api, payload):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    assert_error(await call(api, "POST", messages_path(user_id, inbox), payload), 400, "InputValidationError")
    assert await message_ids(api, user_id, inbox) == []


async def test_upload_refuses_bad_raw_input(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    path = messages_path(user_id, inbox)
    rfc822 = {"Content-Type": "message/rfc822"}

    assert_error(await call(api, "POST", path, data=b"  \r\n", headers=rfc822), 400, "InputValidationError")
    reply = await call(api, "POST", path, data=simple_message(), params={"colour": "red"}, headers=rfc822)
    assert_error(reply, 400, "InputValidationError")
    assert_error(await call(api, "POST", path, data=b"{not json", headers=None), 400, "InputValidationError")
    assert await message_ids(api, user_id, inbox) == []


async def test_upload_larger_than_the_message_limit_is_refused(make_api):
    api = await make_api(max_message_size=2_000)
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    big = simple_message("Big", "\r\n".join(["x" * 76] * 40))
    reply = await call(api, "POST", messages_path(user_id, inbox), data=big, headers={"Content-Type": "message/rfc822"})
    assert_error(reply, 413, "PayloadTooLarge")
    assert "2000" in reply.body["error"]
    # As JSON the body may be larger (escaping), but the message itself may not.
    reply = await call(api, "POST", messages_path(user_id, inbox), {"raw": big.decode()})
    assert_error(reply, 400, "InputValidationError")
    assert await message_ids(api, user_id, inbox) == []
    assert await quota_used(api, user_id) == 0


# Bad ids and isolation

ENDPOINTS = [
    ("GET", ""),
    ("PUT", ""),
    ("DELETE", ""),
    ("GET", "/message.eml"),
    ("GET", "/attachments/ATT00001"),
]


@pytest.fixture
async def world(api):
    """Two users, each with a message in INBOX, and the first one also in Archive."""
    user_id = await new_user(api)
    other = await new_user(api, "other", "other@example.com")
    inbox = await mailbox_id(api, user_id)
    archive = await mailbox_id(api, user_id, "Archive")
    other_inbox = await mailbox_id(api, other)
    return {
        "user": user_id,
        "other": other,
        "inbox": inbox,
        "archive": archive,
        "other_inbox": other_inbox,
        "message": await upload(api, user_id, inbox, RICH),
        "archived": await upload(api, user_id, archive, RICH),
        "other_message": await upload(api, other, other_inbox, RICH),
    }


async def assert_unchanged(api, world) -> None:
    for user, mailbox, message in (
        (world["user"], world["inbox"], world["message"]),
        (world["user"], world["archive"], world["archived"]),
        (world["other"], world["other_inbox"], world["other_message"]),
    ):
        assert await message_ids(api, user, mailbox) == [message]
        details = await get_message(api, user, mailbox, message)
        assert (details["seen"], details["flagged"], details["expires"]) == (False, False, False)


@pytest.mark.parametrize(("method", "suffix"), ENDPOINTS)
@pytest.mark.parametrize(
    ("user", "mailbox", "message", "status", "code"),
    [
        ("unknown", "inbox", "message", 404, "UserNotFound"),
        ("user", "unknown", "message", 404, "MailboxNotFound"),
        ("user", "inbox", "unknown", 404, "MessageNotFound"),
        ("user", "other_inbox", "other_message", 404, "MailboxNotFound"),
        ("user", "inbox", "other_message", 404, "MessageNotFound"),
        ("user", "archive", "message", 404, "MessageNotFound"),
        ("other", "inbox", "message", 404, "MailboxNotFound"),
        ("bad", "inbox", "message", 400, "InputValidationError"),
        ("user", "bad", "message", 400, "InputValidationError"),
        ("user", "inbox", "bad", 400, "InputValidationError"),
    ],
)
async def test_unknown_malformed_and_foreign_ids(api, world, method, suffix, user, mailbox, message, status, code):
    names = {**world, "unknown": UNKNOWN_ID, "bad": "zzz"}
    path = messages_path(names[user], names[mailbox], names[message]) + suffix
    payload = {"seen": True} if method == "PUT" else None
    reply = await call(api, method, path, payload) if payload else await call(api, method, path)
    assert_error(reply, status, code)
    await assert_unchanged(api, world)


@pytest.mark.parametrize(
    ("user", "mailbox", "status", "code"),
    [
        ("unknown", "inbox", 404, "UserNotFound"),
        ("user", "unknown", 404, "MailboxNotFound"),
        ("user", "other_inbox", 404, "MailboxNotFound"),
        ("bad", "inbox", 400, "InputValidationError"),
        ("user", "bad", 400, "InputValidationError"),
    ],
)
async def test_listing_and_upload_with_bad_ids(api, world, user, mailbox, status, code):
    names = {**world, "unknown": UNKNOWN_ID, "bad": "zzz"}
    path = messages_path(names[user], names[mailbox])
    assert_error(await call(api, "GET", path), status, code)
    reply = await call(api, "POST", path, data=simple_message(), headers={"Content-Type": "message/rfc822"})
    assert_error(reply, status, code)
    reply = await call(api, "POST", path, {"raw": "Subject: x\r\n\r\nbody\r\n"})
    assert_error(reply, status, code)
    await assert_unchanged(api, world)


@pytest.mark.parametrize(
    ("attachment", "status", "code"),
    [
        ("ATT99999", 404, "AttachmentNotFound"),
        ("ATT00000", 404, "AttachmentNotFound"),
        ("foo", 400, "InputValidationError"),
        ("ATT1", 400, "InputValidationError"),
        ("att00001", 400, "InputValidationError"),
    ],
)
async def test_bad_attachment_ids(api, world, attachment, status, code):
    path = f"{messages_path(world['user'], world['inbox'], world['message'])}/attachments/{attachment}"
    assert_error(await call(api, "GET", path), status, code)


@pytest.mark.parametrize(
    "payload",
    [
        {"seen": True, "colour": "red"},
        {"seen": "yes"},
        {"flagged": 1},
        {"expires": "tomorrow"},
        {"expires": True},
        {"expires": -5},
        {"newMailbox": "zzz"},
        {"newMailbox": 42},
        [],
        "seen",
    ],
)
async def test_update_refuses_bad_input(api, world, payload):
    path = messages_path(world["user"], world["inbox"], world["message"])
    assert_error(await call(api, "PUT", path, payload), 400, "InputValidationError")
    await assert_unchanged(api, world)


async def test_update_refuses_malformed_json(api, world):
    path = messages_path(world["user"], world["inbox"], world["message"])
    assert_error(await call(api, "PUT", path, data=b'{"seen": tru'), 400, "InputValidationError")
    await assert_unchanged(api, world)


# Concurrent changes


async def test_concurrent_flag_changes_keep_counters_right(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    ids = [await upload(api, user_id, inbox) for _ in range(3)]

    replies = await asyncio.gather(
        *(call(api, "PUT", messages_path(user_id, inbox, message), {"seen": True}) for message in ids for _ in range(5))
    )
    assert all(reply.status == 200 for reply in replies)
    assert await counters(api, user_id, inbox) == (3, 0)

    replies = await asyncio.gather(
        *(
            call(api, "PUT", messages_path(user_id, inbox, ids[0]), {"seen": seen})
            for seen in [False, True, False, True, False] * 2
        )
    )
    assert all(reply.status == 200 for reply in replies)
    seen = (await get_message(api, user_id, inbox, ids[0]))["seen"]
    assert await counters(api, user_id, inbox) == (3, 0 if seen else 1)


async def test_concurrent_deletes_of_one_message_free_its_size_once(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    doomed = await upload(api, user_id, inbox, simple_message("Doomed", "d" * 1000))
    kept = await upload(api, user_id, inbox, simple_message("Kept"))
    kept_size = len(await message_source(api, user_id, inbox, kept))

    replies = await asyncio.gather(*(call(api, "DELETE", messages_path(user_id, inbox, doomed)) for _ in range(6)))
    assert sorted({reply.status for reply in replies}) in ([200], [200, 404])
    assert any(reply.status == 200 for reply in replies)
    assert await message_ids(api, user_id, inbox) == [kept]
    assert await quota_used(api, user_id) == kept_size
    assert await counters(api, user_id, inbox) == (1, 1)


async def test_concurrent_moves_of_one_message_leave_it_in_one_place(api):
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    targets = [await mailbox_id(api, user_id, path) for path in ("Archive", "Drafts", "Sent Mail")]
    message_id = await upload(api, user_id, inbox)

    replies = await asyncio.gather(
        *(call(api, "PUT", messages_path(user_id, inbox, message_id), {"newMailbox": target}) for target in targets * 2)
    )
    assert all(reply.status in (200, 404) for reply in replies), [reply.text for reply in replies]
    assert any(reply.status == 200 for reply in replies)

    places = {mailbox: await message_ids(api, user_id, mailbox) for mailbox in [inbox, *targets]}
    holding = [mailbox for mailbox, ids in places.items() if ids]
    assert len(holding) == 1, places
    assert places[holding[0]] == [message_id]
    assert [await counters(api, user_id, mailbox) for mailbox in [inbox, *targets]] == [
        (1, 1) if mailbox == holding[0] else (0, 0) for mailbox in [inbox, *targets]
    ]
    details = await get_message(api, user_id, holding[0], message_id)
    assert details["mailbox"] == holding[0]


async def test_concurrent_uploads_respect_the_quota(api):
    raw = simple_message("Filler", "f" * 900)
    user_id = await new_user(api, quota=len(raw) * 5)
    inbox = await mailbox_id(api, user_id)
    path = messages_path(user_id, inbox)
    headers = {"Content-Type": "message/rfc822"}

    replies = await asyncio.gather(*(call(api, "POST", path, data=raw, headers=headers) for _ in range(20)))
    assert sorted(reply.status for reply in replies) == [200] * 5 + [403] * 15
    assert await quota_used(api, user_id) == len(raw) * 5
    body = await list_messages(api, user_id, inbox)
    assert body["total"] == 5
    assert len({item["uid"] for item in body["results"]}) == 5
    assert await counters(api, user_id, inbox) == (5, 5)


async def test_cursors_only_work_for_the_listing_that_made_them(api):
    """Cursors of a mailbox listing, of another mailbox and of search are not interchangeable."""
    user_id = await new_user(api)
    inbox = await mailbox_id(api, user_id)
    for n in range(3):
        await upload(api, user_id, inbox, simple_message(f"Common {n}"))
    search_page = assert_ok(await get(api, f"/users/{user_id}/search", query="common", limit=1))
    listing_page = await list_messages(api, user_id, inbox, limit=1)
    search_cursor = search_page["next"].split("next=")[1].split("&")[0]
    listing_cursor = listing_page["next"].split("next=")[1].split("&")[0]

    reply = await get(api, f"/users/{user_id}/mailboxes/{inbox}/messages", next=search_cursor)
    assert_error(reply, 400, "InputValidationError")
    reply = await get(api, f"/users/{user_id}/search", query="common", next=listing_cursor)
    assert_error(reply, 400, "InputValidationError")
    sent = await mailbox_id(api, user_id, "Sent Mail")
    reply = await get(api, f"/users/{user_id}/mailboxes/{sent}/messages", next=listing_cursor)
    assert_error(reply, 400, "InputValidationError")
