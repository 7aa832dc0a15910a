from __future__ import annotations

import pytest

from tests.security.objects import Owned, make_owned
from tests.serving.conftest import fake_serve, gpu_engine, roots  # noqa: F401 — the serving tests' real folders and FakeServe


@pytest.fixture
def alices(alice, roots, gpu_engine, fake_serve) -> Owned:  # noqa: F811
    """One of each of alice's objects, deployed and running."""
    return make_owned(alice, fake_serve)


@pytest.fixture(autouse=True)
def quick_hashes(settings):
    # Making alice and every login attempt hash a password; what is under test is never the hash.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
