"""API tokens: created on the settings page (shown once, stored hashed), used as Bearer, revocable."""
import pytest
from django.core.management import call_command

from dashboard.models import ApiToken, AuditEntry

pytestmark = pytest.mark.django_db


def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_token_authenticates_the_api_as_its_owner(client, alice):
    _, raw = ApiToken.issue(alice, "ci")
    response = client.get("/api/v2/me", **bearer(raw))
    assert response.status_code == 200
    assert response.json() == {"username": "alice", "role": "user", "token": "ci"}


def test_a_token_records_when_it_was_last_used(client, alice):
    token, raw = ApiToken.issue(alice, "ci")
    assert token.last_used_at is None
    client.get("/api/v2/me", **bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_revoked_token_is_refused(client, alice):
    token, raw = ApiToken.issue(alice, "ci")
    token.revoke(actor=alice)
    response = client.get("/api/v2/me", **bearer(raw))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_an_unknown_token_is_refused_even_on_public_looking_paths(client, alice):
    assert client.get("/api/v2/me", **bearer("gty_not-a-real-token")).status_code == 401


def test_a_token_of_a_deactivated_user_is_refused(client, alice):
    _, raw = ApiToken.issue(alice, "ci")
    alice.is_active = False
    alice.save()
    assert client.get("/api/v2/me", **bearer(raw)).status_code == 401


def test_a_token_does_not_need_a_csrf_token_to_post(alice):
    from django.test import Client

    _, raw = ApiToken.issue(alice, "ci")
    strict = Client(enforce_csrf_checks=True)
    # /api/v2/me only takes GET: 405 (not 403) shows CSRF did not stop the token-authenticated POST.
    assert strict.post("/api/v2/me", **bearer(raw)).status_code == 405


def test_the_settings_page_shows_a_new_token_once_and_stores_only_its_hash(alice_client, alice):
    response = alice_client.post("/settings/tokens/", {"name": "ci-deploy"})
    assert response.status_code == 200
    token = ApiToken.objects.get(user=alice, name="ci-deploy")
    raw = response.context["created"]["raw"]
    assert raw.startswith("gty_") and raw in response.text
    assert token.digest != raw and raw not in token.digest and raw.startswith(token.prefix)
    assert raw not in alice_client.get("/settings/tokens/").text
    assert alice_client.get("/api/v2/me", **bearer(raw)).json()["token"] == "ci-deploy"


def test_a_duplicate_token_name_is_an_error_beside_the_field(alice_client, alice):
    ApiToken.issue(alice, "ci")
    response = alice_client.post("/settings/tokens/", {"name": "ci"})
    assert response.status_code == 422
    assert "already have an active token with this name" in response.text
    assert ApiToken.objects.filter(user=alice).count() == 1


def test_revoking_asks_for_confirmation_then_revokes_and_audits(alice_client, alice):
    token, raw = ApiToken.issue(alice, "ci")
    confirm = alice_client.get(f"/settings/tokens/{token.pk}/revoke")
    assert confirm.status_code == 200 and "Revoke API token" in confirm.text
    token.refresh_from_db()
    assert token.is_active  # looking at the confirmation changes nothing

    response = alice_client.post(f"/settings/tokens/{token.pk}/revoke")
    assert response.status_code == 302
    token.refresh_from_db()
    assert not token.is_active
    entry = AuditEntry.objects.get(action="token.revoke")
    assert entry.actor == alice and "ci" in entry.target
    assert alice_client.get("/api/v2/me", **bearer(raw)).status_code == 401


def test_the_confirmation_comes_as_a_partial_for_htmx(alice_client, alice):
    token, _ = ApiToken.issue(alice, "ci")
    response = alice_client.get(f"/settings/tokens/{token.pk}/revoke", HTTP_HX_REQUEST="true")
    assert 'role="alertdialog"' in response.text
    assert "<html" not in response.text


def test_a_user_cannot_see_or_revoke_another_users_token(bob_client, alice):
    token, raw = ApiToken.issue(alice, "ci")
    assert bob_client.get(f"/settings/tokens/{token.pk}/revoke").status_code == 404
    assert bob_client.post(f"/settings/tokens/{token.pk}/revoke").status_code == 404
    assert "ci" not in bob_client.get("/settings/tokens/").context["tokens"].values_list("name", flat=True)
    token.refresh_from_db()
    assert token.is_active
    assert not AuditEntry.objects.exists()


def test_create_token_command_prints_a_working_token(client, alice, capsys):
    call_command("create_token", "alice", "nightly")
    raw = capsys.readouterr().out.strip()
    assert client.get("/api/v2/me", **bearer(raw)).json() == {"username": "alice", "role": "user", "token": "nightly"}


def test_create_token_command_refuses_an_unknown_user():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No active user named 'mallory'"):
        call_command("create_token", "mallory", "x")
