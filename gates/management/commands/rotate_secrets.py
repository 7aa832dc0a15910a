from django.core.management.base import BaseCommand, CommandError

from gates.secrets import SecretError, rotate_secrets


class Command(BaseCommand):
    help = (
        "Re-encrypt every user's secret under the newest key in GANTRY_SECRETS_KEYS. Run it after "
        "prepending a new key; drop an old key only once this has succeeded."
    )

    def handle(self, *args, **options) -> None:
        try:
            count = rotate_secrets()
        except SecretError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Re-encrypted {count} secret(s) under the newest key.")
