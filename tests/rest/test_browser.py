"""The pages merganser serves, driven in headless Chromium (Debian's chromium, through Playwright).

The page's screenshot is left in test-output/screenshots/ at the top of the
repository, so a run shows what it looked like. GraphiQL's browser test is
with the GraphQL tests.
"""

from __future__ import annotations

import pytest
from helpers import create_user, deliver_ok, simple_message
from playwright.async_api import expect


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_public_page_shows_a_delivery_as_it_arrives(api, page, screenshot):
    await create_user(api, "bob", address="bob@example.com")
    user_id = await create_user(api, "alice", address="alice@example.com", name="Alice")
    await page.goto(str(api.make_url("/public/")))
    await expect(page.get_by_test_id("user").locator(f'option[value="{user_id}"]')).to_have_count(1)
    await page.get_by_test_id("user").select_option(user_id)
    await page.get_by_test_id("watch").click()
    await expect(page.get_by_test_id("status")).to_have_attribute("data-state", "live")

    await deliver_ok(api, "alice@example.com", simple_message("Seen in the browser", Message_ID="<b1@example.org>"))
    row = page.get_by_test_id("events").locator("tr", has_text="Seen in the browser")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("EXISTS")
    await expect(row).to_contain_text("INBOX")
    await expect(row).to_contain_text("Sender Name")
    await screenshot(page, "public-live-updates.png")
    await deliver_ok(api, "bob@example.com", simple_message("Not for Alice"))
    await deliver_ok(api, "alice@example.com", simple_message("Second for Alice"))
    await expect(page.get_by_test_id("events").locator("tr", has_text="Second for Alice")).to_have_count(1)
    await expect(page.get_by_test_id("events").locator("tr", has_text="Not for Alice")).to_have_count(0)
    await expect(page.get_by_test_id("events").locator("tr").first).to_contain_text("Second for Alice")


@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
async def test_public_page_asks_for_the_access_token(make_api, page):
    api = await make_api(access_token="browser-token")
    await page.goto(str(api.make_url("/public/")))
    await expect(page.get_by_test_id("status")).to_contain_text("Cannot list users")
    await page.locator("#token").fill("browser-token")
    await page.locator("#token").dispatch_event("change")
    await expect(page.get_by_test_id("user")).to_contain_text("no users yet")
