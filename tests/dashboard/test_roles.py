"""Three roles: users see their own things, reviewers approve baselines, admins see the health panel."""
import pytest

from dashboard.roles import is_admin, is_reviewer, role_name

pytestmark = pytest.mark.django_db


def test_each_demo_role_is_what_it_says(alice, rita, admin):
    assert (role_name(alice), role_name(rita), role_name(admin)) == ("user", "reviewer", "admin")
    assert is_reviewer(rita) and not is_reviewer(alice)
    assert is_admin(admin) and not is_admin(rita)


def test_the_reviewers_group_exists_after_migrate_with_its_permission():
    from django.contrib.auth.models import Group

    group = Group.objects.get(name="reviewers")
    assert list(group.permissions.values_list("codename", flat=True)) == ["approve_baseline"]


def test_only_admins_see_the_health_link_and_page(alice_client, client, admin):
    assert 'href="/health/"' not in alice_client.get("/").text
    assert alice_client.get("/health/").status_code == 403
    client.force_login(admin)
    assert 'href="/health/"' in client.get("/").text
    page = client.get("/health/")
    assert page.status_code == 200 and "database" in page.text


def test_seed_demo_keeps_passwords_across_runs(settings, tmp_path, capsys):
    from django.contrib.auth import authenticate
    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    call_command("seed_demo")
    first = capsys.readouterr().out
    call_command("seed_demo")
    assert capsys.readouterr().out == first
    password = next(line.split("password: ")[1] for line in first.splitlines() if line.strip().startswith("rita"))
    rita = authenticate(username="rita", password=password)
    assert rita is not None and is_reviewer(rita)
