"""Users' secrets: encrypted at rest, written and deleted with an audit row, and read back as values
only by the apply step (`values_for`). Pages, the API, the admin, events and logs see names.

Keys: settings.GANTRY_SECRETS_KEYS (Fernet keys, newest first) through MultiFernet, so a key can
rotate: prepend the new one, run `manage.py rotate_secrets`, then drop the old one. With none set,
one key is derived from SECRET_KEY (HKDF), so a laptop needs no setup; production sets its own,
because a derived key changes, and every stored value becomes unreadable, when SECRET_KEY does.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.views.decorators.debug import sensitive_variables

from dashboard.models import AuditEntry
from gates.models import SECRET_NAME_RULE, Secret, validate_secret_name
from gates.preflight.base import SecretNames

MAX_VALUE_BYTES = 64 * 1024
REDACTED = "•••"
STORE_PAGE = "/gates/secrets/"  # named in messages that tell a person where to set a secret


class SecretError(Exception):
    """A secret the store refuses; rendered like the API's other errors. Never carries a value."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


class MissingSecret(SecretError):
    def __init__(self, owner, names: list[str]):
        listed = ", ".join(names)
        super().__init__(
            422, "missing_secret", f"{owner.username} has no secret {listed}: set it on {STORE_PAGE} and deploy again.", "secrets"
        )
        self.names = names


class UnreadableSecret(SecretError):
    def __init__(self, name: str):
        super().__init__(
            500,
            "unreadable_secret",
            f"The secret {name} cannot be decrypted with the keys Gantry has (GANTRY_SECRETS_KEYS lost the key it was "
            f"written with, or SECRET_KEY changed while no keys were set). Set {name} again on {STORE_PAGE}.",
            "secrets",
        )
        self.name = name


# --- keys -----------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _derived_key(secret_key: str) -> bytes:
    # A key of its own for this purpose: SECRET_KEY itself signs sessions and must not double as one.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"gantry-secrets", info=b"gantry secrets store v1")
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode()))


@lru_cache(maxsize=4)
def _fernet_for(keys: tuple[bytes, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key) for key in keys])


def _fernet() -> MultiFernet:
    # Read on each call (cached by value) so a changed setting, a test's included, takes effect.
    keys = tuple(key.encode() for key in settings.GANTRY_SECRETS_KEYS) or (_derived_key(settings.SECRET_KEY),)
    return _fernet_for(keys)


# --- rules ------------------------------------------------------------------------------------------
def check_name(name: object) -> str:
    try:
        validate_secret_name(name)  # type: ignore[arg-type]
    except ValidationError:
        raise SecretError(422, "invalid_name", SECRET_NAME_RULE, "name") from None
    return name  # type: ignore[return-value]


@sensitive_variables("value")
def check_value(value: object) -> str:
    """Messages say what is wrong with a value without ever quoting it."""
    if not isinstance(value, str):
        raise SecretError(422, "invalid_value", "A secret's value must be text (a JSON string).", "value")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \ud800 can carry
        raise SecretError(422, "invalid_value", "A secret's value must be valid Unicode text.", "value") from None
    if size == 0:
        raise SecretError(422, "invalid_value", "A secret's value cannot be empty.", "value")
    if size > MAX_VALUE_BYTES:
        raise SecretError(422, "invalid_value", f"A secret's value is at most 64 KiB; this one is {size / 1024:.1f} KiB.", "value")
    if "\x00" in value:
        raise SecretError(422, "invalid_value", "A secret's value cannot contain a NUL character: no environment variable can hold one.", "value")
    return value


def _target(owner, name: str) -> str:
    return f"secret {name} of {owner.username}"


# --- writes -------------------------------------------------------------------------------------------
@sensitive_variables("value", "token")
def set_secret(owner, name: str, value: str, actor) -> tuple[Secret, bool]:
    """Create or replace `owner`'s secret `name`; True when it is new. Audited by name only."""
    check_name(name)
    check_value(value)
    token = _fernet().encrypt(value.encode("utf-8")).decode("ascii")
    by = getattr(actor, "username", "") or "system"
    with transaction.atomic():
        secret, created = Secret.objects.update_or_create(owner=owner, name=name, defaults={"ciphertext": token, "updated_by_name": by})
        AuditEntry.record(actor, "secret.create" if created else "secret.replace", _target(owner, name))
    return secret, created


def delete_secret(owner, name: str, actor) -> None:
    """Raises Secret.DoesNotExist for a name `owner` does not have (another user's is not theirs)."""
    with transaction.atomic():
        deleted, _ = Secret.objects.filter(owner=owner, name=name).delete()
        if not deleted:
            raise Secret.DoesNotExist("No such secret (or it is not yours).")
        AuditEntry.record(actor, "secret.delete", _target(owner, name))


def rotate_secrets(actor=None) -> int:
    """Re-encrypts every stored value under the newest key, so older keys can then be dropped."""
    fernet, count = _fernet(), 0
    with transaction.atomic():
        for pk, token in Secret.objects.select_for_update().values_list("pk", "ciphertext"):
            try:
                rotated = fernet.rotate(token.encode("ascii")).decode("ascii")
            except InvalidToken:
                name = Secret.objects.values_list("name", flat=True).get(pk=pk)
                raise UnreadableSecret(name) from None
            # update(), not save(): updated_at says when the value changed, and it did not.
            count += Secret.objects.filter(pk=pk).update(ciphertext=rotated)
        AuditEntry.record(actor, "secret.rotate", "all secrets", f"{count} re-encrypted under the newest key")
    return count


# --- reads --------------------------------------------------------------------------------------------
def names_for(owner) -> set[str]:
    return set(Secret.objects.filter(owner=owner).values_list("name", flat=True))


def store_names(owner) -> SecretNames:
    """What the secrets guard asks while it waits: `owner`'s names, read afresh each time."""
    return SecretNames(lambda: names_for(owner), f"{owner.username}'s secrets in Gantry")


@sensitive_variables("values")
def values_for(owner, names: Iterable[str]) -> dict[str, str]:
    """The values of `names`, decrypted, for the apply step to hand to replicas and nothing else.

    Raises MissingSecret naming every absent name, UnreadableSecret when a value's key is gone."""
    wanted = list(dict.fromkeys(names))
    tokens = dict(Secret.objects.filter(owner=owner, name__in=wanted).values_list("name", "ciphertext"))
    missing = [name for name in wanted if name not in tokens]
    if missing:
        raise MissingSecret(owner, missing)
    fernet, values = _fernet(), {}
    for name in wanted:
        try:
            values[name] = fernet.decrypt(tokens[name].encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise UnreadableSecret(name) from None
    return values


@sensitive_variables("values", "forms")
def redact(text: str, values: Iterable[str] | Mapping[str, str]) -> str:
    """`text` with every secret value in it replaced by •••, also as JSON and repr() escape it (an
    error line from a replica, a traceback, a JSON body). Longest first: a value that contains
    another is hidden whole."""
    if isinstance(values, Mapping):
        values = values.values()
    forms: set[str] = set()
    for value in values:
        if value:
            forms.update((value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1]))
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, REDACTED)
    return text
