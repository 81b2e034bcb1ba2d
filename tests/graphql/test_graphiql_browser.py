"""GraphiQL in headless Chromium (Debian's chromium, through Playwright), with an access token.

The page is opened as /graphql?accessToken=…: it must send the token with its
queries (header) and its subscriptions (connection_init), load everything it
needs from merganser itself, and show a live update caused by an LMTP delivery.
A screenshot goes to test-output/screenshots/.
"""

from __future__ import annotations

import pytest
from gqlhelpers import core, create_user, open_graphql
from helpers import deliver_ok, simple_message, wait_for
from playwright.async_api import Page, expect

TOKEN = "graphiql-token"


async def run_in_editor(page: Page, query: str, operation_name: str) -> None:
    editor = page.locator(".graphiql-query-editor .CodeMirror")
    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.insert_text(query)
    await expect(editor).to_contain_text(query.split("{")[0].strip())
    # GraphiQL re-reads the operation names shortly after an edit (debounced), and runs the
    # operation it last read: wait until it has stored the new operation's name.
    await page.wait_for_function("name => localStorage.getItem('graphiql:operationName') === name", arg=operation_name)
    await page.locator(".graphiql-execute-button").click()


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_graphiql_queries_and_subscribes_with_the_token(make_api, page, screenshot):
    api = await make_api(access_token=TOKEN)
    async with open_graphql(api, headers={"X-Access-Token": TOKEN}) as graphql:
        user = await create_user(graphql, "browseruser", address="browser@example.com")
    await page.goto(str(api.make_url(f"/graphql?accessToken={TOKEN}")))
    await expect(page.locator(".graphiql-container")).to_be_visible()
    await page.locator(".graphiql-execute-button").click()
    result = page.locator(".result-window")
    await expect(result).to_contain_text('"totalCount": 1')
    await expect(result).to_contain_text("browser@example.com")

    await run_in_editor(
        page,
        f'subscription Live {{\n  messageAdded(user: "{user["id"]}") {{ command uid message {{ subject }} }}\n}}',
        "Live",
    )
    await expect(result).not_to_contain_text("totalCount")
    # The subscription is live once the server's update hub has its subscriber.
    await wait_for(lambda: core(api).updates.subscriber_count == 1)
    await deliver_ok(api, "browser@example.com", simple_message("Seen in GraphiQL"))
    await expect(result).to_contain_text("Seen in GraphiQL")
    await expect(result).to_contain_text('"command": "EXISTS"')
    await screenshot(page, "graphiql-subscription.png")


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_graphiql_without_the_token_gets_the_error(make_api, page):
    api = await make_api(access_token=TOKEN)
    await page.goto(str(api.make_url("/graphql")))
    await expect(page.locator(".graphiql-container")).to_be_visible()
    await page.locator(".graphiql-execute-button").click()
    await expect(page.locator(".result-window")).to_contain_text("Invalid or missing access token")
