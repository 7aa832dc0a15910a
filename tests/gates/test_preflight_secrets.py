"""The secrets guard: names present, missing (after one bounded wait), misspelt, and a secret that
appears while a deploy waits for it (a real thread, the real store, real time)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from gates import secrets as store
from gates.preflight import secrets as guard
from gates.preflight.base import FAIL, OK, PreflightConfig, PreflightContext, Runtime, SecretNames
from gates.preflight.runner import run_guards


def context(names, required, *, timeout=90.0, wait=True, where="alice's secrets in Gantry", clock=time.monotonic, sleep=time.sleep):
    names_fn = names if callable(names) else (lambda: set(names))
    return PreflightContext(
        Path("."),
        PreflightConfig(secrets=tuple(required), secret_timeout=timeout),
        Runtime("local", ()),
        SecretNames(names_fn, where),
        wait_for_secrets=wait,
        clock=clock,
        sleep=sleep,
    )


class FakeTime:
    """A clock that moves only when the guard sleeps: the 90 s default wait in no time."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def by_item(result):
    return {e.item: e for e in result.evidence}


def test_no_secrets_required_is_ok():
    result = guard.check(context({"ANYTHING"}, []))
    assert (result.guard, result.title, result.status) == ("secrets", "required secrets", OK)
    assert result.summary == "No secrets required." and result.remedy == ""


def test_every_required_name_present_is_ok_with_evidence_per_name():
    result = guard.check(context({"OPENAI_API_KEY", "HF_READ", "OTHER"}, ["OPENAI_API_KEY", "HF_READ"]))
    assert result.status == OK and result.remedy == ""
    evidence = by_item(result)
    assert set(evidence) == {"OPENAI_API_KEY", "HF_READ"}
    assert all((e.declared, e.effective, e.status) == ("required", "set", OK) for e in evidence.values())
    assert "alice's secrets in Gantry" in result.summary


def test_a_missing_secret_fails_naming_it_after_waiting_the_timeout_once_in_all():
    fake = FakeTime()
    asked = []
    result = guard.check(
        context(lambda: asked.append(1) or {"PRESENT"}, ["PRESENT", "FIRST_MISSING", "SECOND_MISSING"], clock=fake.clock, sleep=fake.sleep)
    )
    assert result.status == FAIL and result.forceable is False
    assert "FIRST_MISSING and SECOND_MISSING are missing from alice's secrets in Gantry (waited 90 s)" in result.summary
    evidence = by_item(result)
    assert evidence["PRESENT"].effective == "set"
    assert evidence["FIRST_MISSING"].effective == evidence["SECOND_MISSING"].effective == "missing (waited 90 s)"
    assert evidence["FIRST_MISSING"].status == FAIL and evidence["FIRST_MISSING"].note == ""
    assert "Set FIRST_MISSING on /gates/secrets/" in result.remedy and "Set SECOND_MISSING on /gates/secrets/" in result.remedy
    # One 90 s wait for both names, asked every 0.5 s: not 90 s per missing name.
    assert sum(fake.sleeps) == pytest.approx(90.0) and max(fake.sleeps) <= 0.5
    assert len(asked) == 1 + len(fake.sleeps)
    assert result.data["waited_s"] == 90.0 and result.data["missing"] == ["FIRST_MISSING", "SECOND_MISSING"]


def test_without_waiting_a_missing_secret_is_checked_once():
    asked = []
    result = guard.check(context(lambda: asked.append(1) or set(), ["NEEDED"], wait=False, sleep=lambda s: pytest.fail("slept")))
    assert result.status == FAIL and len(asked) == 1
    assert by_item(result)["NEEDED"].effective == "missing"
    assert result.summary == "NEEDED is missing from alice's secrets in Gantry."


def test_a_misspelt_secret_fails_and_names_the_near_miss():
    result = guard.check(context({"OPEN_API_KEY", "DATABASE_URL"}, ["OPENAI_API_KEY"], wait=False))
    assert result.status == FAIL
    missing = by_item(result)["OPENAI_API_KEY"]
    assert missing.status == FAIL and missing.note == "did you mean: OPEN_API_KEY is set"
    assert "Set OPENAI_API_KEY on /gates/secrets/ (OPEN_API_KEY is set: a misspelling?)" in result.remedy
    assert "DATABASE_URL" not in result.remedy


@pytest.mark.parametrize(
    "present,required",
    [
        ({"OPENAIAPIKEY"}, "OPENAI_API_KEY"),  # the same letters without _
        ({"Openai_Api_Key"}, "OPENAI_API_KEY"),  # the same letters in another case
        ({"HF_TOKN"}, "HF_TOKEN"),  # one letter off
        ({"ANTHROPIC_API_KEY_V2"}, "ANTHROPIC_API_KEY"),  # difflib: close
    ],
)
def test_near_misses_of_several_kinds_are_called_out(present, required):
    result = guard.check(context(present, [required], wait=False))
    (near,) = present
    assert by_item(result)[required].note == f"did you mean: {near} is set"
    assert f"({near} is set: a misspelling?)" in result.remedy


def test_a_name_the_spec_itself_requires_is_not_offered_as_a_near_miss():
    result = guard.check(context({"API_KEY_A"}, ["API_KEY_A", "API_KEY_B"], wait=False))
    assert by_item(result)["API_KEY_B"].note == ""
    assert "misspelling" not in result.remedy


def test_unrelated_names_are_not_near_misses():
    result = guard.check(context({"DATABASE_URL", "SLACK_WEBHOOK"}, ["OPENAI_API_KEY"], wait=False))
    assert by_item(result)["OPENAI_API_KEY"].note == "" and "misspelling" not in result.remedy


@pytest.mark.parametrize("where", ["the environment", "this process's environment"])
def test_when_the_cli_checks_the_environment_the_remedy_says_so(where):
    result = guard.check(context(set(), ["NEEDED"], wait=False, where=where))
    assert result.remedy == "Set NEEDED in the environment."


def test_a_secret_that_appears_while_waiting_passes_and_says_when():
    fake = FakeTime()
    start = fake.now
    result = guard.check(context(lambda: {"LATE"} if fake.now - start >= 2.0 else set(), ["LATE"], clock=fake.clock, sleep=fake.sleep))
    assert result.status == OK and result.data["waited_s"] == 2.0
    assert by_item(result)["LATE"].note == "appeared after 2 s"
    assert "LATE appeared after 2 s" in result.summary


def test_each_late_secret_says_when_it_appeared_and_one_never_set_fails_at_the_timeout():
    fake = FakeTime()
    start = fake.now

    def names():
        elapsed = fake.now - start
        return {"EARLY"} | ({"SOON"} if elapsed >= 1.0 else set()) | ({"LATER"} if elapsed >= 4.0 else set())

    result = guard.check(context(names, ["EARLY", "SOON", "LATER", "NEVER"], timeout=10.0, clock=fake.clock, sleep=fake.sleep))
    notes = {e.item: (e.effective, e.note) for e in result.evidence}
    assert notes == {
        "EARLY": ("set", ""),
        "SOON": ("set", "appeared after 1 s"),
        "LATER": ("set", "appeared after 4 s"),
        "NEVER": ("missing (waited 10 s)", ""),
    }
    assert result.status == FAIL and result.summary == "NEVER is missing from alice's secrets in Gantry (waited 10 s)."


@pytest.mark.django_db(transaction=True)
def test_a_secret_set_3_s_into_a_5_s_timeout_lets_the_guard_pass(alice):
    """A real thread writes the secret through the store after 3 s; the guard, on real time and
    reading the real table, waits for it and passes."""

    def provision() -> None:
        try:
            time.sleep(3.0)
            store.set_secret(alice, "PROVISIONED_LATE", "value-from-the-thread", alice)
        finally:
            connection.close()  # the thread's own connection, or the test database cannot be dropped

    thread = threading.Thread(target=provision)
    started = time.monotonic()
    thread.start()
    try:
        result = guard.check(context(store.store_names(alice).names, ["PROVISIONED_LATE"], timeout=5.0))
    finally:
        thread.join()
    elapsed = time.monotonic() - started
    assert result.status == OK, result.summary
    # Found, not timed out (5 s): it waited for the secret's arrival, however slow the machine.
    assert 2.9 <= result.data["waited_s"] < 5.0 and elapsed >= 2.9
    assert by_item(result)["PROVISIONED_LATE"].note.startswith("appeared after 3")


@pytest.mark.django_db(transaction=True)
def test_a_secret_never_set_fails_after_the_real_timeout(alice):
    store.set_secret(alice, "OPEN_API_KEY", "value", alice)
    started = time.monotonic()
    result = guard.check(context(store.store_names(alice).names, ["OPENAI_API_KEY"], timeout=1.0))
    assert 1.0 <= time.monotonic() - started < 2.0
    assert result.status == FAIL and "OPENAI_API_KEY is missing" in result.summary
    assert by_item(result)["OPENAI_API_KEY"].effective == "missing (waited 1 s)"
    assert "(OPEN_API_KEY is set: a misspelling?)" in result.remedy


def test_the_runner_finds_the_guard_by_its_name():
    (result,) = run_guards(context(set(), ["NEEDED"], wait=False), ("secrets",))
    assert result.guard == "secrets" and result.status == FAIL and "NEEDED" in result.summary
