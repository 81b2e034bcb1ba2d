"""GraphQL: mailboxes and messages (listing, reading, search, upload, flags, moves, deletion, threads).

Mail arrives through the real LMTP maildrop or the upload mutation; every
read goes through gql over HTTP, on both storage backends.
"""

from __future__ import annotations

from typing import Any

from gqlhelpers import MESSAGE_FIELDS, USER, Gql, create_user, mailbox_ids
from helpers import UNKNOWN_ID, crlf, deliver_ok, simple_message

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
    "Content-Type: text/html; charset=utf-8\n"
    "\n"
    "<p>The <b>numbers</b> are in.</p>\n"
    "--XYZ\n"
    "Content-Type: application/pdf\n"
    'Content-Disposition: attachment; filename="report.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "JVBERi0xLjQK\n"
    "--XYZ--\n"
)

MESSAGES = f"""
    query($u: ID!, $m: ID!, $first: Int!, $after: String, $order: MessageOrder!) {{
        user(id: $u) {{ mailbox(id: $m) {{
            total unseen
            messages(first: $first, after: $after, order: $order) {{
                totalCount pageInfo {{ hasNextPage endCursor }} nodes {{ {MESSAGE_FIELDS} }}
            }}
        }} }}
    }}
"""
MESSAGE = f"""
    query($u: ID!, $m: ID!, $id: ID!) {{
        user(id: $u) {{ mailbox(id: $m) {{ message(id: $id) {{
            {MESSAGE_FIELDS} html text attachments {{ id filename contentType disposition size }}
        }} }} }}
    }}
"""
UPDATE = """
    mutation($u: ID!, $m: ID!, $id: ID!, $input: UpdateMessageInput!) {
        updateMessage(user: $u, mailbox: $m, id: $id, input: $input) { id mailboxId uid seen flagged expires }
    }
"""


async def listing(graphql: Gql, user_id: str, mailbox: str, **variables: Any) -> dict[str, Any]:
    values = {"first": 20, "after": None, "order": "DESC", **variables}
    return (await graphql.data(MESSAGES, u=user_id, m=mailbox, **values))["user"]["mailbox"]


async def rest(api: Any, path: str) -> dict[str, Any]:
    async with api.get(path) as response:
        assert response.status == 200
        return await response.json()


async def test_mailboxes_with_counters(api, graphql: Gql, account):
    user_id, boxes = account
    await deliver_ok(api, USER, simple_message("One"))
    await deliver_ok(api, USER, simple_message("Two"))
    data = await graphql.data(
        """query($u: ID!) { user(id: $u) { mailboxes {
            id name path specialUse modifyIndex subscribed retention uidValidity uidNext total unseen
        } } }""",
        u=user_id,
    )
    mailboxes = data["user"]["mailboxes"]
    assert [mailbox["path"] for mailbox in mailboxes] == ["INBOX", "Archive", "Drafts", "Junk", "Sent Mail", "Trash"]
    inbox = mailboxes[0]
    assert (inbox["total"], inbox["unseen"], inbox["uidNext"]) == (2, 2, 3)
    trash = next(mailbox for mailbox in mailboxes if mailbox["specialUse"] == "\\Trash")
    assert trash["retention"] == 30 * 24 * 3600 * 1000
    rest_listing = await rest(api, f"/users/{user_id}/mailboxes?counters=true")
    assert {(item["id"], item["total"], item["unseen"]) for item in rest_listing["results"]} == {
        (mailbox["id"], mailbox["total"], mailbox["unseen"]) for mailbox in mailboxes
    }
    error = await graphql.error(
        "query($u: ID!) { user(id: $u) { mailbox(id: $u) { id } } }", "MailboxNotFound", u=user_id
    )
    assert error["path"] == ["user", "mailbox"]
    assert boxes["INBOX"] == inbox["id"]


async def test_create_update_delete_mailboxes(graphql: Gql, account):
    user_id, boxes = account
    create = """
        mutation($u: ID!, $input: CreateMailboxInput!) {
            createMailbox(user: $u, input: $input) { id path name retention subscribed }
        }
    """
    created = (await graphql.data(create, u=user_id, input={"path": "Projects/2024", "retention": 86400000}))[
        "createMailbox"
    ]
    assert (created["path"], created["name"], created["retention"], created["subscribed"]) == (
        "Projects/2024",
        "2024",
        86400000,
        True,
    )
    await graphql.error(create, "MailboxExists", u=user_id, input={"path": "Projects/2024"})
    error = await graphql.error(create, "InputValidationError", u=user_id, input={"path": "a//b"})
    assert "empty folder name" in error["message"]
    child = (await graphql.data(create, u=user_id, input={"path": "Projects/2024/Q1"}))["createMailbox"]
    update = """
        mutation($u: ID!, $id: ID!, $input: UpdateMailboxInput!) {
            updateMailbox(user: $u, id: $id, input: $input) { path subscribed }
        }
    """
    renamed = await graphql.data(update, u=user_id, id=created["id"], input={"path": "Work", "subscribed": False})
    assert renamed["updateMailbox"] == {"path": "Work", "subscribed": False}
    paths = await mailbox_ids(graphql, user_id)
    assert paths["Work/Q1"] == child["id"]
    await graphql.error(update, "NotAllowed", u=user_id, id=boxes["INBOX"], input={"path": "Inbox2"})
    delete = "mutation($u: ID!, $id: ID!) { deleteMailbox(user: $u, id: $id) }"
    await graphql.error(delete, "NotAllowed", u=user_id, id=boxes["Trash"])
    assert (await graphql.data(delete, u=user_id, id=child["id"]))["deleteMailbox"] is True
    await graphql.error(delete, "MailboxNotFound", u=user_id, id=child["id"])


async def test_listing_pages_match_rest(api, graphql: Gql, account):
    user_id, boxes = account
    for number in range(5):
        await deliver_ok(api, USER, simple_message(f"Message {number}"))
    inbox = boxes["INBOX"]
    first = await listing(graphql, user_id, inbox, first=2)
    assert (first["total"], first["unseen"], first["messages"]["totalCount"]) == (5, 5, 5)
    subjects = [node["subject"] for node in first["messages"]["nodes"]]
    assert subjects == ["Message 4", "Message 3"]
    after = first["messages"]["pageInfo"]["endCursor"]
    while after:
        page = await listing(graphql, user_id, inbox, first=2, after=after)
        subjects += [node["subject"] for node in page["messages"]["nodes"]]
        after = page["messages"]["pageInfo"]["endCursor"] if page["messages"]["pageInfo"]["hasNextPage"] else None
    assert subjects == [f"Message {number}" for number in range(4, -1, -1)]
    ascending = await listing(graphql, user_id, inbox, order="ASC", first=5)
    assert [node["uid"] for node in ascending["messages"]["nodes"]] == [1, 2, 3, 4, 5]
    rest_page = await rest(api, f"/users/{user_id}/mailboxes/{inbox}/messages?limit=5")
    for node, item in zip(first["messages"]["nodes"], rest_page["results"], strict=False):
        assert (node["id"], node["uid"], node["subject"], node["date"], node["intro"], node["size"]) == (
            item["id"],
            item["uid"],
            item["subject"],
            item["date"],
            item["intro"],
            item["size"],
        )
        assert node["from"] == item["from"]
        assert (node["seen"], node["flagged"], node["draft"], node["deleted"]) == (
            item["seen"],
            item["flagged"],
            item["draft"],
            item["deleted"],
        )
    # A cursor belongs to its listing.
    other = await graphql.error(
        MESSAGES,
        "InputValidationError",
        u=user_id,
        m=boxes["Archive"],
        first=2,
        after=first["messages"]["pageInfo"]["endCursor"],
        order="DESC",
    )
    assert other["message"] == "Invalid paging cursor"


async def test_message_details_match_rest(api, graphql: Gql, account):
    user_id, boxes = account
    await deliver_ok(api, USER, RICH)
    inbox = boxes["INBOX"]
    [node] = (await listing(graphql, user_id, inbox))["messages"]["nodes"]
    message = (await graphql.data(MESSAGE, u=user_id, m=inbox, id=node["id"]))["user"]["mailbox"]["message"]
    details = await rest(api, f"/users/{user_id}/mailboxes/{inbox}/messages/{node['id']}")
    assert message["html"] == details["html"]
    assert message["text"] == details["text"]
    assert message["to"] == details["to"] and len(message["to"]) == 2
    assert message["cc"] == details["cc"] == [{"name": "Jüri Copy", "address": "copy@example.com"}]
    assert message["messageId"] == details["messageId"] == "<report-1@example.org>"
    assert message["date"] == details["date"] == "2011-11-02T19:19:08.000Z"
    assert message["hasAttachments"] is True
    assert message["attachments"] == [
        {
            "id": "ATT00001",
            "filename": "report.pdf",
            "contentType": "application/pdf",
            "disposition": "attachment",
            "size": 9,
        }
    ]
    assert message["expires"] is None and details["expires"] is False
    await graphql.error(MESSAGE, "MessageNotFound", u=user_id, m=boxes["Archive"], id=node["id"])
    await graphql.error(MESSAGE, "InputValidationError", u=user_id, m=inbox, id="x")


async def test_upload_message(graphql: Gql, account):
    user_id, boxes = account
    upload = f"""
        mutation($u: ID!, $m: ID!, $input: UploadMessageInput!) {{
            uploadMessage(user: $u, mailbox: $m, input: $input) {{ {MESSAGE_FIELDS} text }}
        }}
    """
    raw = simple_message("Draft subject", "Draft body.").decode()
    uploaded = (
        await graphql.data(
            upload,
            u=user_id,
            m=boxes["Drafts"],
            input={"raw": raw, "draft": True, "seen": True, "date": "2024-05-01T10:00:00Z"},
        )
    )["uploadMessage"]
    assert (uploaded["subject"], uploaded["draft"], uploaded["seen"], uploaded["uid"]) == (
        "Draft subject",
        True,
        True,
        1,
    )
    assert uploaded["mailboxId"] == boxes["Drafts"]
    assert uploaded["text"].strip() == "Draft body."
    error = await graphql.error(upload, "InputValidationError", u=user_id, m=boxes["Drafts"], input={"raw": "  "})
    assert error["message"] == "The message is empty"
    error = await graphql.error(
        upload, "InputValidationError", u=user_id, m=boxes["Drafts"], input={"raw": raw, "date": "yesterday"}
    )
    assert "date" in error["message"]
    await graphql.error(upload, "MailboxNotFound", u=user_id, m=UNKNOWN_ID, input={"raw": raw})


async def test_upload_past_the_quota_is_refused(graphql: Gql):
    user = await create_user(graphql, quota=100)
    boxes = await mailbox_ids(graphql, user["id"])
    upload = (
        "mutation($u: ID!, $m: ID!, $raw: String!) { uploadMessage(user: $u, mailbox: $m, input: {raw: $raw}) { id } }"
    )
    error = await graphql.error(
        upload, "OverQuota", u=user["id"], m=boxes["INBOX"], raw=simple_message(body="x" * 200).decode()
    )
    assert "quota" in error["message"]


async def test_update_move_and_delete_messages(api, graphql: Gql, account):
    user_id, boxes = account
    await deliver_ok(api, USER, simple_message("Flag me"))
    inbox = boxes["INBOX"]
    [node] = (await listing(graphql, user_id, inbox))["messages"]["nodes"]
    flagged = await graphql.data(UPDATE, u=user_id, m=inbox, id=node["id"], input={"seen": True, "flagged": True})
    assert (flagged["updateMessage"]["seen"], flagged["updateMessage"]["flagged"]) == (True, True)
    assert (await listing(graphql, user_id, inbox))["unseen"] == 0
    expiring = await graphql.data(UPDATE, u=user_id, m=inbox, id=node["id"], input={"expires": "2030-01-01T00:00:00Z"})
    assert expiring["updateMessage"]["expires"] == "2030-01-01T00:00:00.000Z"
    cleared = await graphql.data(UPDATE, u=user_id, m=inbox, id=node["id"], input={"expires": None})
    assert cleared["updateMessage"]["expires"] is None
    await graphql.error(UPDATE, "InputValidationError", u=user_id, m=inbox, id=node["id"], input={"expires": "soon"})
    moved = (await graphql.data(UPDATE, u=user_id, m=inbox, id=node["id"], input={"newMailbox": boxes["Archive"]}))[
        "updateMessage"
    ]
    assert (moved["id"], moved["mailboxId"], moved["uid"]) == (node["id"], boxes["Archive"], 1)
    assert (await listing(graphql, user_id, inbox))["total"] == 0
    await graphql.error(
        UPDATE, "MailboxNotFound", u=user_id, m=boxes["Archive"], id=node["id"], input={"newMailbox": UNKNOWN_ID}
    )
    delete = "mutation($u: ID!, $m: ID!, $id: ID!) { deleteMessage(user: $u, mailbox: $m, id: $id) }"
    await graphql.error(delete, "MessageNotFound", u=user_id, m=inbox, id=node["id"])
    assert (await graphql.data(delete, u=user_id, m=boxes["Archive"], id=node["id"]))["deleteMessage"] is True
    assert (await listing(graphql, user_id, boxes["Archive"]))["total"] == 0


async def test_search(api, graphql: Gql, account):
    user_id, boxes = account
    await deliver_ok(api, USER, simple_message("Invoice March", "Please pay the invoice."))
    await deliver_ok(api, USER, simple_message("Lunch", "Where shall we eat?"))
    search = """
        query($u: ID!, $q: String!, $m: ID, $first: Int!) {
            user(id: $u) { search(query: $q, mailbox: $m, first: $first) {
                totalCount pageInfo { hasNextPage } nodes { subject mailboxId }
            } }
        }
    """
    found = (await graphql.data(search, u=user_id, q="invoice", first=10))["user"]["search"]
    assert found["totalCount"] == 1 and found["nodes"][0]["subject"] == "Invoice March"
    assert (await graphql.data(search, u=user_id, q="invoice", m=boxes["Archive"], first=10))["user"]["search"][
        "totalCount"
    ] == 0
    both = (await graphql.data(search, u=user_id, q="sender", first=1))["user"]["search"]
    assert both["totalCount"] == 2 and both["pageInfo"]["hasNextPage"] is True
    await graphql.error(search, "InputValidationError", u=user_id, q="!!!", first=10)


async def test_threads(api, graphql: Gql, account):
    user_id, boxes = account
    await deliver_ok(api, USER, simple_message("Plans", "First.", Message_ID="<plans-1@example.org>"))
    await deliver_ok(
        api,
        USER,
        simple_message("Re: Plans", "Reply.", Message_ID="<plans-2@example.org>", In_Reply_To="<plans-1@example.org>"),
    )
    await deliver_ok(api, USER, simple_message("Something else"))
    query = """
        query($u: ID!, $m: ID!) { user(id: $u) { mailbox(id: $m) { messages { nodes {
            subject threadId thread { id messages { subject } }
        } } } } }
    """
    nodes = (await graphql.data(query, u=user_id, m=boxes["INBOX"]))["user"]["mailbox"]["messages"]["nodes"]
    by_subject = {node["subject"]: node for node in nodes}
    assert by_subject["Re: Plans"]["threadId"] == by_subject["Plans"]["threadId"] == by_subject["Plans"]["thread"]["id"]
    assert [item["subject"] for item in by_subject["Re: Plans"]["thread"]["messages"]] == ["Plans", "Re: Plans"]
    assert [item["subject"] for item in by_subject["Something else"]["thread"]["messages"]] == ["Something else"]
