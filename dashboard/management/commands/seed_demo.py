import json
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from dashboard.roles import REVIEWERS_GROUP, ensure_roles

DEMO_ACCOUNTS = {
    "alice": "user",
    "bob": "user",
    "rita": "reviewer",
    "admin": "admin",
}


class Command(BaseCommand):
    help = "Create the demo accounts (alice and bob users, rita reviewer, admin) and print their passwords."

    def handle(self, *args, **options):
        if settings.PRODUCTION:
            # Known account names with passwords printed to a terminal and kept in var/: a demo, never a deployment.
            raise CommandError(
                "seed_demo refuses to run with GANTRY_ENV=prod: it creates demo accounts (alice, bob, rita, admin) "
                "and prints their passwords. Create real accounts with `manage.py createsuperuser` or the admin."
            )
        ensure_roles()
        # Passwords are made once and kept in var/ so they stay the same across runs.
        path = settings.VAR_DIR / "demo-passwords.json"
        passwords = json.loads(path.read_text()) if path.exists() else {}
        users = get_user_model().objects
        reviewers = Group.objects.get(name=REVIEWERS_GROUP)
        for username, role in DEMO_ACCOUNTS.items():
            password = passwords.setdefault(username, secrets.token_urlsafe(9))
            user, _ = users.get_or_create(username=username, defaults={"email": f"{username}@example.test"})
            user.is_staff = user.is_superuser = role == "admin"
            user.set_password(password)
            user.save()
            if role == "reviewer":
                user.groups.add(reviewers)
        path.write_text(json.dumps(passwords, indent=2))
        path.chmod(0o600)
        self.stdout.write("Demo accounts (passwords kept in %s):" % path)
        for username, role in DEMO_ACCOUNTS.items():
            self.stdout.write(f"  {username:<6} {role:<9} password: {passwords[username]}")
