"""A user's change that lands while the reconciler works on other models — or on the same one —
is never overwritten by what the reconciler read before it: it wins, and the next pass applies it.

The changes are committed from another database connection (another thread) in the middle of a
real tick, which is what a web request does while a worker reconciles. On PostgreSQL (what
`make test` runs) and, through a second pytest run, on SQLite (the embedded default).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving import deployments
from serving.choices import EventKind, State
from serving.models import ServeEvent, ServeModel, ServeRevision
from serving.reconciler import reconcile
from tests.serving.factories import create_model, spec
from tests.serving.fake_serve import FakeServe

pytestmark = [pytest.mark.usefixtures("roots", "gpu_engine")]


def from_another_connection(change) -> None:
    """Run `change` in its own thread (so its own DB connection) and wait until it has committed."""
    errors: list[BaseException] = []

    def run():
        try:
            change()
        except BaseException as exc:  # noqa: BLE001 — re-raised below
            errors.append(exc)
        finally:
            from django.db import connections

            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and not errors, errors


class ServeWithUsers(FakeServe):
    """Serve whose apply of one model takes long enough for users to change other models meanwhile."""

    def __init__(self, *args, during_apply_of: str, change, **kwargs):
        super().__init__(*args, **kwargs)
        self.during_apply_of, self.change, self.fired = during_apply_of, change, False

    def apply_model(self, model_key, config, previous=None, **kwargs):
        super().apply_model(model_key, config, previous, **kwargs)
        if model_key == self.during_apply_of and not self.fired:
            self.fired = True
            from_another_connection(self.change)


def fresh(model) -> ServeModel:
    return ServeModel.objects.get(pk=model.pk)


def kinds(model) -> list[str]:
    return list(ServeEvent.objects.filter(model=model).order_by("created_at", "id").values_list("kind", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_delete_and_a_scale_made_during_another_models_apply_win(alice, bob):
    a, b, c = create_model(alice, "a"), create_model(alice, "b"), create_model(bob, "c")

    def users_act():
        deployments.request_delete(ServeModel.objects.get(pk=b.pk), alice)
        deployments.scale(ServeModel.objects.get(pk=c.pk), 2, bob)
        deployments.scale(ServeModel.objects.get(pk=a.pk), 3, alice)  # the model being applied, too

    serve = ServeWithUsers(gpus=8, during_apply_of=a.model_key, change=users_act)
    serve.fired = True
    reconcile(serve)  # tick 1: all three applied, DEPLOYING
    assert {fresh(m).state for m in (a, b, c)} == {State.DEPLOYING}
    # A changes, so tick 2 re-applies it first; Serve meanwhile reports b and c RUNNING, so a
    # reconciler working from rows read at the tick's start would move them to RUNNING, over
    # the delete and the scale committed during a's apply.
    deployments.submit_spec(alice, spec("a", engine_kwargs="{max_model_len: 512}"))
    serve.fired = False
    reconcile(serve)
    assert serve.fired

    b_now, c_now, a_now = fresh(b), fresh(c), fresh(a)
    assert b_now.state == State.DELETING  # not RUNNING: the delete stands
    assert (c_now.num_replicas, c_now.generation) == (2, 2)  # the scale stands
    assert (a_now.num_replicas, a_now.generation) == (3, 3)  # so does the one made during its own apply
    for _ in range(4):
        reconcile(serve)

    b_now, c_now, a_now = fresh(b), fresh(c), fresh(a)
    assert b_now.state == State.DELETED and b.model_key not in serve.apps
    b_kinds = kinds(b)
    assert b_kinds[-1] == EventKind.DELETED
    assert EventKind.RUNNING not in b_kinds[b_kinds.index(EventKind.DELETE_REQUESTED):]  # the record does not lie
    assert c_now.state == State.RUNNING and serve.apps[c.model_key]["target"] == 2
    assert ServeRevision.objects.filter(model=c).first().resolved_spec["num_replicas"] == 2
    assert a_now.state == State.RUNNING and serve.apps[a.model_key]["target"] == 3
    latest_a = ServeRevision.objects.filter(model=a).first()
    assert (latest_a.generation, latest_a.resolved_spec["num_replicas"]) == (3, 3)
    assert latest_a.config["engine_kwargs"]["max_model_len"] == 512  # and the update before it too
    for model in (a, c):
        assert fresh(model).is_settled and fresh(model).change_reason == ""


@pytest.mark.django_db(transaction=True)
def test_an_update_made_while_a_failure_is_recorded_is_not_lost(alice):
    model = create_model(alice, "a")

    def user_updates():
        deployments.submit_spec(alice, spec("a", engine_kwargs="{max_model_len: 1024}"))

    class RefusingServe(ServeWithUsers):
        def apply_model(self, model_key, config, previous=None, **kwargs):
            if not self.fired:
                self.fired = True
                from_another_connection(self.change)
                raise RuntimeError("bad accelerator")
            super().apply_model(model_key, config, previous, **kwargs)

    serve = RefusingServe(gpus=8, during_apply_of=model.model_key, change=user_updates)
    reconcile(serve)
    now = fresh(model)
    # The refusal was of generation 1; generation 2 arrived meanwhile and is what counts now.
    assert now.generation == 2 and now.state == State.QUEUED and now.change_reason == "update"
    reconcile(serve)
    reconcile(serve)
    now = fresh(model)
    assert now.state == State.RUNNING
    assert serve.apps[model.model_key]["config"]["engine_kwargs"]["max_model_len"] == 1024


def test_the_same_races_hold_on_sqlite(tmp_path):
    """The embedded default is SQLite, where select_for_update does nothing: run this file again there."""
    if os.environ.get("GANTRY_NESTED_SQLITE_RUN"):
        pytest.skip("this is the SQLite run itself")
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gantry.sqlite3'}",
        "GANTRY_VAR_DIR": str(tmp_path / "var"),
        "GANTRY_NESTED_SQLITE_RUN": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).relative_to(root))],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout, result.stdout[-2000:]

