from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from dashboard.models import ApiToken


class Command(BaseCommand):
    help = "Create a named API token for a user and print it (it is shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("name", help="What the token is for, e.g. ci-deploy")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username, is_active=True).first()
        if user is None:
            raise CommandError(f"No active user named {username!r}.")
        if ApiToken.objects.active().filter(user=user, name=name).exists():
            raise CommandError(f"{username} already has an active token named {name!r}; revoke it or choose another name.")
        _, raw = ApiToken.issue(user, name)
        self.stdout.write(raw)
