"""gates.secrets: values encrypted at rest, keys that rotate, the rules for names and values, audit
rows by name only, values_for / redact for the apply step."""
from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from dashboard.env import ConfigError
from dashboard.models import AuditEntry
from gates import secrets as store
from gates.models import Secret

pytestmark = pytest.mark.django_db

VALUE = "sk-live-0123456789-do-not-print"


def raw_rows() -> list[tuple]:
    """Every column of every secret row, as the database holds it (no ORM in between)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {Secret._meta.db_table}")
        return cursor.fetchall()


def test_a_value_is_stored_encrypted_and_decrypts(alice):
    secret, created = store.set_secret(alice, "OPENAI_API_KEY", VALUE, alice)
    assert created is True
    rows = raw_rows()
    assert len(rows) == 1
    assert VALUE not in repr(rows)
    assert VALUE not in secret.ciphertext and secret.ciphertext.startswith("gAAAAA")  # a Fernet token
    assert store.values_for(alice, ["OPENAI_API_KEY"]) == {"OPENAI_API_KEY": VALUE}


def test_two_writes_of_one_value_differ_at_rest(alice, bob):
    # Fernet's random IV: equal values are not recognisable as equal in the table.
    store.set_secret(alice, "TOKEN", VALUE, alice)
    store.set_secret(bob, "TOKEN", VALUE, bob)
    tokens = set(Secret.objects.values_list("ciphertext", flat=True))
    assert len(tokens) == 2


def test_a_value_written_under_an_old_key_reads_after_a_new_key_is_prepended(alice, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.GANTRY_SECRETS_KEYS = [old]
    store.set_secret(alice, "OLD_ONE", VALUE, alice)

    settings.GANTRY_SECRETS_KEYS = [new, old]
    store.set_secret(alice, "NEW_ONE", "fresh-value", alice)
    assert store.values_for(alice, ["OLD_ONE", "NEW_ONE"]) == {"OLD_ONE": VALUE, "NEW_ONE": "fresh-value"}
    # The newest key encrypts new writes.
    token = Secret.objects.get(name="NEW_ONE").ciphertext
    assert Fernet(new.encode()).decrypt(token.encode()).decode() == "fresh-value"

    # Dropping the old key before rotating loses what it wrote, and says so by name, not by value.
    settings.GANTRY_SECRETS_KEYS = [new]
    with pytest.raises(store.UnreadableSecret) as caught:
        store.values_for(alice, ["OLD_ONE"])
    assert "OLD_ONE" in caught.value.message and "GANTRY_SECRETS_KEYS" in caught.value.message
    assert VALUE not in caught.value.message


def test_rotate_secrets_reencrypts_under_the_newest_key_so_the_old_one_can_go(alice, settings, capsys):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.GANTRY_SECRETS_KEYS = [old]
    secret, _ = store.set_secret(alice, "OLD_ONE", VALUE, alice)
    settings.GANTRY_SECRETS_KEYS = [new, old]
    call_command("rotate_secrets")
    assert "Re-encrypted 1 secret(s)" in capsys.readouterr().out
    settings.GANTRY_SECRETS_KEYS = [new]
    assert store.values_for(alice, ["OLD_ONE"]) == {"OLD_ONE": VALUE}
    rotated = Secret.objects.get(pk=secret.pk)
    assert rotated.updated_at == secret.updated_at  # the value did not change
    assert AuditEntry.objects.filter(action="secret.rotate").count() == 1


def test_with_no_keys_set_the_key_comes_from_secret_key(alice, settings):
    settings.GANTRY_SECRETS_KEYS = []
    store.set_secret(alice, "DERIVED", VALUE, alice)
    assert store.values_for(alice, ["DERIVED"]) == {"DERIVED": VALUE}
    settings.SECRET_KEY = "another-secret-key-entirely-" + "x" * 30
    with pytest.raises(store.UnreadableSecret):
        store.values_for(alice, ["DERIVED"])


@pytest.mark.parametrize("raw", ["not-a-key", "c2hvcnQ=", Fernet.generate_key().decode() + ",oops"])
def test_a_bad_key_in_the_setting_stops_startup_without_echoing_it(monkeypatch, raw):
    from dashboard import settings as settings_module

    monkeypatch.setenv("GANTRY_SECRETS_KEYS", raw)
    with pytest.raises(ConfigError) as caught:
        settings_module._secrets_keys()
    message = str(caught.value)
    assert "GANTRY_SECRETS_KEYS" in message and "Fernet" in message
    assert "oops" not in message and "not-a-key" not in message


def test_keys_can_come_from_a_file(monkeypatch, tmp_path):
    from dashboard import settings as settings_module

    keys = [Fernet.generate_key().decode(), Fernet.generate_key().decode()]
    path = tmp_path / "keys"
    path.write_text(" , ".join(keys) + "\n")
    monkeypatch.setenv("GANTRY_SECRETS_KEYS_FILE", str(path))
    assert settings_module._secrets_keys() == keys


@pytest.mark.parametrize("name", ["A", "_", "OPENAI_API_KEY", "_PRIVATE", "K8S_TOKEN", "X" * 128])
def test_environment_variable_names_are_taken(alice, name):
    store.set_secret(alice, name, VALUE, alice)
    assert store.names_for(alice) == {name}


@pytest.mark.parametrize("name", ["", "openai_api_key", "9LIVES", "HAS-DASH", "HAS SPACE", "X" * 129, "ÄPFEL", "KEY\n"])
def test_other_names_are_refused_with_the_rule(alice, name):
    with pytest.raises(store.SecretError) as caught:
        store.set_secret(alice, name, VALUE, alice)
    assert caught.value.status == 422 and caught.value.field == "name"
    assert "capital letters, digits and _" in caught.value.message
    assert not Secret.objects.exists() and not AuditEntry.objects.exists()


@pytest.mark.parametrize(
    "value,words",
    [
        ("", "cannot be empty"),
        ("a" * (64 * 1024 + 1), "at most 64 KiB"),
        ("é" * (32 * 1024 + 1), "at most 64 KiB"),  # bytes, not characters
        (VALUE + "\x00", "NUL"),
        (42, "must be text"),
        ("\ud800" + VALUE, "valid Unicode"),
    ],
)
def test_values_outside_the_rules_are_refused_without_being_quoted(alice, value, words):
    with pytest.raises(store.SecretError) as caught:
        store.set_secret(alice, "NAME", value, alice)
    assert caught.value.field == "value" and words in caught.value.message
    if isinstance(value, str) and value:
        assert value[:20] not in caught.value.message and VALUE not in caught.value.message
    assert not Secret.objects.exists()


def test_a_value_of_exactly_64_kib_and_any_text_is_kept_as_given(alice):
    big = "b" * (64 * 1024)
    odd = "  line one\nline two\t€ \r\n"  # spaces and newlines are part of a value
    store.set_secret(alice, "BIG", big, alice)
    store.set_secret(alice, "ODD", odd, alice)
    assert store.values_for(alice, ["BIG", "ODD"]) == {"BIG": big, "ODD": odd}


def test_setting_a_name_again_replaces_its_value_and_both_are_audited_by_name(alice):
    first, created = store.set_secret(alice, "TOKEN", "first-value", alice)
    second, replaced = store.set_secret(alice, "TOKEN", VALUE, alice)
    assert (created, replaced) == (True, False) and first.pk == second.pk
    assert Secret.objects.count() == 1 and store.values_for(alice, ["TOKEN"]) == {"TOKEN": VALUE}
    audit = list(AuditEntry.objects.order_by("at", "id").values_list("action", "target", "actor_name"))
    assert audit == [("secret.create", "secret TOKEN of alice", "alice"), ("secret.replace", "secret TOKEN of alice", "alice")]
    assert Secret.objects.get().updated_by_name == "alice"


def test_delete_is_audited_and_an_unknown_name_is_does_not_exist(alice, bob):
    store.set_secret(alice, "TOKEN", VALUE, alice)
    with pytest.raises(Secret.DoesNotExist):
        store.delete_secret(bob, "TOKEN", bob)  # bob has none by that name; alice's is not his
    assert store.names_for(alice) == {"TOKEN"}
    store.delete_secret(alice, "TOKEN", alice)
    assert store.names_for(alice) == set()
    assert AuditEntry.objects.filter(action="secret.delete", target="secret TOKEN of alice").count() == 1
    with pytest.raises(Secret.DoesNotExist):
        store.delete_secret(alice, "TOKEN", alice)


def test_names_are_unique_per_owner_not_across_owners(alice, bob):
    store.set_secret(alice, "TOKEN", "alice-value", alice)
    store.set_secret(bob, "TOKEN", "bob-value", bob)
    assert store.values_for(alice, ["TOKEN"]) == {"TOKEN": "alice-value"}
    assert store.values_for(bob, ["TOKEN"]) == {"TOKEN": "bob-value"}
    with pytest.raises(IntegrityError), transaction.atomic():
        Secret.objects.create(owner=alice, name="TOKEN", ciphertext="x", updated_by_name="alice")


def test_values_for_names_every_missing_name_and_no_value(alice, bob):
    store.set_secret(alice, "HAVE", VALUE, alice)
    store.set_secret(bob, "BOBS", VALUE, bob)
    with pytest.raises(store.MissingSecret) as caught:
        store.values_for(alice, ["HAVE", "NOPE", "BOBS"])
    assert caught.value.names == ["NOPE", "BOBS"]
    assert "NOPE, BOBS" in caught.value.message and "/gates/secrets/" in caught.value.message
    assert VALUE not in caught.value.message
    assert store.values_for(alice, []) == {}


def test_store_names_reads_the_names_afresh_each_time(alice):
    names = store.store_names(alice)
    assert names.names() == set() and names.where == "alice's secrets in Gantry"
    store.set_secret(alice, "LATER", VALUE, alice)
    assert names.names() == {"LATER"}


def test_redact_hides_every_value_as_text_json_and_repr_show_it():
    tricky = 'quote"and\nnewline-é'
    values = {"A": VALUE, "B": tricky, "EMPTY": ""}
    shown = [f"plain {VALUE}", f"raw {tricky}", f"repr {tricky!r}", json.dumps({"v": tricky}), json.dumps({"v": tricky}, ensure_ascii=False)]
    out = store.redact(" | ".join(shown), values)
    assert VALUE not in out and "quote" not in out and "newline" not in out
    assert out == 'plain ••• | raw ••• | repr \'•••\' | {"v": "•••"} | {"v": "•••"}'
    assert store.redact("nothing here", values) == "nothing here"
    assert store.redact(f"x{VALUE}y", [VALUE]) == "x•••y"


def test_redact_hides_a_value_whole_when_another_is_part_of_it():
    assert store.redact("token=abcdef", ["abc", "abcdef"]) == "token=•••"
