"""A person in a real headless Chromium logs in and finds their way around the layout."""
import re

import pytest
from playwright.sync_api import expect

from dashboard.models import ApiToken
from tests.conftest import login_in_browser

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_user_logs_in_and_navigates_the_layout(page, live_server, alice, test_output):
    login_in_browser(page, live_server.url, "alice")
    expect(page.get_by_role("heading", name="Welcome, alice")).to_be_visible()
    page.screenshot(path=test_output / "home-alice.png", full_page=True)

    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Health")).to_have_count(0)  # admins only
    nav.get_by_role("link", name="Serving").click()
    expect(page).to_have_url(f"{live_server.url}/serving/")
    expect(page.get_by_role("heading", name="Serving", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Serving")).to_have_attribute("aria-current", "page")

    nav.get_by_role("link", name="Gates").click()
    expect(page.get_by_role("heading", name="Gates", exact=True)).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login/"))
    page.goto(f"{live_server.url}/serving/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/serving/"))


def test_a_user_creates_and_revokes_a_token_through_the_confirm_dialog(page, live_server, alice, test_output):
    login_in_browser(page, live_server.url, "alice")
    page.get_by_role("link", name="API tokens").click()
    page.fill("#id_name", "ci-deploy")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token-value").inner_text()
    assert secret.startswith("gty_")
    page.screenshot(path=test_output / "tokens-created.png", full_page=True)

    page.get_by_role("link", name="Revoke").click()
    dialog = page.get_by_role("alertdialog")
    expect(dialog).to_contain_text("Revoke API token “ci-deploy”?")
    # htmx loaded the dialog in place: the page underneath did not change.
    expect(page).to_have_url(f"{live_server.url}/settings/tokens/")
    page.screenshot(path=test_output / "tokens-confirm-revoke.png", full_page=True)
    dialog.get_by_role("button", name="Revoke token").click()
    expect(page.locator(".msg.success")).to_contain_text("Revoked API token “ci-deploy”")
    assert not ApiToken.objects.get(name="ci-deploy").is_active


def test_an_admin_sees_and_opens_the_health_panel(page, live_server, admin, test_output):
    login_in_browser(page, live_server.url, "admin")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Health").click()
    expect(page.get_by_role("heading", name="Health")).to_be_visible()
    expect(page.get_by_role("cell", name="database", exact=True)).to_be_visible()
    page.screenshot(path=test_output / "health-admin.png", full_page=True)


@pytest.mark.browser_context_args.with_args(java_script_enabled=False)
def test_the_layout_and_token_revocation_work_without_javascript(page, live_server, alice):
    _, _ = ApiToken.issue(alice, "nojs")
    login_in_browser(page, live_server.url, "alice")
    page.get_by_role("link", name="API tokens").click()
    page.get_by_role("link", name="Revoke").click()
    expect(page).to_have_url(re.compile(r"/settings/tokens/\d+/revoke$"))
    page.get_by_role("button", name="Revoke token").click()
    expect(page.locator(".msg.success")).to_contain_text("Revoked")
    assert not ApiToken.objects.get(name="nojs").is_active
