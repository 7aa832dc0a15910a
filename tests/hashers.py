"""A password hasher for the test process only (tests/conftest.py installs it)."""
from django.contrib.auth.hashers import PBKDF2PasswordHasher


class QuickPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """PBKDF2-SHA256 at 1,000 iterations instead of Django's 1,000,000: one hash took 0.7-2.6 s on the CI
    machine, and most tests make a user or two. What it writes is a standard pbkdf2_sha256 hash (the
    count travels inside it), so a server a test starts in another process (make run, gunicorn)
    verifies it with Django's own hasher."""

    iterations = 1_000
